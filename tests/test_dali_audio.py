"""The dali backend on a machine without a GPU: everything but NVDEC, checked against the cpu backend.

DALI runs CPU-only pipelines (device_id=None): its FLAC decoder, the log-mel graph, the sample
source with its views, batching and resume skips, and the crop/flip graph on a codec DALI
decodes on the CPU (VP9). Only H.264 through NVDEC is left to benchmarks/check_dali_gpu.py.
"""
from __future__ import annotations

import io
import shutil
import tarfile
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from umt.loaders.loading.audio import log_mel
from umt.loaders.loading.dali import choose_backend, dali_available, dali_box_view, dali_log_mel, dali_view_video
from umt.loaders.errors import UserError
from umt.loaders.loading.kernels import resize_to_rgb
from umt.loaders.stored.media import decode_flac, encode_flac
from umt.loaders.loading.loader import dali_loader, make_loader
from umt.loaders.stored.shards import ShardWriter
from umt.loaders.making.synth import SynthConfig, write_synth
from umt.loaders.stored.views import CROP_MODES, Geometry, ViewPolicy, ViewSpec, eval_views, make_views
from umt.loaders.loading.bad import BadSamples

from damage import copy_set, drop, garbage, members

RATE = 16000
SPEC = ViewSpec(frames=3, stride=2, crop=16, audio_seconds=0.25, mel_bins=16)
# BT.601 luma weights: the luma of an RGB pixel depends on the decoded Y plane alone (the chroma
# terms cancel to 2e-4), so it compares frames across YUV→RGB conversions that upsample chroma
# differently (DALI: bilinear; the cpu kernel: nearest).
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@pytest.fixture(scope="module")
def dali():
    return pytest.importorskip("nvidia.dali")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    cfg = SynthConfig(train=16, val=4, test=4, shard_size=8, size=24, frames=6, audio_seconds=0.5, classes=4)
    out = tmp_path_factory.mktemp("dali") / "synth"
    write_synth(out, cfg, progress=False)
    return out


def clip_audio() -> np.ndarray:
    """3 s of int16: a tone in noise, a quiet stretch and digital silence at the end."""
    rng = np.random.default_rng(0)
    t = np.arange(3 * RATE) / RATE
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(t.size)
    wave[2 * RATE:] *= 1e-3
    wave[-RATE // 2:] = 0.0
    return np.clip(wave * 32767, -32768, 32767).astype(np.int16)


def run_cpu(graph, *batches: list[np.ndarray]) -> list[np.ndarray]:
    """Run graph(*inputs) once in a CPU-only DALI pipeline fed with these batches."""
    from nvidia.dali import Pipeline, fn

    pipe = Pipeline(batch_size=len(batches[0]), num_threads=1, device_id=None)
    with pipe:
        inputs = fn.external_source(source=lambda: batches, num_outputs=len(batches), batch=True)
        pipe.set_outputs(graph(*inputs))
    pipe.build()
    (out,) = pipe.run()
    return [np.array(out.at(i)) for i in range(len(batches[0]))]


def test_dali_flac_decode_equals_pyav(dali):
    from nvidia.dali import fn, types

    flac = encode_flac(clip_audio(), RATE)
    (wave,) = run_cpu(lambda enc: fn.decoders.audio(enc, dtype=types.FLOAT, downmix=True)[0],
                      [np.frombuffer(flac, np.uint8)])
    assert wave.dtype == np.float32
    assert np.array_equal(wave, decode_flac(flac))


def test_dali_log_mel_matches_torch(dali):
    wave = decode_flac(encode_flac(clip_audio(), RATE))
    pieces = [wave[start:start + 8000].copy() for start in (0, 12345, 2 * RATE, len(wave) - 8000)]
    got = run_cpu(lambda x: dali_log_mel(x, RATE, 40), pieces)
    for piece, mel in zip(pieces, got):
        ref = log_mel(torch.from_numpy(piece), RATE, 40).numpy()
        assert mel.shape == ref.shape == (40, 51)   # [mels, frames], like log_mel
        # Measured: max 9.5e-6, mean 1e-6 (2.3e-5 with 64 mels), edge frames no worse than the
        # rest: the power spectrogram agrees with torch's to 2e-7 of its peak on every frame, so
        # window and reflect padding are exact. What is left is float32 rounding: DALI's FFT, and
        # mel weights computed in float32 (4e-6 off torch's float64 ones; half the residual).
        # DALI's built-in Hann window instead of torch's periodic one: mean 0.0026, max 0.07.
        np.testing.assert_allclose(mel, ref, rtol=0, atol=5e-5)


def cpu_batches(data, split: str, policy: ViewPolicy, batch_size: int, **kw) -> list[dict]:
    return list(make_loader(data, split, spec=SPEC, modalities=["audio"], policy=policy, batch_size=batch_size,
                            num_workers=0, **kw))


POLICIES = [("train", ViewPolicy(3, epoch=1, train=True)), ("train", ViewPolicy(3, epoch=2, train=True, num_views=2)),
            ("val", ViewPolicy(3))]


@pytest.mark.parametrize("split, policy", POLICIES)
def test_sample_source_views_equal_cpu_backend(data, split, policy):
    loader = dali_loader(data, split, SPEC, ["audio"], policy, batch_size=4, device_id=None)
    samples = list(loader.inputs())
    cpu = cpu_batches(data, split, policy, batch_size=4)
    params = torch.cat([b["params"] for b in cpu])
    meta = torch.stack([torch.cat([b[k] for b in cpu]) for k in ("label", "row", "view")], 1)
    assert len(samples) == len(params)
    assert torch.equal(torch.from_numpy(np.stack([s["params"] for s in samples])), params)
    assert torch.equal(torch.from_numpy(np.stack([s["meta"] for s in samples])), meta)
    assert all(s["mp4"].size and s["flac"].size for s in samples)


@pytest.mark.parametrize("split, policy, batch_size, rank, world, skip", [
    ("train", ViewPolicy(3, epoch=1, train=True), 3, 0, 1, 0),    # drops the partial batch
    ("train", ViewPolicy(3, epoch=1, train=True), 3, 1, 2, 1),    # second rank, resumed after a batch
    ("val", ViewPolicy(3), 3, 0, 1, 0)])                           # keeps the partial batch
def test_audio_loader_on_cpu_equals_cpu_backend(dali, data, split, policy, batch_size, rank, world, skip):
    kw = {"rank": rank, "world": world, "skip": skip}
    got = dali_loader(data, split, SPEC, ["audio"], policy, batch_size, device_id=None, **kw)
    want = cpu_batches(data, split, policy, batch_size, **kw)
    batches = list(got)
    assert len(got) == len(batches) == len(want)
    for a, b in zip(batches, want):
        assert a.keys() == b.keys()
        for key in ("label", "row", "view", "params"):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key])
        assert a["audio"].dtype == torch.float32 and a["audio"].shape == b["audio"].shape
        torch.testing.assert_close(a["audio"], b["audio"], rtol=0, atol=5e-5)   # as the log-mel test


