"""Compiled per-pixel kernels for the CPU loader (numba; no float16 there, so uint8 in, uint8 out).

`crop_flip_to_rgb` fuses what a view does to decoded video: crop, YUV 4:2:0 → RGB (BT.601
limited range, FFmpeg's matrix for the frames we encode) and horizontal flip, touching only the
cropped pixels. It reads the Y, U and V planes where they lie (the decoder's own frame memory in the
loader, see media.h264_planes) and writes into the caller's array (the batch the worker ships), so a
frame is neither copied out of FFmpeg nor stacked again. Normalisation happens later on the training
device, where it is free, so workers ship 4x fewer bytes than float32 frames.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _clip_u8(value: float) -> np.uint8:
    return np.uint8(min(max(value + 0.5, 0.0), 255.0))


@numba.njit(cache=True, nogil=True)
def _frame_to_rgb(luma: np.ndarray, u: np.ndarray, v: np.ndarray, y0: int, x0: int, flip: bool,
                  out: np.ndarray) -> None:
    """One frame's planes (rows of any line size) → out [size, size, 3], the crop at (y0, x0)."""
    size = out.shape[0]
    for i in range(size):
        row, urow, vrow = luma[y0 + i], u[(y0 + i) // 2], v[(y0 + i) // 2]
        dest = out[i]
        for j in range(size):
            x = x0 + j
            lum = 1.164 * (np.float32(row[x]) - 16.0)
            cu = np.float32(urow[x // 2]) - 128.0
            cv = np.float32(vrow[x // 2]) - 128.0
            col = size - 1 - j if flip else j
            dest[col, 0] = _clip_u8(lum + 1.596 * cv)
            dest[col, 1] = _clip_u8(lum - 0.392 * cu - 0.813 * cv)
            dest[col, 2] = _clip_u8(lum + 2.017 * cu)


def load() -> None:
    """Load the compiled kernel in this process (0.3 s from numba's cache): called before DataLoader workers
    fork, each worker of each epoch inherits it instead of loading it again on its first sample."""
    crop_flip_to_rgb(np.zeros((1, 3, 2), np.uint8), 0, 0, 1, False)


def frames_to_rgb(frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]], y0: int, x0: int, flip: bool,
                  out: np.ndarray) -> np.ndarray:
    """Each frame's (Y, U, V) planes → its crop in `out` [len(frames), size, size, 3] uint8, flipped if asked."""
    for t, (luma, u, v) in enumerate(frames):
        _frame_to_rgb(luma, u, v, y0, x0, flip, out[t])
    return out


def crop_flip_to_rgb(planes: np.ndarray, y0: int, x0: int, size: int, flip: bool) -> np.ndarray:
    """yuv420p planes as FFmpeg's `to_ndarray` packs them, [T, 3H/2, W] → uint8 RGB [T, size, size, 3]."""
    height, width = planes.shape[1] * 2 // 3, planes.shape[2]
    chroma = planes[:, height:].reshape(len(planes), 2, height // 2, width // 2)
    out = np.empty((planes.shape[0], size, size, 3), np.uint8)
    return frames_to_rgb([(p[:height], c[0], c[1]) for p, c in zip(planes, chroma)], y0, x0, flip, out)
