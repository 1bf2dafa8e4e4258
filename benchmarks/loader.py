"""Clips per second: umt's `cpu` loader on packed shards against the loader most research code uses.

The naive loader is a torch DataLoader whose workers open each original video file with PyAV,
decode from the start up to the clip, convert whole frames to RGB, resize, crop and flip, and
decode and resample the whole audio track. umt's loader reads the same clips after
`umt-data pack` (by default short side 128, 15 fps, GOP 8): keyframe seek, crop-only colour conversion.
Same clips, same view size, same workers and batch size; passes interleaved; medians.

On the same packed shards, through the same planned streaming and DataLoader workers (only the
per-sample decode differs), it also measures:
- the bare-decode bound: PyAV decoding exactly the frames each view needs, from the keyframe
  before it, with no conversion (frames stay FFmpeg's), plus the FLAC decode: `limit_clips_per_s`,
  and `ratio_vs_limit` = umt / limit (what umt's crop, colour conversion, log-mel and collation cost);
- after the rounds, the cost of each stage in one process on one thread on the same views (`stage_costs`: the
  bound's work; umt's parse + FLAC span, decode into planes, view kernel, log-mel of a batch, and the worker's whole
  work on a batch, each a clip's share), `clip_bound` = the bound's work over umt's worker's (the ratio a worker
  doing only that would reach) and
  `clip_bound_minus_ratio`, what the workers lose beyond it (streaming, batching, processes); and in every
  round, right after its passes, the same stages once more (one pass, each sample once: `per_round_stage_costs`),
  so that `per_round_clip_bound_minus_ratio` and `per_round_stage_bound_minus_ratio` compare each round's ratio with
  bounds measured in the same minute;
- umt's loader with its views finished on the trainer's device (`finish_on`, loaders/loading/finish.py): the
  workers' side, which is all the CPUs do, `umt_shipped` (decoded frames and audio windows, as shipped) and
  `shipped_ratio_vs_limit`; with a GPU also `umt_gpu_finished` (the finished batches on the GPU, end to end);
- peer decoders producing the same views: decord (`VideoReader.get_batch` of the view's frames, RGB
  by the library, then crop and flip) and PyAV with FFmpeg's frame/slice threading (whole-frame RGB
  by FFmpeg, then crop and flip); audio as umt's. A peer that does not import is reported as such.
- SPDL (facebookresearch/spdl, benchmark-only: requirements-bench.txt) as its documentation and examples
  use it, not through umt's workers: a `spdl.pipeline` PipelineBuilder whose decode stage runs on its thread
  pool (concurrency = --workers, one FFmpeg thread per decode), then batches and a collate stage. Per sample:
  `demux_video` + `sample_decode_video` of the view's frame indices with an FFmpeg filter graph that crops the
  view's box, scales it to the crop (swscale bilinear, full chroma interpolation), flips and converts to RGB;
  `demux_audio` of the view's window + `decode_packets` (atrim, float); umt's log-mel (SPDL has none). Same
  frames, boxes, flips and audio windows as umt's views; the log-mel is equal, the pixels are FFmpeg's resize
  and conversion, not umt's kernel (`spdl_views_vs_umt` in the JSON says by how much). torchcodec's status
  is recorded (`peer_status`): its PyPI wheel links CUDA torch, so it does not load beside the CPU torch.

    python benchmarks/loader.py --repeats 5                 # → benchmarks/results/loader_cpu.json
    PYTHONPATH=/tmp/peerdec python benchmarks/loader.py ...   # with decord installed with pip --target

`--realistic` runs the same comparison at the settings of real video training: 10 s sources at
25 fps packed as `umt-data pack` writes by default (short side 256, GOP 8, CRF 23), views of 16
frames at stride 2 as random-resized crops to 224 px (training's default view; of the peers only SPDL, whose filter graph
resizes the box, is measured: decord and threaded PyAV cut crops), and the whole 10 s of audio as a 128-band log-mel, in batches
of 8 (96 clips: each worker runs several batches, as in an epoch of real length). The bound is the
same: bare decoding of exactly the frames each view needs, plus the FLAC decode.

    python benchmarks/loader.py --realistic --repeats 5     # → benchmarks/results/loader_cpu_realistic.json

`--images` instead measures the ffcv image loader alone: samples/s of training epochs over a packed
set of 64 px images (crop 56, flip), one decoding thread, from each epoch's first batch on (ffcv
compiles its pipeline when an epoch's loader starts); run it under `taskset -c 0` for one core.

    taskset -c 0 python benchmarks/loader.py --images --out benchmarks/results/loader_images.json
"""
from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import partial
from importlib.metadata import version
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from umt.engine.interleave import ratio_spread, rotated, spread
from umt.loaders.loading.audio import log_mel, pcm_float
from umt.loaders.loading.dali import dali_available
from umt.loaders.loading.kernels import frames_to_rgb, load as load_kernels
from umt.loaders.loading.loader import make_loader, planned_split
from umt.loaders.loading.bad import BadSamples
from umt.loaders.loading.pipeline import (_Media, _PlannedBatches, decode_views, finish_views, log_mels,
                                          worker_init)
