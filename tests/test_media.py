import io

import av
import numpy as np
import pytest

from umt.loaders.media import MediaError, decode_flac, decode_h264, encode_flac, encode_h264, yuv420_crop_to_rgb


def test_h264_roundtrip_and_crop_conversion_match_ffmpeg():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (5, 3, 3, 3), dtype=np.uint8).repeat(8, axis=1).repeat(8, axis=2)
    data = encode_h264(frames, fps=8, gop=2)
    assert data == encode_h264(frames, fps=8, gop=2)  # bit-exact, so shards are reproducible
    with av.open(io.BytesIO(data)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        reference = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    planes = decode_h264(data, 5)
    assert planes.shape == (5, 36, 24)
    for y0, x0 in [(0, 0), (3, 5), (8, 7)]:
        mine = yuv420_crop_to_rgb(planes, y0, x0, 16).astype(int)
        assert mine.shape == (5, 16, 16, 3)
        assert np.abs(mine - reference[:, y0:y0 + 16, x0:x0 + 16]).max() <= 4
    assert np.abs(reference.astype(int) - frames).mean() < 8  # lossy but faithful


def test_flac_is_lossless():
    samples = (np.random.default_rng(1).standard_normal(4000) * 5000).astype(np.int16)
    assert np.array_equal(np.round(decode_flac(encode_flac(samples, 16000)) * 32768).astype(np.int16), samples)


def test_corrupt_media_raises_media_error():
    with pytest.raises(MediaError):
        decode_h264(b"not a video", 1)
    with pytest.raises(MediaError):
        decode_flac(b"fLaC garbage")
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(MediaError, match="needs 5"):
        decode_h264(encode_h264(frames, 8, 2), 5)
