import io
import json

import av
import numpy as np
import pytest
import torch

from umt.loaders.loading.kernels import resize_to_rgb
from umt.loaders.loading.pipeline import decode_views
from umt.loaders.stored.media import FULL_SCALE, MediaError, decode_flac, decode_flac_span, decode_h264, encode_flac, encode_h264
from umt.loaders.stored.views import ViewSpec


def _frames(n: int = 12) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (n, 3, 3, 3), dtype=np.uint8).repeat(8, axis=1).repeat(8, axis=2)


def test_h264_roundtrip_and_view_kernel_match_ffmpeg():
    frames = _frames()
    data = encode_h264(frames, fps=8, gop=4)
    assert data == encode_h264(frames, fps=8, gop=4)  # reproducible, so shards are too
    with av.open(io.BytesIO(data)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        packets = [p for p in c.demux(video=0) if p.size]
        assert [p.is_keyframe for p in packets] == [i % 4 == 0 for i in range(12)]  # the short GOP
    with av.open(io.BytesIO(data)) as c:
        reference = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert np.abs(reference.astype(int) - frames).mean() < 8  # lossy but faithful
    planes = decode_h264(data, 0, 12)
    assert planes.shape == (12, 36, 24)
    luma = np.array([0.299, 0.587, 0.114])   # BT.601: independent of how chroma is upsampled (unless RGB clips)
    for y0, x0, flip in [(0, 0, False), (3, 5, True), (8, 7, False)]:
        mine = resize_to_rgb(planes, (y0, x0, 16, 16), 16, flip).astype(int)
        expected = reference[:, y0:y0 + 16, x0:x0 + 16].astype(int)
        expected = expected[:, :, ::-1] if flip else expected
        assert mine.shape == (12, 16, 16, 3)
        unclipped = ((mine > 0) & (mine < 255) & (expected > 0) & (expected < 255)).all(-1)
        assert np.abs(mine @ luma - expected @ luma)[unclipped].max() <= 3   # measured 2.53
        # colours agree inside the 8 x 8 colour blocks, up to the codec's chroma ringing that the
        # kernel's bilinear chroma blends where FFmpeg's conversion takes the nearest chroma sample
        # (measured: p99 7, max 10; at block edges they blend neighbouring blocks: up to 93)
        ys, xs = np.arange(y0, y0 + 16) % 8, np.arange(x0, x0 + 16)[::-1 if flip else 1] % 8
        inner = ((ys > 1) & (ys < 6))[:, None] & ((xs > 1) & (xs < 6))[None, :]
        assert np.abs(mine - expected)[:, inner].max() <= 12


def _grey(luma: np.ndarray) -> np.ndarray:
    """yuv420p planes [1, 3H/2, W] of a luma plane with neutral chroma (RGB = 1.164 (Y - 16) each)."""
    return np.concatenate([luma[None], np.full((luma.shape[0] // 2, luma.shape[1]), 128, np.uint8)[None]], axis=1)


def test_resize_kernel_is_bilinear_on_pixel_centres_and_averages_when_shrinking():
    # a luma ramp: bilinear resampling reproduces a linear function exactly, so each output pixel is
    # the ramp at its centre, x0 + (j + 0.5) * w / size on pixel centres (k + 0.5), wherever the
    # filter does not reach the frame's edge (the edge pixel repeats there)
    ramp = np.tile(16 + np.arange(64, dtype=np.uint8) * 3, (48, 1))
    for box, size in [((4, 10, 30, 40), 16), ((2, 5, 12, 15), 40), ((0, 0, 48, 64), 20)]:
        y0, x0, h, w = box
        out = resize_to_rgb(_grey(ramp), box, size, False)[0, :, :, 0].astype(float)
        centre = x0 + (np.arange(size) + 0.5) * w / size - 0.5
        want = np.clip(1.164 * 3 * centre, 0, 255)
        reach = max(w / size, 1.0)
        inside = (centre - reach >= -0.5) & (centre + reach <= 63.5)
        assert np.abs(out[:, inside] - want[inside]).max() <= 0.5 + 0.05, box   # uint8 rounding, float32 sums
        assert np.array_equal(resize_to_rgb(_grey(ramp), box, size, True)[0], out[:, ::-1, None].repeat(3, 2))
    # a 1-pixel checkerboard halved: the area-aware filter averages it to flat grey (plain bilinear
    # sampling would alias it into stripes of 16 and 235)
    board = np.where((np.arange(32)[:, None] + np.arange(32)) % 2, 235, 16).astype(np.uint8)
    out = resize_to_rgb(_grey(board), (0, 0, 32, 32), 16, False)[0, 1:-1, 1:-1]
    assert np.all(out == round(1.164 * (125.5 - 16)))


def _plain_view(planes: tuple[np.ndarray, np.ndarray, np.ndarray], box: tuple, size: int, flip: bool) -> np.ndarray:
    """The view kernel's filter written out pixel by pixel, in numpy float32 scalars: weights w / sum(w)
    of a triangle of radius max(scale, 1) on pixel centres, every tap of the triangle's support summed in
    order (columns, then rows), BT.601 in double precision, rounded half up."""
    def taps(start, length, limit):
        scale = length / size
        radius = max(scale, 1.0)
        out = []
        for i in range(size):
            centre = start + (i + 0.5) * scale
            first = int(np.floor(centre - 0.5 - radius)) + 1
            ks = range(first, first + 2 * int(np.ceil(radius)) + 1)
            ws = [max(0.0, 1.0 - abs(k + 0.5 - centre) / radius) for k in ks]
            out.append([(min(max(k, 0), limit - 1), np.float32(float(np.float32(w)) / sum(ws))) for k, w in zip(ks, ws)])
        return out

    def resized(plane, y0, x0, h, w):
        rows, cols = taps(y0, h, plane.shape[0]), taps(x0, w, plane.shape[1])
        across = {}
        for r in {k for row in rows for k, _ in row}:
            for j in range(size):
                acc = np.float32(0)
                for k, wt in cols[j]:
                    acc = np.float32(acc + wt * np.float32(plane[r, k]))
                across[r, j] = acc
        out = np.zeros((size, size), np.float32)
        for i in range(size):
            for j in range(size):
                acc = np.float32(0)
                for k, wt in rows[i]:
                    acc = np.float32(acc + wt * across[k, j])
                out[i, j] = acc
        return out

    y0, x0, h, w = box
    ys, us, vs = resized(planes[0], y0, x0, h, w), *(resized(c, y0 / 2, x0 / 2, h / 2, w / 2) for c in planes[1:])
    rgb = np.zeros((size, size, 3), np.uint8)
    for i in range(size):
        for j in range(size):
            lum, cb, cr = 1.164 * (float(ys[i, j]) - 16.0), float(us[i, j]) - 128.0, float(vs[i, j]) - 128.0
            values = (lum + 1.596 * cr, lum - 0.392 * cb - 0.813 * cr, lum + 2.017 * cb)
            rgb[i, size - 1 - j if flip else j] = [int(min(max(v + 0.5, 0.0), 255.0)) for v in values]
    return rgb


def test_view_kernel_equals_its_filter_written_pixel_by_pixel():
    # the compiled kernel's loops (taps shared by a clip's frames, zero-weight taps dropped or padded,
    # loops of one to three taps, planar conversion) must not change a single byte of the filter
    rng = np.random.default_rng(5)
    luma = rng.integers(0, 256, (40, 60), dtype=np.uint8)[:, :52]        # rows of a wider stride, as FFmpeg's
    u, v = (rng.integers(0, 256, (20, 30), dtype=np.uint8)[:, :26] for _ in range(2))
    packed = np.concatenate([luma, np.concatenate([u, v]).reshape(20, 52)])[None]
    for box, size in [((4, 6, 12, 12), 12), ((3, 5, 7, 9), 12), ((0, 0, 40, 52), 21), ((2, 1, 30, 20), 16),
                      ((1, 3, 37, 47), 9), ((10, 12, 18, 22), 13)]:   # 1 tap; upsampling; 2-3, 3-4, 5+ taps
        for flip in (False, True):
            want = _plain_view((luma, u, v), box, size, flip)
            assert np.array_equal(resize_to_rgb(packed, box, size, flip)[0], want), (box, size, flip)


def test_seeking_decode_returns_exactly_the_requested_frames():
    frames = _frames(20)
    data = encode_h264(frames, fps=8, gop=4)
    whole = decode_h264(data, 0, 20)
    for start, stop in [(0, 3), (5, 9), (8, 12), (17, 20)]:  # inside, at and across keyframes
        assert np.array_equal(decode_h264(data, start, stop), whole[start:stop]), (start, stop)


def test_views_resized_in_place_from_the_decoder_equal_views_of_the_packed_decode():
    # 58 px wide: FFmpeg pads each row to its line size, which the in-place planes must step over
    frames = np.random.default_rng(3).integers(0, 255, (20, 36, 58, 3), dtype=np.uint8)
    data = encode_h264(frames, fps=8, gop=4)
    meta = {"label": 1, "row": 7, "frames": 20, "height": 36, "width": 58, "audio_samples": 0, "sample_rate": 16000}
    sample = {"json": json.dumps(meta).encode(), "mp4": data, "__key__": "k", "__url__": "u"}
    spec = ViewSpec(frames=4, stride=3, crop=17, audio_seconds=0)
    packed = decode_h264(data, 0, 20)
    items = decode_views(sample, spec, ["video"], 5, [0, 1, 2, 3, -1])
    assert len({tuple(item["params"].tolist()) for item in items}) == 5  # distinct views, flipped and not
    for item in items:
        t0, y0, x0, h, w, flip, _ = item["params"].tolist()
        want = resize_to_rgb(packed[t0:t0 + 10:3], (y0, x0, h, w), 17, bool(flip))
        assert torch.equal(item["video"], torch.from_numpy(want))


def test_kernel_load_compiles_every_signature_the_loader_calls():
    # load() runs before DataLoader workers fork; a signature it misses is loaded again by every worker on
    # its first sample of every epoch (20 ms each)
    from umt.loaders.loading import kernels
    kernels.load()
    compiled = {f: list(f.signatures) for f in (kernels.filter_taps, kernels._across, kernels._down, kernels._frame_to_rgb)}
    frames = np.random.default_rng(4).integers(0, 255, (6, 36, 58, 3), dtype=np.uint8)
    meta = {"label": 0, "row": 0, "frames": 6, "height": 36, "width": 58, "audio_samples": 0, "sample_rate": 16000}
    sample = {"json": json.dumps(meta).encode(), "mp4": encode_h264(frames, fps=8, gop=4), "__key__": "k", "__url__": "u"}
    decode_views(sample, ViewSpec(frames=2, stride=2, crop=17, audio_seconds=0), ["video"], 0, [0, -1])
    assert {f: list(f.signatures) for f in compiled} == compiled


def test_flac_is_lossless():
    samples = (np.random.default_rng(1).standard_normal(4000) * 5000).astype(np.int16)
    assert np.array_equal(np.round(decode_flac(encode_flac(samples, 16000)) * 32768).astype(np.int16), samples)


def test_flac_span_equals_the_slice_of_the_whole_decode():
    samples = (np.random.default_rng(2).standard_normal(40_000) * 5000).astype(np.int16)
    data = encode_flac(samples, 16000)
    whole = decode_flac(data)
    for start, stop in [(0, 16000), (1, 2), (4607, 4609), (12_345, 28_345), (24_000, 40_000)]:  # in, at, across frames
        span, total = decode_flac_span(data, start, stop)
        assert span.dtype == np.int16 and np.array_equal(span, samples[start:stop]), (start, stop)
        assert np.array_equal(span / np.float32(FULL_SCALE), whole[start:stop])
        assert total == 40_000
    with pytest.raises(MediaError, match="the view needs samples 30000-40000"):
        decode_flac_span(data, 30_000, 40_001)


def test_corrupt_media_raises_media_error():
    with pytest.raises(MediaError):
        decode_h264(b"not a video", 0, 1)
    with pytest.raises(MediaError):
        decode_flac(b"fLaC garbage")
    with pytest.raises(MediaError):
        decode_flac_span(b"fLaC garbage", 0, 10)
    with pytest.raises(MediaError, match="the view needs frames 0-4"):
        decode_h264(encode_h264(np.zeros((2, 8, 8, 3), np.uint8), 8, 2), 0, 5)
