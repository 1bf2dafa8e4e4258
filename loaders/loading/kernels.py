"""Compiled per-pixel kernels for the CPU loader (numba; no float16 there, so uint8 in, uint8 out).

`frames_to_rgb` fuses what a view does to decoded video: resize the view's box of each YUV 4:2:0
plane to crop x crop, convert to RGB (BT.601 limited range, FFmpeg's matrix for the frames we encode)
and flip horizontally. Resampling the planes before the conversion touches only the box's pixels and
converts only the output's. The filter is bilinear, widened to the scale when shrinking (area-aware,
as PIL's and DALI's antialiased linear resize), so a large box is averaged, not aliased; a box of the
output's size (the `cut` crop mode) copies luma exactly. It reads the planes where they lie (the
decoder's own frame memory in the loader, see media.h264_planes) and writes into the caller's array
(the batch a worker ships), so a frame is neither copied out of FFmpeg nor stacked again.
Normalisation happens later on the training device, where it is free, so workers ship 4x fewer bytes
than float32 frames.

Cost: a clip's frames share one box, so the filter taps are computed once per clip, not per frame
and plane; taps of weight zero (most of the triangle's when the scale is near 1) are dropped; each
pass runs along contiguous rows (columns first over the box's rows, then rows, whose inner loop is a
whole output row); a box row is resampled along the columns just before the first output row that reads
it, so the rows in flight stay in cache; and each output row is converted as soon as its three planes
are resampled. The
sums are the same products added in the same order as a plain per-pixel loop, so the output does
not depend on these choices.
"""
from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _clip_u8(value: float) -> np.uint8:
    return np.uint8(min(max(value + 0.5, 0.0), 255.0))


@numba.njit(cache=True, nogil=True)
def _rgb_row(ys: np.ndarray, us: np.ndarray, vs: np.ndarray, rgb: np.ndarray, flip: bool, out: np.ndarray) -> None:
    """One output row's resampled Y, U, V → out [size, 3]. Converted into planar rows first (`rgb` [3, size]:
    that loop vectorises, one writing interleaved bytes did not: 0.8 against 3.2 ns a pixel), then
    interleaved (and flipped) into the output."""
    size = ys.shape[0]
    for j in range(size):
        lum = 1.164 * (ys[j] - 16.0)
        cb, cr = us[j] - 128.0, vs[j] - 128.0
        rgb[0, j] = _clip_u8(lum + 1.596 * cr)
        rgb[1, j] = _clip_u8(lum - 0.392 * cb - 0.813 * cr)
        rgb[2, j] = _clip_u8(lum + 2.017 * cb)
    for j in range(size):
        col = size - 1 - j if flip else j
        out[col, 0], out[col, 1], out[col, 2] = rgb[0, j], rgb[1, j], rgb[2, j]