from umt.loaders.loading.stream import planned_samples
from umt.loaders.making.inputs import ClipInput
from umt.loaders.making.pack import pack
from umt.loaders.making.transcode import PackOptions
from umt.loaders.stored.media import decode_flac, h264_frames, h264_planes
from umt.loaders.stored.shards import member
from umt.loaders.stored.views import Geometry, ViewPolicy, ViewSpec, audio_window, make_view

from common import median, torch_threads, write_json

@dataclass(frozen=True)
class Setting:
    """One benchmark setting: the source clips, how they are packed, the view read from them."""

    source_fps: int
    source_size: tuple[int, int]
    seconds: int
    noise: float            # per-pixel noise of the source frames (sets the bitrate)
    packed: PackOptions
    spec: ViewSpec

    def to_dict(self) -> dict:
        return {**asdict(self), "packed": self.packed.to_dict(), "spec": self.spec.to_dict()}


SETTINGS = {
    # tiny synthetic clips: the figures recorded since issue 3
    "default": Setting(30, (320, 240), 6, 12.0, PackOptions(short_side=128, fps=15, gop=8),
                       ViewSpec(frames=8, stride=2, crop=112, audio_seconds=1.0, mel_bins=64, crop_mode="cut")),
    # what real video training reads: 10 s clips packed as `umt-data pack` does by default (short side 256,
    # GOP 8, CRF 23) at 25 fps, 16 frames as random-resized crops to 224 px, the whole 10 s of audio as a
    # 128-band log-mel
    "realistic": Setting(25, (456, 256), 10, 4.0, PackOptions(short_side=256, fps=25),
                         ViewSpec(frames=16, stride=2, crop=224, audio_seconds=10.0, mel_bins=128)),
}
SPEC, PACKED = SETTINGS["default"].spec, SETTINGS["default"].packed
MAX_SOURCES = 32  # writing a 10 s source costs seconds: more clips than this repeat sources under new keys


