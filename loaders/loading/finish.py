"""Views finished on the training device: the cpu backend's workers decode, the GPU resizes, converts and log-mels.

At the settings of real video training (16 frames at 224 px from 256-px H.264, 10 s of audio) the view
kernel and the log-mel cost a worker about half as much again as the decode itself (benchmarks/RESULTS.md),
work a GPU does for a whole batch at once. With a finishing device the workers ship, of each view's decoded
frames, only the region its filter reads (YUV 4:2:0 as the decoder gives it, cropped: the box plus the filter's
reach, on even rows and columns), and its audio window as stored (int16); `finish` then does on that device,
batched, what kernels.frames_to_rgb and audio.log_mel do in a worker.

The video is the same to the bit: the filter taps come from kernels.view_taps, the products are added in the
kernel's order in float32, then converted in float64 as the kernel does (each torch op one IEEE operation,
nothing fused). The log-mel is the same function; on another device its FFT and matrix product round
differently (within float32 precision).

A shipped batch holds, for each video modality, one flat uint8 tensor of its views' regions one after another
(each [T, 3h/2, w], laid out as `plane_blocks` says) and REGION [B, 7] int64: (offset, row, column, h, w) of each
view's region in the flat tensor and in its stored frame, and the frame's (H, W).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .audio import log_mel, pcm_float
from .kernels import Taps, reach, view_taps
from ..stored.views import ViewSpec

REGION = "shipped_region"  # a shipped batch's key: where each view's frames lie (module docstring)


def plane_blocks(frames):
    """Shipped frames [..., 3h/2, w] (numpy or torch) → their (Y [h, w], U, V [h/2, w/2]) blocks: Y on top, U and V
    side by side below it."""
    height, width = frames.shape[-2] * 2 // 3, frames.shape[-1]
    return (frames[..., :height, :], frames[..., height:, :width // 2], frames[..., height:, width // 2:])


def _extent(luma: Taps, chroma: Taps, limit: int) -> tuple[int, int]:
    """[first, stop) on even luma pixels, holding what a luma filter and its chroma filter read along one axis
    (limit: the frame's even extent)."""
    (a0, a1), (b0, b1) = reach(luma[0], luma[2]), reach(chroma[0], chroma[2])
    return min(a0, 2 * b0) // 2 * 2, min(limit, (max(a1, 2 * b1) + 1) // 2 * 2)


def region(box: tuple[int, int, int, int], crop: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(row, column, h, w) of a stored frame of `size` (H, W) that a view's box (y0, x0, h, w) resized to crop x crop
    reads: all a worker ships of its frames."""
    luma_rows, luma_cols, chroma_rows, chroma_cols = view_taps(box, crop, size)
    r0, r1 = _extent(luma_rows, chroma_rows, size[0])
    c0, c1 = _extent(luma_cols, chroma_cols, size[1])
    return r0, c0, r1 - r0, c1 - c0


def region_bytes(frames: int, where: tuple[int, int, int, int]) -> int:
    return frames * where[2] * where[3] * 3 // 2


def ship_frame(planes: tuple[np.ndarray, np.ndarray, np.ndarray], where: tuple[int, int, int, int],
               out: np.ndarray) -> None:
    """A decoded frame's (Y, U, V) → its region, into `out` [3h/2, w]."""
    r0, c0, h, w = where
    y, u, v = plane_blocks(out)
    y[:] = planes[0][r0:r0 + h, c0:c0 + w]
    u[:] = planes[1][r0 // 2:(r0 + h) // 2, c0 // 2:(c0 + w) // 2]
    v[:] = planes[2][r0 // 2:(r0 + h) // 2, c0 // 2:(c0 + w) // 2]


def pack_shipped(clips: Sequence[np.ndarray], boxes: Sequence[tuple[int, int, int, int]],
                 crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole clips as yuv420p planes [T, 3H/2, W] (FFmpeg's `to_ndarray` packing) and each one's view box → the
    (flat, REGION layout) the workers ship for them: the layout written out in one place for checks and benchmarks
    (the workers write it frame by frame as they decode, pipeline.ship_view)."""
    flat, layout, offset = [], [], 0
    for packed, box in zip(clips, boxes):
        frames, height, width = packed.shape[0], packed.shape[1] * 2 // 3, packed.shape[2]
        where = region(box, crop, (height, width))
        out = np.empty((frames, where[2] * 3 // 2, where[3]), np.uint8)
        for planes, frame in zip(packed, out):
            chroma = planes[height:].reshape(2, height // 2, width // 2)
            ship_frame((planes[:height], chroma[0], chroma[1]), where, frame)
        layout.append((offset, *where, height, width))
        flat.append(out.ravel())
        offset += out.size
    return torch.from_numpy(np.concatenate(flat)), torch.tensor(layout)


def _taps(layout: np.ndarray, params: np.ndarray, crop: int, device: torch.device) -> dict[str, tuple]:
    """Each view's filter taps, indexed within its region, as batch tensors: "luma"/"chroma" → (row index, row
    weight, column index, column weight), each [B, crop, K] (K: the batch's most taps; the others weigh 0, as in
    the kernel, on index 0)."""
    views = {"luma": [], "chroma": []}
    for (_, r0, c0, _, _, height, width), (_, y0, x0, h, w, _, _) in zip(layout.tolist(), params.tolist()):
        luma_rows, luma_cols, chroma_rows, chroma_cols = view_taps((y0, x0, h, w), crop, (height, width))
        for name, rows, cols, first_row, first_col in (("luma", luma_rows, luma_cols, r0, c0),
                                                       ("chroma", chroma_rows, chroma_cols, r0 // 2, c0 // 2)):
            views[name].append(((rows[0] - first_row, rows[1]), (cols[0] - first_col, cols[1])))
    out = {}
    for name, per_view in views.items():
        tensors = []
        for axis in (0, 1):
            most = max(v[axis][0].shape[1] for v in per_view)
            index = np.zeros((len(per_view), crop, most), np.int64)
            weight = np.zeros((len(per_view), crop, most), np.float32)
            for i, v in enumerate(per_view):
                taps = v[axis][0].shape[1]
                index[i, :, :taps], weight[i, :, :taps] = v[axis]
            index[weight == 0] = 0  # unused taps (weight 0) may point before the region
            tensors += [torch.from_numpy(index).to(device), torch.from_numpy(weight).to(device)]
        out[name] = tuple(tensors)
    return out


def _weighted_sum(source: torch.Tensor, dim: int, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Σ_a weight[..., a] · source gathered along `dim` at index[..., a], added tap after tap (the kernel's order).
    source [B, T, H, W]; index, weight [B, size, K]; the result has `size` along `dim`."""
    shape = list(source.shape)
    shape[dim] = index.shape[1]
    along = [index.shape[0], 1, 1, 1]
    along[dim] = index.shape[1]
    total = None
    for a in range(index.shape[2]):
        term = weight[..., a].view(along) * torch.gather(source, dim, index[..., a].view(along).expand(shape))
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


def _unpacked(flat: torch.Tensor, layout: np.ndarray, frames: int) -> list[torch.Tensor]:
    """The views' regions (one after another in `flat`) → Y [B, T, h, w], U, V [B, T, h/2, w/2] of the batch's
    largest region, each view's in the top-left (what lies beyond it is never read)."""
    height, width = int(layout[:, 3].max()), int(layout[:, 4].max())
    planes = [flat.new_empty((len(layout), frames, height // s, width // s)) for s in (1, 2, 2)]
    for i, (offset, _, _, h, w, _, _) in enumerate(layout.tolist()):
        view = flat[offset:offset + frames * h * w * 3 // 2].view(frames, h * 3 // 2, w)
        for plane, block in zip(planes, plane_blocks(view)):
            plane[i, :, :block.shape[-2], :block.shape[-1]] = block
    return planes


class _Views:
    """What finishing a batch's views needs besides their frames, on the device: the taps (computed once for all
    its video modalities) and the flips."""

    def __init__(self, layout: torch.Tensor, params: torch.Tensor, crop: int, device: torch.device):
        self.layout, params = layout.cpu().numpy(), params.cpu().numpy()
        self.taps = _taps(self.layout, params, crop, device)
        self.flip = torch.from_numpy(params[:, 5].astype(bool)).to(device).view(-1, 1, 1, 1, 1)

    def finished(self, flat: torch.Tensor, frames: int, flow: bool) -> torch.Tensor:
        luma, u, v = _unpacked(flat, self.layout, frames)
        taps = self.taps
        rgb = _rgb(_resized(luma, *taps["luma"]), _resized(u, *taps["chroma"]), _resized(v, *taps["chroma"]))
        if flow:
            rgb[..., 0] = torch.where(self.flip[..., 0], 255 - rgb[..., 0], rgb[..., 0])
        return torch.where(self.flip, rgb.flip(3), rgb)


def finish_video(flat: torch.Tensor, layout: torch.Tensor, params: torch.Tensor, frames: int, crop: int,
                 flow: bool = False) -> torch.Tensor:
    """Shipped regions (`flat` uint8 on the finishing device, REGION `layout` [B, 7]) → the views
    [B, T, crop, crop, 3] uint8: each view's box (params: the view records [B, 7]) resized, converted to RGB,
    flipped where the view says (flow: its x component negated too)."""
    return _Views(layout, params, crop, flat.device).finished(flat, frames, flow)


def finish(batch: dict, spec: ViewSpec, videos: Sequence[str], sample_rate: int | None,
           device: torch.device) -> dict:
    """A batch shipped by the workers (pipeline.ship_view) → the batch the worker-finished loader yields, its video
    and audio on `device` (labels, rows, views and params stay on the host, as there).

    Every copy to the device comes before any work there: a copy from pageable memory waits for the device's
    stream, so one after the first kernels would wait for them."""
    shipped = {m: batch[m].to(device, non_blocking=True) for m in videos}
    audio = batch["audio"].to(device, non_blocking=True) if "audio" in batch else None
    views = _Views(batch[REGION], batch["params"], spec.crop, device) if videos else None
    out = {k: v for k, v in batch.items() if k != REGION}
    for m in videos:
        out[m] = views.finished(shipped[m], spec.frames, flow=m == "flow")
    if audio is not None:
        out["audio"] = log_mel(pcm_float(audio), sample_rate, spec.mel_bins).unsqueeze(1)
    return out
