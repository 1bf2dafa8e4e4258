"""Compiled per-pixel kernels for the CPU loader (numba; no float16 there, so uint8 in, uint8 out).

`crop_flip_to_rgb` fuses what a view does to decoded video: crop, YUV 4:2:0 → RGB (BT.601
limited range, FFmpeg's matrix for the frames we encode) and horizontal flip, touching only the
cropped pixels. Normalisation happens later on the training device, where it is free, so workers
ship 4x fewer bytes than float32 frames.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _clip_u8(value: float) -> np.uint8:
    return np.uint8(min(max(value + 0.5, 0.0), 255.0))


@numba.njit(cache=True, nogil=True)
def _crop_flip_to_rgb(planes: np.ndarray, y0: int, x0: int, size: int, flip: bool, out: np.ndarray) -> None:
    height = planes.shape[1] * 2 // 3
    width = planes.shape[2]
    half_w = width // 2
    v_offset = (height // 2) * half_w   # V follows U in the flattened chroma area
    for t in range(planes.shape[0]):
        for i in range(size):
            y = y0 + i
            for j in range(size):
                x = x0 + j
                luma = 1.164 * (np.float32(planes[t, y, x]) - 16.0)
                c = (y // 2) * half_w + x // 2
                u = np.float32(planes[t, height + c // width, c % width]) - 128.0
                c += v_offset
                v = np.float32(planes[t, height + c // width, c % width]) - 128.0
                col = size - 1 - j if flip else j
                out[t, i, col, 0] = _clip_u8(luma + 1.596 * v)
                out[t, i, col, 1] = _clip_u8(luma - 0.392 * u - 0.813 * v)
                out[t, i, col, 2] = _clip_u8(luma + 2.017 * u)


def load() -> None:
    """Load the compiled kernel in this process (0.3 s from numba's cache): called before DataLoader workers
    fork, each worker of each epoch inherits it instead of loading it again on its first sample."""
    crop_flip_to_rgb(np.zeros((1, 3, 2), np.uint8), 0, 0, 1, False)


def crop_flip_to_rgb(planes: np.ndarray, y0: int, x0: int, size: int, flip: bool) -> np.ndarray:
    """yuv420p planes [T, 3H/2, W] → uint8 RGB [T, size, size, 3] of the crop at (y0, x0), flipped if asked."""
    out = np.empty((planes.shape[0], size, size, 3), np.uint8)
    _crop_flip_to_rgb(np.ascontiguousarray(planes), y0, x0, size, flip, out)
    return out
