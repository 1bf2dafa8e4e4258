"""Compiled per-pixel kernels for the CPU loader (numba; no float16 there, so uint8 in, uint8 out).

`resize_to_rgb` fuses what a view does to decoded video: resize the view's box of each YUV 4:2:0
plane to crop x crop, convert to RGB (BT.601 limited range, FFmpeg's matrix for the frames we encode)
and flip horizontally. Resampling the planes before the conversion touches only the box's pixels and
converts only the output's. The filter is bilinear, widened to the scale when shrinking (area-aware,
as PIL's and DALI's antialiased linear resize), so a large box is averaged, not aliased; a box of the
output's size (the `cut` crop mode) copies luma exactly. It reads the planes where they lie (the
decoder's own frame memory in the loader, see media.h264_planes) and writes into the caller's array
(the batch a worker ships), so a frame is neither copied out of FFmpeg nor stacked again.
Normalisation happens later on the training device, where it is free, so workers ship 4x fewer bytes
than float32 frames.
"""
from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _clip_u8(value: float) -> np.uint8:
    return np.uint8(min(max(value + 0.5, 0.0), 255.0))


@numba.njit(cache=True, nogil=True)
def _taps(start: float, length: float, size: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights [size, taps] of a 1-D resize of [start, start + length) to `size`
    pixels: a triangle of radius max(scale, 1) around each output pixel's centre, on pixel centres
    (k + 0.5), indices clamped to [0, limit) (the edge pixel repeats), weights summing to 1."""
    scale = length / size
    radius = max(scale, 1.0)
    taps = 2 * int(math.ceil(radius)) + 1
    index = np.empty((size, taps), np.int64)
    weight = np.zeros((size, taps), np.float32)
    for i in range(size):
        centre = start + (i + 0.5) * scale
        first = int(math.floor(centre - 0.5 - radius)) + 1
        total = 0.0
        for a in range(taps):
            k = first + a
            w = max(0.0, 1.0 - abs(k + 0.5 - centre) / radius)
            index[i, a] = min(max(k, 0), limit - 1)
            weight[i, a] = w
            total += w
        for a in range(taps):
            weight[i, a] /= total
    return index, weight


@numba.njit(cache=True, nogil=True)
def _resize_plane(plane: np.ndarray, y0: float, x0: float, h: float, w: float, size: int,
                  out: np.ndarray) -> None:
    """out[size, size] float32 = the box (y0, x0, h, w) of `plane` resized (rows, then columns)."""
    rows, row_w = _taps(y0, h, size, plane.shape[0])
    cols, col_w = _taps(x0, w, size, plane.shape[1])
    first, last = rows.min(), rows.max()
    across = np.zeros((last - first + 1, size), np.float32)
    for r in range(first, last + 1):
        for j in range(size):
            acc = np.float32(0.0)
            for b in range(cols.shape[1]):
                acc += col_w[j, b] * np.float32(plane[r, cols[j, b]])
            across[r - first, j] = acc
    for i in range(size):
        for j in range(size):
            acc = np.float32(0.0)
            for a in range(rows.shape[1]):
                acc += row_w[i, a] * across[rows[i, a] - first, j]
            out[i, j] = acc


@numba.njit(cache=True, nogil=True)
def _frame_to_rgb(luma: np.ndarray, u: np.ndarray, v: np.ndarray, y0: int, x0: int, h: int, w: int,
                  flip: bool, out: np.ndarray) -> None:
    """One frame's planes (2-D, rows of any stride) → out [size, size, 3]: the box resized, converted, flipped."""
    size = out.shape[0]
    ys = np.empty((size, size), np.float32)
    us = np.empty((size, size), np.float32)
    vs = np.empty((size, size), np.float32)
    _resize_plane(luma, y0, x0, h, w, size, ys)
    _resize_plane(u, y0 / 2, x0 / 2, h / 2, w / 2, size, us)   # chroma: half resolution, same box
    _resize_plane(v, y0 / 2, x0 / 2, h / 2, w / 2, size, vs)
    for i in range(size):
        for j in range(size):
            lum = 1.164 * (ys[i, j] - 16.0)
            cb, cr = us[i, j] - 128.0, vs[i, j] - 128.0
            col = size - 1 - j if flip else j
            out[i, col, 0] = _clip_u8(lum + 1.596 * cr)
            out[i, col, 1] = _clip_u8(lum - 0.392 * cb - 0.813 * cr)
            out[i, col, 2] = _clip_u8(lum + 2.017 * cb)


def load() -> None:
    """Load the compiled kernel in this process (from numba's cache): called before DataLoader workers
    fork, each worker of each epoch inherits it instead of loading it again on its first sample. Both array
    layouts: packed planes (C) and the decoder's padded rows (media.h264_planes)."""
    resize_to_rgb(np.zeros((1, 3, 2), np.uint8), (0, 0, 2, 2), 1, False)
    padded = np.zeros((2, 4), np.uint8)[:, :2]
    frames_to_rgb([(padded, padded[:1, :1], padded[:1, :1])], (0, 0, 2, 2), False, np.empty((1, 1, 1, 3), np.uint8))


def frames_to_rgb(frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]], box: tuple[int, int, int, int],
                  flip: bool, out: np.ndarray) -> np.ndarray:
    """Each frame's (Y, U, V) planes → the box (y0, x0, h, w) resized into `out` [len(frames), size, size, 3]
    uint8 (the caller's memory: the batch a worker ships), flipped horizontally if asked."""
    for t, (luma, u, v) in enumerate(frames):
        _frame_to_rgb(luma, u, v, *box, flip, out[t])
    return out


def resize_to_rgb(planes: np.ndarray, box: tuple[int, int, int, int], size: int, flip: bool) -> np.ndarray:
    """yuv420p planes [T, 3H/2, W] (H, W even) as FFmpeg's `to_ndarray` packs them → uint8 RGB
    [T, size, size, 3] of the box (y0, x0, h, w) resized to size x size, flipped horizontally if asked."""
    frames, rows, width = planes.shape
    height = rows * 2 // 3
    chroma = planes[:, height:].reshape(frames, 2, height // 2, width // 2)   # U then V, packed row after row
    out = np.empty((frames, size, size, 3), np.uint8)
    return frames_to_rgb([(p[:height], c[0], c[1]) for p, c in zip(planes, chroma)], box, flip, out)