@numba.njit(cache=True, nogil=True)
def filter_taps(start: float, length: float, size: int, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 1-D resize of [start, start + length) to `size` pixels: for each output pixel its source indices,
    weights [size, taps] and how many of them are in use (`count`, weights of zero left out). A triangle
    of radius max(scale, 1) around each output pixel's centre, on pixel centres (k + 0.5), indices
    clamped to [0, limit) (the edge pixel repeats), weights summing to 1."""
    scale = length / size
    radius = max(scale, 1.0)
    taps = 2 * int(math.ceil(radius)) + 1
    index = np.zeros((size, taps), np.int64)
    weight = np.zeros((size, taps), np.float32)
    count = np.zeros(size, np.int64)
    for i in range(size):
        centre = start + (i + 0.5) * scale
        first = int(math.floor(centre - 0.5 - radius)) + 1
        total = 0.0
        n = 0
        for a in range(taps):
            k = first + a
            w = max(0.0, 1.0 - abs(k + 0.5 - centre) / radius)
            total += w
            if w > 0.0:
                index[i, n] = min(max(k, 0), limit - 1)
                weight[i, n] = w
                n += 1
        for a in range(n):
            weight[i, a] /= total
        count[i] = n
    return index, weight, count


@numba.njit(cache=True, nogil=True)
def _across(plane: np.ndarray, first: int, start: int, stop: int, cols: np.ndarray, col_w: np.ndarray, taps: int,
            out: np.ndarray) -> None:
    """out[r] = row first + r of `plane` resampled along its columns, for r in [start, stop). Every pixel takes
    `taps` taps (the widest's): the unused ones weigh 0 (on index 0), and adding their 0 changes no sum. One to
    three taps (a crop of the output's size; upsampling, chroma's usual case; a box up to twice the output's size)
    have loops of their own, with the same sums (0 + a = a exactly)."""
    size = out.shape[1]
    for r in range(start, stop):
        src = plane[first + r]
        dst = out[r]
        if taps == 1:
            for j in range(size):
                dst[j] = col_w[j, 0] * np.float32(src[cols[j, 0]])
        elif taps == 2:
            for j in range(size):
                dst[j] = col_w[j, 0] * np.float32(src[cols[j, 0]]) + col_w[j, 1] * np.float32(src[cols[j, 1]])
        elif taps == 3:
            for j in range(size):
                dst[j] = (col_w[j, 0] * np.float32(src[cols[j, 0]]) + col_w[j, 1] * np.float32(src[cols[j, 1]])
                          + col_w[j, 2] * np.float32(src[cols[j, 2]]))
        else:
            for j in range(size):
                acc = np.float32(0.0)
                for b in range(taps):
                    acc += col_w[j, b] * np.float32(src[cols[j, b]])
                dst[j] = acc


@numba.njit(cache=True, nogil=True)
def _down(across: np.ndarray, first: int, rows: np.ndarray, row_w: np.ndarray, row_n: np.ndarray, i: int,
          out: np.ndarray) -> None:
    """out[j] = output row i: the column-resampled rows resampled along the rows."""
    out[:] = 0.0
    for a in range(row_n[i]):
        w = row_w[i, a]
        src = across[rows[i, a] - first]
        for j in range(out.shape[0]):
            out[j] += w * src[j]


@numba.njit(cache=True, nogil=True)
def _frame_to_rgb(luma: np.ndarray, u: np.ndarray, v: np.ndarray,
                  ry: np.ndarray, ryw: np.ndarray, ryn: np.ndarray, cy: np.ndarray, cyw: np.ndarray, cyn: np.ndarray,
                  rc: np.ndarray, rcw: np.ndarray, rcn: np.ndarray, cc: np.ndarray, ccw: np.ndarray, ccn: np.ndarray,
                  flip: bool, luma_across: np.ndarray, u_across: np.ndarray, v_across: np.ndarray,
                  rows: np.ndarray, rgb: np.ndarray, out: np.ndarray) -> None:
    """One frame's planes (2-D, rows of any stride) → out [size, size, 3] with the clip's taps (r*: rows,
    c*: columns; *y luma, *c chroma) and buffers: the box resized, converted, flipped."""
    size = out.shape[0]
    luma_first, chroma_first = ry[:, 0].min(), rc[:, 0].min()
    luma_taps, chroma_taps = cyn.max(), ccn.max()
    luma_done = chroma_done = 0  # rows resampled along the columns so far, each just before an output row reads it
    ys, us, vs = rows[0], rows[1], rows[2]
    for i in range(size):
        need = ry[i, ryn[i] - 1] - luma_first + 1
        if need > luma_done:
            _across(luma, luma_first, luma_done, need, cy, cyw, luma_taps, luma_across)
            luma_done = need
        need = rc[i, rcn[i] - 1] - chroma_first + 1
        if need > chroma_done:
            _across(u, chroma_first, chroma_done, need, cc, ccw, chroma_taps, u_across)
            _across(v, chroma_first, chroma_done, need, cc, ccw, chroma_taps, v_across)
            chroma_done = need
        _down(luma_across, luma_first, ry, ryw, ryn, i, ys)
        _down(u_across, chroma_first, rc, rcw, rcn, i, us)
        _down(v_across, chroma_first, rc, rcw, rcn, i, vs)
        _rgb_row(ys, us, vs, rgb, flip, out[i])


class BoxResize:
    """One view's box → crop x crop RGB, for each of its clip's frames: the filter taps and scratch rows are
    computed once (the frames share the box), then each call resizes and converts one frame's planes.
    `frame_size`: the luma plane's (height, width)."""

    def __init__(self, box: tuple[int, int, int, int], size: int, frame_size: tuple[int, int], flip: bool):
        luma_rows, luma_cols, chroma_rows, chroma_cols = view_taps(box, size, frame_size)
        luma, chroma = (*luma_rows, *luma_cols), (*chroma_rows, *chroma_cols)
        self.taps, self.flip = (*luma, *chroma), flip
        self.luma = np.empty((_span(luma[0], luma[2]), size), np.float32)
        chroma_rows = _span(chroma[0], chroma[2])
        self.u, self.v = np.empty((chroma_rows, size), np.float32), np.empty((chroma_rows, size), np.float32)
        self.rows, self.rgb = np.empty((3, size), np.float32), np.empty((3, size), np.uint8)

    def __call__(self, luma: np.ndarray, u: np.ndarray, v: np.ndarray, out: np.ndarray) -> None:
        """One frame's planes (2-D, rows of any stride) → out [size, size, 3] uint8."""
        _frame_to_rgb(luma, u, v, *self.taps, self.flip, self.luma, self.u, self.v, self.rows, self.rgb, out)


Taps = tuple[np.ndarray, np.ndarray, np.ndarray]  # filter_taps: index, weight, count


def view_taps(box: tuple[int, int, int, int], size: int, frame_size: tuple[int, int]) -> tuple[Taps, Taps, Taps, Taps]:
    """The 1-D filters that resize a view's box (y0, x0, h, w) of a frame of `frame_size` (H, W) to size x size: luma
    rows, luma columns, chroma rows, chroma columns (4:2:0 chroma: the box at half resolution)."""
    (y0, x0, h, w), (height, width) = box, frame_size
    return (filter_taps(y0, h, size, height), filter_taps(x0, w, size, width),
            filter_taps(y0 / 2, h / 2, size, height // 2), filter_taps(x0 / 2, w / 2, size, width // 2))


def reach(index: np.ndarray, count: np.ndarray) -> tuple[int, int]:
    """[first, stop): the source pixels a 1-D filter's taps read (indices grow along a pixel's taps)."""
    return int(index[:, 0].min()), int(index[np.arange(len(count)), count - 1].max()) + 1


def _span(index: np.ndarray, count: np.ndarray) -> int:
    """How many source rows the taps reach."""
    first, stop = reach(index, count)
    return stop - first


def load() -> None:
    """Load the compiled kernel in this process (from numba's cache): called before DataLoader workers
    fork, each worker of each epoch inherits it instead of loading it again on its first sample. Both array
    layouts: packed planes (C) and the decoder's padded rows (media.h264_planes), all three planes padded
    (a chroma slice of one pixel counts as contiguous, and left each worker 20 ms of loading a second
    signature on its first sample, every epoch)."""
    resize_to_rgb(np.zeros((1, 3, 2), np.uint8), (0, 0, 2, 2), 1, False)
    # rows wider than the frame, as FFmpeg's planes: numba types them 'A'
    luma, chroma = np.zeros((4, 8), np.uint8)[:, :4], np.zeros((2, 8), np.uint8)[:, :2]
    frames_to_rgb([(luma, chroma, chroma)], (0, 0, 4, 4), False, np.empty((1, 1, 1, 3), np.uint8))


def frames_to_rgb(frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]], box: tuple[int, int, int, int],
                  flip: bool, out: np.ndarray) -> np.ndarray:
    """Each frame's (Y, U, V) planes → the box (y0, x0, h, w) resized into `out` [len(frames), size, size, 3]
    uint8 (the caller's memory), flipped horizontally if asked."""
    if frames:
        resize = BoxResize(box, out.shape[1], frames[0][0].shape, flip)
        for t, planes in enumerate(frames):
            resize(*planes, out[t])
    return out


def resize_to_rgb(planes: np.ndarray, box: tuple[int, int, int, int], size: int, flip: bool) -> np.ndarray:
    """yuv420p planes [T, 3H/2, W] (H, W even) as FFmpeg's `to_ndarray` packs them → uint8 RGB
    [T, size, size, 3] of the box (y0, x0, h, w) resized to size x size, flipped horizontally if asked."""
    frames, rows, width = planes.shape
    height = rows * 2 // 3
    chroma = planes[:, height:].reshape(frames, 2, height // 2, width // 2)   # U then V, packed row after row
    out = np.empty((frames, size, size, 3), np.uint8)
    return frames_to_rgb([(p[:height], c[0], c[1]) for p, c in zip(planes, chroma)], box, flip, out)
