"""Views finished on the training device: the cpu backend's workers decode, the GPU resizes, converts and log-mels.

At the settings of real video training (16 frames at 224 px from 256-px H.264, 10 s of audio) the view
kernel and the log-mel cost a worker about as much as a third of the decode itself (benchmarks/RESULTS.md,
"The cpu loader after the kernel rewrite"), work the GPU does in well under a millisecond a batch. With a
finishing device the workers ship each view's decoded frames (YUV 4:2:0, as the decoder gives them; about
the bytes of the RGB view) and its audio window; `finish` then does on that device, for the whole batch at
once, what kernels.frames_to_rgb and audio.log_mel do in a worker.

The video is the same to the bit: the filter taps come from kernels.filter_taps, and the products are added
in the kernel's order, in float32, then converted in float64 as the kernel does (each torch op is one IEEE
operation, nothing fused). The log-mel is the same function; on another device its FFT and matrix product
round differently (within float32 precision).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .audio import log_mel, pcm_float
from .kernels import filter_taps
from ..stored.views import ViewSpec

FRAME_SIZE = "frame_size"  # a shipped batch's key: each sample's stored frame (H, W)


def plane_blocks(frame):
    """A shipped frame [..., 3H/2, W] (numpy or torch) → its (Y [H, W], U, V [H/2, W/2]) blocks: Y on top, U and V
    side by side below it. H x W is the batch's largest frame; a smaller frame fills its blocks' top-left."""
    height, width = frame.shape[-2] * 2 // 3, frame.shape[-1]
    return (frame[..., :height, :], frame[..., height:, :width // 2], frame[..., height:, width // 2:])


def shipped_shape(frames: int, sizes: Sequence[tuple[int, int]]) -> tuple[int, int, int]:
    """One view's shipped frames [T, 3H/2, W] for a batch of frames of `sizes` (H, W), all even."""
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    return (frames, height * 3 // 2, width)


def _taps(params: np.ndarray, sizes: np.ndarray, crop: int, device: torch.device) -> dict[str, tuple]:
    """Each view's filter taps as batch tensors: "luma"/"chroma" → (row index, row weight, column index, column
    weight), each [B, crop, K] (K: the batch's most taps; the others weigh 0 on index 0, as in the kernel)."""
    out = {}
    for name, half in (("luma", 1), ("chroma", 2)):
        per_view = []
        for (_, y0, x0, h, w, _, _), (height, width) in zip(params.tolist(), sizes.tolist()):
            if half == 1:
                rows, cols = filter_taps(y0, h, crop, height), filter_taps(x0, w, crop, width)
            else:
                rows, cols = filter_taps(y0 / 2, h / 2, crop, height // 2), filter_taps(x0 / 2, w / 2, crop, width // 2)
            per_view.append((rows[:2], cols[:2]))
        tensors = []
        for axis in (0, 1):
            most = max(v[axis][0].shape[1] for v in per_view)
            index = np.zeros((len(per_view), crop, most), np.int64)
            weight = np.zeros((len(per_view), crop, most), np.float32)
            for i, v in enumerate(per_view):
                taps = v[axis][0].shape[1]
                index[i, :, :taps], weight[i, :, :taps] = v[axis]
            tensors += [torch.from_numpy(index).to(device), torch.from_numpy(weight).to(device)]
        out[name] = tuple(tensors)
    return out


def _weighted_sum(source: torch.Tensor, dim: int, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Σ_a weight[..., a] · source gathered along `dim` at index[..., a], added tap after tap (the kernel's order).
    source [B, T, H, W]; index, weight [B, size, K]; the result has `size` along `dim`."""
    shape = list(source.shape)
    shape[dim] = index.shape[1]
    total = None
    for a in range(index.shape[2]):
        along = [1, 1, 1, 1]
        along[0], along[dim] = index.shape[0], index.shape[1]
        at, w = index[..., a].view(along), weight[..., a].view(along)
        term = w * torch.gather(source, dim, at.expand(shape))
        total = term if total is None else total + term
    return total


def _resized(plane: torch.Tensor, rows: torch.Tensor, row_w: torch.Tensor, cols: torch.Tensor,
             col_w: torch.Tensor) -> torch.Tensor:
    """Planes [B, T, H, W] uint8 → [B, T, size, size] float32: along the columns, then along the rows."""
    return _weighted_sum(_weighted_sum(plane.float(), 3, cols, col_w), 2, rows, row_w)


def _rgb(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Resampled planes → uint8 RGB [..., 3]: kernels._rgb_row's arithmetic, in float64 as there."""
    lum = 1.164 * (y.double() - 16.0)
    cb, cr = u.double() - 128.0, v.double() - 128.0
    channels = (lum + 1.596 * cr, lum - 0.392 * cb - 0.813 * cr, lum + 2.017 * cb)
    return torch.stack([(c + 0.5).clamp(0.0, 255.0).to(torch.uint8) for c in channels], -1)


def finish_video(frames: torch.Tensor, params: torch.Tensor, sizes: torch.Tensor, crop: int,
                 flow: bool = False) -> torch.Tensor:
    """Shipped frames [B, T, 3H/2, W] uint8 (on the finishing device) → the views [B, T, crop, crop, 3] uint8:
    each view's box (params: the view records [B, 7]) resized, converted to RGB, flipped where the view says
    (flow: its x component negated too). `sizes` [B, 2]: each sample's stored frame (H, W)."""
    params_np = params.cpu().numpy()
    taps = _taps(params_np, sizes.cpu().numpy(), crop, frames.device)
    luma, u, v = plane_blocks(frames)
    ys = _resized(luma, *taps["luma"])
    us, vs = (_resized(p, *taps["chroma"]) for p in (u, v))
    rgb = _rgb(ys, us, vs)
    flip = torch.from_numpy(params_np[:, 5].astype(bool)).to(frames.device).view(-1, 1, 1, 1, 1)
    if flow:
        rgb[..., 0] = torch.where(flip[..., 0], 255 - rgb[..., 0], rgb[..., 0])
    return torch.where(flip, rgb.flip(3), rgb)


def finish(batch: dict, spec: ViewSpec, videos: Sequence[str], sample_rate: int | None,
           device: torch.device) -> dict:
    """A batch shipped by the workers (pipeline.ship_view) → the batch the worker-finished loader yields, its video
    and audio on `device` (labels, rows, views and params stay on the host, as there)."""
    out = {k: v for k, v in batch.items() if k != FRAME_SIZE}
    for m in videos:
        out[m] = finish_video(batch[m].to(device, non_blocking=True), batch["params"], batch[FRAME_SIZE],
                              spec.crop, flow=m == "flow")
    if "audio" in batch:
        wave = pcm_float(batch["audio"].to(device, non_blocking=True))
        out["audio"] = log_mel(wave, sample_rate, spec.mel_bins).unsqueeze(1)
    return out