def write_source(path: Path, seed: int, size: tuple[int, int] = (320, 240), seconds: int = 6, fps: int = 30,
                 noise: float = 12.0) -> None:
    """A downloaded-style clip: H.264 at `fps`, long GOP, moving gradients plus noise, stereo AAC at 44.1 kHz."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        aud = out.add_stream("aac", rate=44100)
        for t in range(fps * seconds):
            img = np.stack([(xx + 3 * t) % 256, (yy * 2 + seed * 17) % 256, (xx + yy + t) % 256], -1)
            img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
            out.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(vs.encode())
        tone = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * np.arange(44100 * seconds) / 44100)
        for start in range(0, len(tone), 1024):
            frame = av.AudioFrame.from_ndarray(np.repeat(tone[None, start:start + 1024], 2, 0).astype(np.float32),
                                               format="fltp", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = 44100, start, Fraction(1, 44100)
            out.mux(aud.encode(frame))
        out.mux(aud.encode())


class NaiveClips(torch.utils.data.Dataset):
    """What many repositories do: per item, open the file and decode what the clip needs."""

    def __init__(self, files: list[str], setting: Setting):
        self.files, self.setting = files, setting

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        rng, st, spec = np.random.default_rng(i), self.setting, self.setting.spec
        step = spec.stride * st.source_fps // st.packed.fps                 # the same time span as umt's view
        need = (spec.frames - 1) * step + 1
        t0 = int(rng.integers(0, st.source_fps * st.seconds - need))
        frames, audio = [], []
        with av.open(self.files[i]) as c:
            for n, frame in enumerate(c.decode(video=0)):
                if n >= t0 and (n - t0) % step == 0:
                    frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) == spec.frames:
                    break
        with av.open(self.files[i]) as c:
            resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
            for frame in c.decode(audio=0):
                audio += [f.to_ndarray()[0] for f in resampler.resample(frame)]
        video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()
        scale = st.packed.short_side / min(video.shape[-2:])
        video = F.interpolate(video, scale_factor=scale, mode="bilinear", align_corners=False)
        y0 = int(rng.integers(0, video.shape[-2] - spec.crop + 1))
        x0 = int(rng.integers(0, video.shape[-1] - spec.crop + 1))
        video = video[..., y0:y0 + spec.crop, x0:x0 + spec.crop]
        if rng.integers(0, 2):
            video = video.flip(-1)
        wave = torch.from_numpy(np.concatenate(audio))
        window = audio_window(spec, 16000)
        a0 = int(rng.integers(0, len(wave) - window + 1))
        return {"label": i, "video": video.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1),
                "audio": log_mel(wave[a0:a0 + window], 16000, spec.mel_bins).unsqueeze(0)}


def _view(sample: dict, seed: int, view: int, spec: ViewSpec):
    meta = json.loads(sample["json"])
    return meta, make_view(seed, meta["row"], view, spec, Geometry.of(meta))


def _span(spec: ViewSpec) -> int:
    return (spec.frames - 1) * spec.stride + 1


def _bare(sample: dict, seed: int, view: int, spec: ViewSpec) -> dict:
    """The bound: the view's frames and the whole FLAC track decoded, nothing converted or cut."""
    meta, v = _view(sample, seed, view, spec)
    for _ in h264_frames(sample[member("video")], v.t0, v.t0 + _span(spec)):
        pass
    with av.open(io.BytesIO(sample[member("audio")])) as container:
        for _ in container.decode(audio=0):
            pass
    return {"label": meta["label"]}


def _peer_item(meta: dict, v, rgb: np.ndarray, sample: dict, spec: ViewSpec) -> dict:
    """A peer's RGB frames [T, H, W, 3] → the view (crop, flip) and umt's log-mel of its audio window."""
    clip = rgb[:, v.y0:v.y0 + spec.crop, v.x0:v.x0 + spec.crop]
    wave = decode_flac(sample[member("audio")])
    window = audio_window(spec, meta["sample_rate"])
    mel = log_mel(torch.from_numpy(wave[v.audio_offset:v.audio_offset + window]), meta["sample_rate"], spec.mel_bins)
    return {"label": meta["label"], "video": torch.from_numpy(np.ascontiguousarray(clip[:, :, ::-1] if v.flip else clip)),
            "audio": mel.unsqueeze(0)}


def _decord(sample: dict, seed: int, view: int, spec: ViewSpec) -> dict:
    import decord
    meta, v = _view(sample, seed, view, spec)
    reader = decord.VideoReader(io.BytesIO(sample[member("video")]), num_threads=1)
    rgb = reader.get_batch(list(range(v.t0, v.t0 + _span(spec), spec.stride))).asnumpy()
    return _peer_item(meta, v, rgb, sample, spec)


def _pyav_threaded(sample: dict, seed: int, view: int, spec: ViewSpec) -> dict:
    meta, v = _view(sample, seed, view, spec)
    frames = list(h264_frames(sample[member("video")], v.t0, v.t0 + _span(spec), threads=True))
    rgb = np.stack([f.to_ndarray(format="rgb24") for f in frames[::spec.stride]])
    return _peer_item(meta, v, rgb, sample, spec)


DECODERS = {"limit": _bare, "decord": _decord, "pyav_threaded": _pyav_threaded}


class _Decoded(_PlannedBatches):
    """umt's planned batches (same shards streamed, same worker split) with another per-sample decode."""

    def __init__(self, decode, *args):
        super().__init__(*args)
        self.decode = decode

    def _media(self, sample: dict, view: int) -> dict:
        return self.decode(sample, self.policy.seed, view, self.spec)  # the whole decode, in place of the parse

    def _clips(self, size: int, medias: list, leases: dict) -> dict:
        return {}  # each variant returns its own clip (the bound none)

    def _mels(self, medias: list) -> list:
        return [None] * len(medias)  # and its own log-mel

    def _write(self, media: dict, position: int, clips: dict, mels: None) -> dict:
        return media


