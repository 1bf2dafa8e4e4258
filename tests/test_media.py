import io
import json

import av
import numpy as np
import pytest
import torch

from umt.loaders.loading.kernels import crop_flip_to_rgb
from umt.loaders.loading.pipeline import decode_views
from umt.loaders.stored.media import MediaError, decode_flac, decode_flac_span, decode_h264, encode_flac, encode_h264
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
    for y0, x0, flip in [(0, 0, False), (3, 5, True), (8, 7, False)]:
        mine = crop_flip_to_rgb(planes, y0, x0, 16, flip).astype(int)
        expected = reference[:, y0:y0 + 16, x0:x0 + 16]
        assert mine.shape == (12, 16, 16, 3)
        assert np.abs(mine - (expected[:, :, ::-1] if flip else expected)).max() <= 4


def test_seeking_decode_returns_exactly_the_requested_frames():
    frames = _frames(20)
    data = encode_h264(frames, fps=8, gop=4)
    whole = decode_h264(data, 0, 20)
    for start, stop in [(0, 3), (5, 9), (8, 12), (17, 20)]:  # inside, at and across keyframes
        assert np.array_equal(decode_h264(data, start, stop), whole[start:stop]), (start, stop)


def test_views_cut_in_place_from_the_decoder_equal_views_of_the_packed_decode():
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
        t0, y0, x0, flip, _ = item["params"].tolist()
        want = crop_flip_to_rgb(packed[t0:t0 + 10:3], y0, x0, 17, bool(flip))
        assert torch.equal(item["video"], torch.from_numpy(want))


def test_flac_is_lossless():
    samples = (np.random.default_rng(1).standard_normal(4000) * 5000).astype(np.int16)
    assert np.array_equal(np.round(decode_flac(encode_flac(samples, 16000)) * 32768).astype(np.int16), samples)


def test_flac_span_equals_the_slice_of_the_whole_decode():
    samples = (np.random.default_rng(2).standard_normal(40_000) * 5000).astype(np.int16)
    data = encode_flac(samples, 16000)
    whole = decode_flac(data)
    for start, stop in [(0, 16000), (1, 2), (4607, 4609), (12_345, 28_345), (24_000, 40_000)]:  # in, at, across frames
        span, total = decode_flac_span(data, start, stop)
        assert np.array_equal(span, whole[start:stop]), (start, stop)
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