def encode_vp9(frames: np.ndarray, fps: int = 8) -> bytes:
    """VP9 in WebM: a codec DALI decodes on the CPU, to test the crop/flip graph without NVDEC."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as container:
        stream = container.add_stream("libvpx-vp9", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": "4", "crf": "20", "b:v": "0"}
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buf.getvalue()


def test_video_view_graph_cuts_the_view(dali):
    # mid-range colours: no pixel clips in either YUV→RGB conversion, so luma compares tightly
    frames = np.random.default_rng(0).integers(48, 208, (8, 24, 32, 3), dtype=np.uint8)
    data = encode_vp9(frames)
    with av.open(io.BytesIO(data)) as container:
        planes = np.stack([f.to_ndarray() for f in container.decode(video=0)])
    params = [np.array(p, np.int32) for p in [(0, 0, 0, 16, 16, 0, 0), (2, 5, 9, 16, 16, 1, 0),
                                              (3, 1, 4, 22, 27, 0, 0), (1, 3, 2, 9, 12, 1, 0)]]
    got = run_cpu(lambda enc, p: dali_view_video(enc, p, SPEC, "cpu"), [np.frombuffer(data, np.uint8)] * 4, params)
    for clip, (t0, y0, x0, h, w, flip, _) in zip(got, params):
        want = resize_to_rgb(planes[t0:t0 + 5:2], (y0, x0, h, w), SPEC.crop, bool(flip))
        assert clip.shape == want.shape == (3, 16, 16, 3)
        # Measured max 0.86 (cut boxes): each side rounds RGB to uint8 (±0.5). A wrong frame, box or flip: ~30.
        assert np.abs(clip @ LUMA - want @ LUMA).max() <= 1.5


@settings(max_examples=25, deadline=None)
@given(height=st.integers(4, 40), width=st.integers(4, 40), crop=st.integers(2, 48), mode=st.sampled_from(CROP_MODES),
       seed=st.integers(0, 2**31), rows=st.lists(st.integers(0, 10**6), min_size=6, max_size=6),
       eval_view=st.sampled_from(eval_views(1, 1) + eval_views(2, 3)))
def test_cpu_and_dali_resize_the_same_box(dali, height, width, crop, mode, seed, rows, eval_view):
    """Each view's box, resized by DALI's graph (loader's dali_box_view) and by the cpu kernel, gives
    the same pixels on noise, where a box one pixel off or another filter differs by tens of levels.
    Luma with neutral chroma is grey, so the only difference left is where each rounds (max 1)."""
    height, width = 2 * height, 2 * width
    if mode == "cut" and crop > min(height, width):
        crop = min(height, width)
    spec = ViewSpec(frames=1, crop=crop, audio_seconds=0.0, crop_mode=mode)
    views = np.array([0, 1, 2, 3, eval_view, 7])
    params = make_views(seed, np.array(rows), views, spec, Geometry(1, height, width, 0, 1)).astype(np.int32)
    luma = np.random.default_rng(seed).integers(16, 236, (1, height, width), dtype=np.uint8)
    planes = np.concatenate([luma, np.full((1, height // 2, width), 128, np.uint8)], axis=1)
    grey = np.floor(1.164 * (luma.astype(np.float64) - 16) + 0.5).astype(np.uint8)[..., None].repeat(3, -1)
    from nvidia.dali import Pipeline, fn

    pipe = Pipeline(batch_size=len(params), num_threads=1, device_id=None)
    with pipe:
        frames, p = fn.external_source(source=lambda: ([grey] * len(params), list(params)), num_outputs=2,
                                       batch=True, layout=["FHWC", ""])
        pipe.set_outputs(dali_box_view(frames, p, crop))
    pipe.build()
    (out,) = pipe.run()
    for i, (_, y0, x0, h, w, flip, _) in enumerate(params.tolist()):
        want = resize_to_rgb(planes, (y0, x0, h, w), crop, bool(flip)).astype(int)
        assert np.abs(np.array(out.at(i)).astype(int) - want).max() <= 1, (y0, x0, h, w, flip)


def test_backend_choice_without_gpu():
    if dali_available():
        pytest.skip("a CUDA GPU is present: benchmarks/check_dali_gpu.py covers this machine")
    assert choose_backend("auto") == "cpu"
    assert choose_backend("cpu") == "cpu"
    with pytest.raises(UserError, match="dali backend cannot run here: (no CUDA GPU|DALI is not installed)"):
        choose_backend("dali")
    with pytest.raises(UserError, match="unknown decode backend"):
        choose_backend("nvdec")


def test_dali_loader_refuses_what_it_cannot_decode(data):
    with pytest.raises(UserError, match="decodes \\['audio', 'video'\\], not \\['vector'\\]"):
        dali_loader(data, "train", SPEC, ["vector"], ViewPolicy(0, train=True), 4, device_id=None)


@pytest.fixture(scope="module")
def vp9_data(data, tmp_path_factory):
    """The synthetic training shards with each clip re-encoded as VP9, which DALI decodes on the CPU."""
    out = tmp_path_factory.mktemp("vp9")
    shutil.copy(data / "manifest.json", out)
    for shard in sorted(data.glob("train-*.tar")):
        samples = {}
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
        writer = ShardWriter(out / shard.name)
        for key, members in samples.items():
            with av.open(io.BytesIO(members["mp4"])) as container:
                rgb = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
            writer.write(key, {**members, "mp4": encode_vp9(rgb)})
        writer.close()
    return out


def test_whole_loader_on_cpu_equals_cpu_backend(dali, vp9_data):
    """Video and audio through one pipeline: the batch layout the GPU run gives, decoded on the CPU."""
    policy, kw = ViewPolicy(3, epoch=1, train=True), {"rank": 0, "world": 1, "skip": 1}
    got = list(dali_loader(vp9_data, "train", SPEC, ["video", "audio"], policy, 3, device_id=None, **kw))
    want = list(make_loader(vp9_data, "train", spec=SPEC, modalities=["video", "audio"], policy=policy, batch_size=3,
                            num_workers=0, **kw))
    assert len(got) == len(want) == 4
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[key], b[key]) for key in ("label", "row", "view", "params"))
        assert a["video"].dtype == torch.uint8 and a["video"].shape == b["video"].shape == (3, 3, 16, 16, 3)
        # The limits of benchmarks/check_dali_gpu.py (measured here: luma mean 0.22, p99 0.66, RGB
        # mean 3.9): the frames' noise makes a few pixels clip in one conversion and not the other.
        video_a, video_b = a["video"].numpy().astype(np.float32), b["video"].numpy().astype(np.float32)
        luma = np.abs(video_a @ LUMA - video_b @ LUMA)
        assert luma.mean() <= 0.5 and np.percentile(luma, 99) <= 1.5
        assert np.abs(video_a - video_b).mean() <= 8
        torch.testing.assert_close(a["audio"], b["audio"], rtol=0, atol=5e-5)


def test_skip_finds_damage_dali_cannot_name_and_replaces_it_as_the_cpu_backend_does(dali, data, tmp_path):
    """A garbled FLAC (DALI's decoder fails on the whole batch) and a missing one: the integrity pass names
    them, and the batches are the cpu backend's under the same policy."""
    damaged = copy_set(data, tmp_path)
    shard = damaged / "train-000001.tar"
    keys = [info.name.partition(".")[0] for info, _ in members(shard)][::3]
    garbage(shard, f"{keys[2]}.flac")
    drop(shard, f"{keys[5]}.flac")
    policy, bad = ViewPolicy(3, epoch=1, train=True), BadSamples("skip")
    got = list(dali_loader(damaged, "train", SPEC, ["audio"], policy, 4, device_id=None, bad_samples=bad))
    want = cpu_batches(damaged, "train", policy, 4, bad_samples=bad)
    assert len(got) == len(want) == 4
    for a, b in zip(got, want):
        assert all(torch.equal(a[key], b[key]) for key in ("label", "row", "view", "params"))
        torch.testing.assert_close(a["audio"], b["audio"], rtol=0, atol=5e-5)
        assert [s[:2] for s in a["bad_samples"]] == [s[:2] for s in b["bad_samples"]]
    assert sorted(s.key for b in got for s in b["bad_samples"]) == sorted([keys[2], keys[5]])