def variant_pass(data: Path, decode, spec: ViewSpec, policy: ViewPolicy, batch_size: int, workers: int) -> float:
    """Clips/s of one epoch through umt's planned streaming and workers with `decode` per sample."""
    _, paths, plan, _ = planned_split(data, "train", ["video", "audio"], policy, batch_size)
    batches = _Decoded(decode, paths, plan, policy, spec, ("video", "audio"), BadSamples("error"))
    return timed_pass(torch.utils.data.DataLoader(batches, batch_size=None, num_workers=workers,
                                                  worker_init_fn=worker_init))


def umt_pass(data: Path, spec: ViewSpec, policy: ViewPolicy, batch_size: int, workers: int, backend: str = "cpu",
             finish_on: torch.device | None = None, shipped: bool = False):
    """A timed pass of umt's loader, built now: with `shipped`, the workers' batches as they ship them (views to
    be finished on `finish_on`, the trainer's device), without the finishing."""
    loader = make_loader(data, "train", spec=spec, modalities=["video", "audio"], policy=policy, batch_size=batch_size,
                         num_workers=workers, backend=backend, finish_on=finish_on)
    return lambda: timed_pass(loader.shipped() if shipped else loader)


class StageClock:
    """Milliseconds a clip, in this process on one thread, on `count` samples of the set with their first training
    views, in the worker's batches of `batch`: the bound's own work (`bare`); umt's worker's stages on the same views,
    each timed alone: the parse and FLAC span decode (`parse_flac`), the H.264 decode of the view's frames into planes
    (`decode`), the view kernel (`kernel`), the log-mel (`log_mel`: a batch's windows in one call, as the worker
    does it); and the worker's whole work on a batch (`worker_clip`: the same stages as the worker joins them, each
    sample parsed, the batch's log-mels, each sample's frames decoded and resized into the batch's memory).
    `clip_bound` = bare / worker_clip, the ratio to the bound a worker doing this work and nothing else would reach;
    `stage_bound` = bare / the stages' sum, the same without the joins. `ratio_vs_limit` measured in the rounds falls
    short of them by what streaming, collating and the processes cost.

    `stages()`: each sample's (each batch's) best of `repeats` (so a preempted pass does not count). `per_round()`: one
    pass over the samples, each once, as a worker meets them: cheap enough (about a second) to run in every round of
    the benchmark, so that each round's ratio meets bounds measured in the same minute, not a run apart (one-process
    figures move ±8 % from run to run on these hosts)."""

    def __init__(self, data: Path, spec: ViewSpec, count: int = 24, repeats: int = 5, batch: int = 8):
        policy = ViewPolicy(0, 0, True)
        _, paths, plan, _ = planned_split(data, "train", ["video", "audio"], policy, 8)
        rows = np.concatenate(plan.batches())[:count]
        self.spec, self.repeats = spec, repeats
        self.pairs = list(zip(planned_samples(paths, plan.offsets, rows), policy.indices(rows).tolist()))
        self.batches = [self.pairs[i:i + batch] for i in range(0, len(self.pairs), batch)]
        self.out = torch.empty((1, spec.frames, spec.crop, spec.crop, 3), dtype=torch.uint8)

    def _parse(self, pair: tuple[dict, int]) -> _Media:  # the worker's parse and FLAC span decode of one view
        return _Media(pair[0], self.spec, ["video", "audio"], 0, [pair[1]])

    def _bare(self, pair: tuple[dict, int]) -> None:
        _bare(pair[0], 0, pair[1], self.spec)

    def _whole(self, batch: list[tuple[dict, int]]) -> None:  # as _PlannedBatches._decoded joins the stages
        medias = [self._parse(pair) for pair in batch]
        for media, mels in zip(medias, log_mels(medias, self.spec)):
            finish_views(media, self.spec, {"video": self.out}, mels)

    def stages(self) -> dict:
        """Every stage, each sample's (batch's) best of `repeats`."""
        return {**self._costs(self._best), "samples": len(self.pairs), "batch": len(self.batches[0]),
                "repeats": self.repeats}

    def per_round(self) -> dict:
        """Every stage, one pass over the samples each (each sample once, as a worker meets them)."""
        return self._costs(self._one_pass)

    def _costs(self, timing) -> dict:
        parsed = {id(pair): self._parse(pair) for pair in self.pairs}

        def decode(pair):
            for _ in parsed[id(pair)].decoded("video"):
                pass

        def kernel(pair) -> float:  # the frames decoded first, off the clock
            media = parsed[id(pair)]
            frames = h264_planes(media.video["video"], media.frames[0], (media.geom.height, media.geom.width))
            start = time.perf_counter()
            frames_to_rgb([frames[t] for t in media.frames[0]], media.views[0].box, media.views[0].flip,
                          self.out[0].numpy())
            return time.perf_counter() - start

        def mel(batch):
            log_mels([parsed[id(pair)] for pair in batch], self.spec)

        with torch_threads(1):  # as in a worker; the rounds' thread count back after
            stages = {"parse_flac": timing(self.pairs, _clocked(self._parse)),
                      "decode": timing(self.pairs, _clocked(decode)), "kernel": timing(self.pairs, kernel),
                      "log_mel": timing(self.batches, _clocked(mel))}
            bare, whole = timing(self.pairs, _clocked(self._bare)), timing(self.batches, _clocked(self._whole))
        return {"ms_per_clip": {"bare": bare, **stages, "worker_clip": whole}, "clip_bound": round(bare / whole, 3),
                "stage_bound": round(bare / sum(stages.values()), 3)}

    def _best(self, units: list, seconds) -> float:  # ms a clip: over the samples (batches), each one's best of repeats
        return self._per_clip(min(seconds(u) for _ in range(self.repeats)) for u in units)

    def _one_pass(self, units: list, seconds) -> float:  # ms a clip over one pass, each sample (batch) once
        return self._per_clip(seconds(u) for u in units)

    def _per_clip(self, seconds) -> float:
        return round(1000 * sum(seconds) / len(self.pairs), 3)


def _clocked(work):
    def seconds(unit) -> float:
        start = time.perf_counter()
        work(unit)
        return time.perf_counter() - start
    return seconds


# read from torchcodec 0.17.0's PyPI wheel (cp311 manylinux): `readelf -d torchcodec/libtorchcodec_core5.so`
TORCHCODEC_LINKS = "libtorch_cuda.so, libc10_cuda.so, libnvrtc.so.13, libcudart.so.13"


def available_peers(cut: bool) -> dict[str, str]:
    """Each peer decoder → "ok" or why it is left out (the import error; crops cut where the view resizes)."""
    status = {"spdl": "ok"}
    try:
        import spdl.io  # noqa: F401
        import spdl.pipeline  # noqa: F401
    except ImportError as err:
        status["spdl"] = f"not installed (pip install -r requirements-bench.txt): {err}"
    if cut:
        status["pyav_threaded"] = "ok"
        try:
            import decord  # noqa: F401
            status["decord"] = "ok"
        except ImportError as err:
            status["decord"] = f"not installed: {err}"
    else:
        status["pyav_threaded"] = status["decord"] = "not measured: cuts a crop, this view resizes a random box"
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
        status["torchcodec"] = "imports, but not measured here"
    except (ImportError, OSError, RuntimeError) as err:
        status["torchcodec"] = (f"not measured ({str(err).splitlines()[-1][:160]}): its PyPI wheel links CUDA torch "
                                f"({TORCHCODEC_LINKS}), so it does not load beside the pinned CPU build of torch; "
                                "a GPU-side peer")
    return status


def _spdl_filter(v, spec: ViewSpec) -> str:
    """FFmpeg's filter graph for a view: the box cut from the yuv420p frame (at any offset), scaled to the crop
    (bilinear, area-aware when shrinking, chroma interpolated to full size as umt's kernel does), flipped, RGB."""
    y0, x0, h, w = v.box
    return (f"crop=w={w}:h={h}:x={x0}:y={y0}:exact=1,scale=w={spec.crop}:h={spec.crop}:flags=bilinear+full_chroma_int"
            + (",hflip" if v.flip else "") + ",format=pix_fmts=rgb24")


def spdl_view(sample: dict, spec: ViewSpec, policy: ViewPolicy) -> dict:
    """One raw tar sample's training view decoded by SPDL: the view's frames through its filter graph, its audio
    window decoded and trimmed by FFmpeg, then umt's log-mel."""
    import spdl.io
    meta = json.loads(sample["json"])
    v = make_view(policy.seed, meta["row"], policy.index(meta["row"]), spec, Geometry.of(meta))
    packets = spdl.io.demux_video(sample[member("video")])
    frames = spdl.io.sample_decode_video(packets, [v.t0 + k * spec.stride for k in range(spec.frames)],
                                         filter_desc=_spdl_filter(v, spec))
    video = torch.from_numpy(spdl.io.to_numpy(spdl.io.convert_frames(frames)))
    rate, window = meta["sample_rate"], audio_window(spec, meta["sample_rate"])
    packets = spdl.io.demux_audio(sample[member("audio")], timestamp=(v.audio_offset / rate,
                                                                      (v.audio_offset + window) / rate))
    trim = spdl.io.get_audio_filter_desc(timestamp=packets.timestamp, sample_fmt="flt")
    wave = spdl.io.to_numpy(spdl.io.convert_frames(spdl.io.decode_packets(packets, filter_desc=trim)))[:, 0]
    if len(wave) < window:
        raise ValueError(f"SPDL decoded {len(wave)} audio samples of sample {meta['key']}, the view needs {window}")
    return {"label": meta["label"], "video": video,
            "audio": log_mel(torch.from_numpy(wave[:window].copy()), rate, spec.mel_bins).unsqueeze(0)}


def _spdl_collate(items: list[dict]) -> dict:
    return {"label": torch.tensor([it["label"] for it in items]),
            **{k: torch.stack([it[k] for it in items]) for k in ("video", "audio")}}


def spdl_batches(data: Path, spec: ViewSpec, policy: ViewPolicy, batch_size: int, threads: int):
    """One epoch of the same samples and views as umt's loader through SPDL's pipeline: the raw samples in the
    plan's order (umt's shard streaming), decoded on SPDL's thread pool, batched, collated."""
    from spdl.pipeline import PipelineBuilder
    _, paths, plan, _ = planned_split(data, "train", ["video", "audio"], policy, batch_size)
    samples = planned_samples(paths, plan.offsets, np.concatenate(plan.batches()))
    pipeline = (PipelineBuilder().add_source(samples)
                .pipe(partial(spdl_view, spec=spec, policy=policy), concurrency=threads, output_order="input")
                .aggregate(batch_size).pipe(_spdl_collate).add_sink(3)
                .build(num_threads=threads))
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread per concurrent decode, as umt's workers
    try:
        with pipeline.auto_stop():
            yield from pipeline.get_iterator()
    finally:
        torch.set_num_threads(torch_threads)


def spdl_views_vs_umt(data: Path, spec: ViewSpec, count: int = 4) -> dict:
    """How far SPDL's views are from umt's on the first `count` samples (same frames, boxes, windows):
    mean and largest absolute pixel difference, largest log-mel difference."""
    policy = ViewPolicy(0, 0, True)
    _, paths, plan, _ = planned_split(data, "train", ["video", "audio"], policy, count)
    video, audio = [], []
    for sample in planned_samples(paths, plan.offsets, np.concatenate(plan.batches())[:count]):
        theirs = spdl_view(sample, spec, policy)
        ours = decode_views(sample, spec, ["video", "audio"], policy.seed,
                            [policy.index(json.loads(sample["json"])["row"])])[0]
        video.append((theirs["video"].int() - ours["video"].int()).abs().float())
        audio.append(float((theirs["audio"] - ours["audio"]).abs().max()))
    diffs = torch.cat([d.flatten() for d in video])
    return {"samples": count, "video_mean_abs_diff": round(float(diffs.mean()), 2),
            "video_max_abs_diff": int(diffs.max()), "audio_log_mel_max_abs_diff": max(audio)}


def timed_pass(loader) -> float:
    start, clips = time.perf_counter(), 0
    for batch in loader:
        clips += len(batch["label"])
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # batches finished on the GPU: their work is counted
    return clips / (time.perf_counter() - start)


def write_images(root: Path, count: int) -> Path:
    """`count` noisy 80x64 pictures of 4 classes and the pack-images table listing them."""
    rng = np.random.default_rng(0)
    (root / "pics").mkdir(parents=True)
    lines = ["label,split,front"]
    for i in range(count):
        pixels = np.clip(rng.normal(64 * (i % 4), 40, (64, 80, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "pics" / f"{i}.jpg", quality=90)
        lines.append(f"{i % 4},train,pics/{i}.jpg")
    (root / "table.csv").write_text("\n".join(lines) + "\n")
    return root / "table.csv"


def image_bench(args: argparse.Namespace) -> None:
    """Samples/s of the ffcv image loader's training epochs (64 px, crop 56) with one thread."""
    from umt.loaders.cli import main as data_main
    work = Path(tempfile.mkdtemp(prefix="umt-image-bench-"))
    data_main(["pack-images", str(write_images(work, args.images_count)), str(work / "packed"), "--size", "64",
               "--workers", "1"])
    spec = ViewSpec(frames=1, crop=56)
    runs = []
    for r in range(args.repeats + 1):  # the first pass compiles ffcv's pipeline: not counted
        batches = iter(make_loader(work / "packed", "train", spec=spec, modalities=["front"],
                                   policy=ViewPolicy(0, r, True), batch_size=256, num_workers=1))
        next(batches)  # the clock starts at the first batch: ffcv compiles its pipeline once per epoch
        start, samples = time.perf_counter(), 0
        for batch in batches:
            samples += len(batch["front"])
        rate = samples / (time.perf_counter() - start)
        print(f"pass {r}: {rate:.0f} samples/s" + (" (warm-up)" if r == 0 else ""))
        runs.append(rate)
    write_json(args.out or "benchmarks/results/loader_images.json", {"image_samples_per_s": median(runs[1:]), "runs": [round(x) for x in runs[1:]],
                          "warmup_samples_per_s": round(runs[0]), "affinity": sorted(os.sched_getaffinity(0)),
                          "settings": {**vars(args), "size": 64, "crop": 56, "batch_size": 256, "threads": 1}})


def write_sources(folder: Path, count: int, setting: Setting, workers: int) -> list[str]:
    """`count` source clips of `setting`, encoded in `workers` processes."""
    folder.mkdir(parents=True)
    files = [str(folder / f"clip{i:04d}.mp4") for i in range(count)]
    with ProcessPoolExecutor(max(1, workers)) as pool:
        list(pool.map(write_source, map(Path, files), range(count), [setting.source_size] * count,
                      [setting.seconds] * count, [setting.source_fps] * count, [setting.noise] * count))
    return files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="default: benchmarks/results/loader_cpu[_realistic].json")
    p.add_argument("--realistic", action="store_true", help="10 s clips at 256 px short side, 16 frames at 224 px, "
                   "10 s audio windows (the settings of real video training) instead of the tiny default clips")
    p.add_argument("--images", action="store_true", help="measure the ffcv image loader instead")
    p.add_argument("--images-count", type=int, default=8192, help="images in the --images set")
    p.add_argument("--clips", type=int, default=None, help="packed clips (default 64; 96 with --realistic); at most "
                   f"{MAX_SOURCES} distinct sources, each packed again under another key beyond that")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=None, help="default 16; 8 with --realistic")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.images:
        torch.set_num_threads(1)
        return image_bench(args)
    name = "realistic" if args.realistic else "default"
    setting, clips_count = SETTINGS[name], args.clips or (96 if args.realistic else 64)
    args.batch_size = args.batch_size or (8 if args.realistic else 16)
    out = args.out or f"benchmarks/results/loader_cpu{'_realistic' if args.realistic else ''}.json"
    work = Path(tempfile.mkdtemp(prefix="umt-loader-bench-"))
    sources = write_sources(work / "src", min(clips_count, MAX_SOURCES), setting, args.workers)
    files = [sources[i % len(sources)] for i in range(clips_count)]
    clips = [ClipInput(f"clip{i:04d}.mp4", f, f"class{i % 4}", "train") for i, f in enumerate(files)]
    start = time.perf_counter()
    pack(clips, work / "packed", setting.packed, shard_size=max(1, clips_count // 4), workers=args.workers,
         progress=False)
    pack_s = time.perf_counter() - start
    packed_bytes = sum(f.stat().st_size for f in (work / "packed").glob("*.tar"))

    naive = torch.utils.data.DataLoader(NaiveClips(files, setting), batch_size=args.batch_size, shuffle=True,
                                        num_workers=args.workers, generator=torch.Generator().manual_seed(0))
    load_kernels()  # numba's one-off load (seconds under load) once per process, as a training run pays it
    gpu = dali_available()  # with a GPU and DALI, the dali backend is measured in the same rounds
    peers = available_peers(setting.spec.crop_mode == "cut")
    variants = ["limit", *[p for p in DECODERS if p != "limit" and peers.get(p) == "ok"]]
    spdl = peers["spdl"] == "ok"
    agreement = spdl_views_vs_umt(work / "packed", setting.spec) if spdl else None
    cuda = torch.cuda.is_available()
    finishing = ["umt_shipped", *(["umt_gpu_finished"] if cuda else [])]
    rates: dict[str, list[float]] = {k: [] for k in ("umt", *finishing, "naive", *variants, *(["spdl"] if spdl else []),
                                                     *(["dali"] if gpu else []))}
    spec = setting.spec
    clock, per_round = StageClock(work / "packed", spec, batch=args.batch_size), []
    for r in range(args.repeats):
        policy = ViewPolicy(0, r, True)

        def umt(backend: str, finish_on: torch.device | None = None, shipped: bool = False):
            return umt_pass(work / "packed", spec, policy, args.batch_size, args.workers, backend, finish_on, shipped)
        runs = [("umt", umt("cpu")), ("umt_shipped", umt("cpu", torch.device("cpu"), shipped=True)),
                *([("umt_gpu_finished", umt("cpu", torch.device("cuda")))] if cuda else []),
                ("naive", lambda: timed_pass(naive)), *([("dali", umt("dali"))] if gpu else []),
                *([("spdl", lambda: timed_pass(spdl_batches(work / "packed", spec, policy, args.batch_size,
                                                            args.workers)))] if spdl else []),
                *[(v, lambda v=v: variant_pass(work / "packed", DECODERS[v], spec, policy, args.batch_size,
                                               args.workers)) for v in variants]]
        for key, fn in rotated(runs, r):
            rates[key].append(fn())
        per_round.append(clock.per_round())  # this round's bounds, in this process
        print(f"repeat {r}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()) + " clips/s", flush=True)
    ours, theirs, limit = rates["umt"], rates["naive"], rates["limit"]
    stages = clock.stages()
    ratio = round(median(ours) / median(limit), 3)

    def below(bound: str) -> dict:  # each round's bound minus that round's ratio
        return spread([b[bound] - u / l for b, u, l in zip(per_round, ours, limit)])
    write_json(out, {"clips_per_s": median(ours), "naive_clips_per_s": median(theirs),
                     "ratio_vs_naive": round(median(ours) / median(theirs), 2),
                     "limit_clips_per_s": median(limit), "ratio_vs_limit": ratio,
                     "ratio_vs_limit_per_repeat": ratio_spread(ours, limit),
                     "stage_costs": stages, "clip_bound_minus_ratio": round(stages["clip_bound"] - ratio, 3),
                     "per_round_stage_costs": per_round,
                     "per_round_clip_bound_minus_ratio": below("clip_bound"),
                     "per_round_stage_bound_minus_ratio": below("stage_bound"),
                     "shipped_clips_per_s": median(rates["umt_shipped"]),
                     "shipped_ratio_vs_limit": round(median(rates["umt_shipped"]) / median(limit), 3),
                     "shipped_ratio_vs_limit_per_repeat": ratio_spread(rates["umt_shipped"], limit),
                     **({"gpu_finished_clips_per_s": median(rates["umt_gpu_finished"]),
                         "gpu_finished_ratio_vs_limit": round(median(rates["umt_gpu_finished"]) / median(limit), 3)}
                        if cuda else {}),
                     "peer_clips_per_s": {p: median(rates[p]) for p in [*variants, *(["spdl"] if spdl else [])]
                                          if p != "limit"},
                     **({"ratio_vs_spdl": round(median(ours) / median(rates["spdl"]), 3),
                         "ratio_vs_spdl_per_repeat": ratio_spread(ours, rates["spdl"]),
                         "spdl_ratio_vs_limit": round(median(rates["spdl"]) / median(limit), 3),
                         "spdl_views_vs_umt": agreement, "spdl_version": version("spdl")} if spdl else {}),
                     "peer_status": peers,
                     "runs": {k: [round(x, 1) for x in v] for k, v in rates.items()},
                     "pack_seconds": round(pack_s, 1), "packed_kbit_per_s": round(
                         packed_bytes * 8 / 1000 / (clips_count * setting.seconds)), "backend": "cpu",
                     **({"dali_clips_per_s": median(rates["dali"]),
                         "dali_ratio_vs_naive": round(median(rates["dali"]) / median(theirs), 2)} if gpu else {}),
                     "settings": {**vars(args), "clips": clips_count, "setting": name, **setting.to_dict()}})


if __name__ == "__main__":
    main()
