"""The `dali` decode backend: H.264 through NVDEC, resized crop, flip and log-mel on the GPU.

The `cpu` backend (loaders/loading/pipeline.py) decodes with PyAV in DataLoader workers. On a GPU
machine this backend moves the pixel and audio work onto the GPU; the Python side only reads tar
samples, one stream per rank in the epoch plan's order (loaders/loading/plan.py: shuffled shards and
samples, like the cpu backend's), and computes each sample's view with the same `make_view` and
view policy as the cpu backend, so both yield the same batches and a teacher cache built with one
serves training with the other.

DALI decodes FLAC on the CPU exactly as PyAV does, but has no CPU H.264 decoder:
video needs a CUDA GPU. With `device_id=None` the same pipeline runs on the CPU, which is how the
tests check it without a GPU (on shards whose video is VP9, which DALI decodes on the CPU).
"""
from __future__ import annotations

import itertools
import json
from collections import deque
from typing import Iterator, Sequence

import numpy as np
import torch

from .audio import EPS, HOP, N_FFT
from .bad import BadSamples, Skipped, Streak, filled
from ..errors import UserError
from ..stored.media import MediaError
from .plan import EpochPlan, PlannedLoader
from ..stored.shards import MEDIA_MEMBERS, DataError
from ..stored.integrity import damaged_samples
from .stream import Unreadable, planned_samples
from ..stored.views import Geometry, ViewPolicy, ViewSpec, audio_window, make_view

try:
    from nvidia.dali import Pipeline, fn, types
    from nvidia.dali import math as dali_math
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type
    from nvidia.dali.tensors import TensorListGPU
except ImportError:  # the cpu backend needs no DALI; choose_backend says what is missing
    Pipeline = fn = types = dali_math = feed_ndarray = to_torch_type = TensorListGPU = None
else:
    DTYPES = {"mp4": types.UINT8, "flac": types.UINT8, "params": types.INT32, "meta": types.INT64}

INSTALL = "pip install nvidia-dali-cuda130==2.4.0"
ENCODED = {m: MEDIA_MEMBERS[m] for m in ("video", "audio")}   # what DALI decodes, in pipeline output order


def _missing() -> str | None:
    """Why the dali backend cannot run on this machine, or None when it can."""
    if Pipeline is None:
        return f"DALI is not installed ({INSTALL})"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible: DALI decodes H.264 only on the GPU (NVDEC), never on the CPU"
    return None


def dali_available() -> bool:
    """DALI importable and a CUDA GPU present: what the GPU video path needs."""
    return _missing() is None


def choose_backend(requested: str) -> str:
    """The decode backend to use: "auto" picks dali where it can run, else cpu."""
    if requested == "auto":
        return "dali" if dali_available() else "cpu"
    if requested == "dali" and not dali_available():
        raise UserError(f"the dali backend cannot run here: {_missing()}; use the cpu backend")
    if requested not in ("cpu", "dali"):
        raise UserError(f"unknown decode backend {requested!r}: choose auto, cpu or dali")
    return requested


def check_decodable(modalities: Sequence[str]) -> None:
    """A UserError unless this backend decodes every one of `modalities`."""
    if set(modalities) - set(ENCODED):
        raise UserError(f"the dali backend decodes {sorted(ENCODED)}, not {sorted(set(modalities) - set(ENCODED))}")


def dali_log_mel(waveform, sample_rate: int, n_mels: int):
    """DALI graph of loaders.audio.log_mel: float32 waveform [S] → log-mel [n_mels, 1 + S // HOP].

    Runs on the device `waveform` lives on. torch's periodic Hann window is passed explicitly:
    DALI's built-in Hann differs from it (measured: up to 0.07 apart in log-mel).
    """
    power = fn.spectrogram(waveform, nfft=N_FFT, window_length=N_FFT, window_step=HOP,
                           window_fn=torch.hann_window(N_FFT).tolist(), center_windows=True,
                           reflect_padding=True, power=2, layout="ft")
    mel = fn.mel_filter_bank(power, sample_rate=sample_rate, nfilter=n_mels, freq_low=0.0,
                             freq_high=sample_rate / 2, mel_formula="htk", normalize=False)
    return dali_math.log(mel + EPS)


def dali_view_video(encoded, params, spec: ViewSpec, device: str):
    """Each sample's view of its clip: T frames from t0 at the stride, the box resized to the crop, the flip.

    `params` holds View.as_tuple() per sample; `device` is the decoder's ("mixed": NVDEC). The box is
    resized as the cpu kernel does (loaders/loading/kernels.py): linear, antialiased when shrinking,
    on pixel centres. Frames come out RGB [T, crop, crop, 3] uint8, like the cpu backend's.
    """
    frames = fn.decoders.video(encoded, device=device, start_frame=params[0], sequence_length=spec.frames,
                               stride=spec.stride, pad_mode="none")
    return dali_box_view(frames, params, spec.crop)


def dali_box_view(frames, params, crop: int):
    """Frames [T, H, W, C] → the view's box (params[1:5]: y0, x0, h, w) resized to crop x crop, flipped if params[5]."""
    corner, size = fn.cast(params[1:3], dtype=types.FLOAT), fn.cast(params[3:5], dtype=types.FLOAT)
    view = fn.resize(frames, roi_start=corner, roi_end=corner + size, roi_relative=False,
                     size=[crop, crop], interp_type=types.INTERP_LINEAR, antialias=True)
    return fn.flip(view, horizontal=params[5], vertical=0)


def dali_view_audio(encoded, params, spec: ViewSpec, sample_rate: int, device: str):
    """Each sample's log-mel view: FLAC decoded and windowed on the CPU, the spectrogram on `device`."""
    wave, _ = fn.decoders.audio(encoded, dtype=types.FLOAT, downmix=True)
    piece = fn.slice(wave, start=params[6:7], shape=[audio_window(spec, sample_rate)], axes=[0])
    return dali_log_mel(piece.gpu() if device == "gpu" else piece, sample_rate, spec.mel_bins)


def view_samples(paths: Sequence[str], plan: EpochPlan, spec: ViewSpec, policy: ViewPolicy,
                 sample_rate: int | None = None, damaged: Sequence[dict[str, str]] | None = None
                 ) -> Iterator[dict[str, np.ndarray] | Skipped]:
    """The plan's tar samples in its order, as the pipeline's inputs.

    Each holds the encoded "mp4" and "flac" bytes, the view "params" int32 [7] from the cpu
    backend's own make_view and "meta" (label, row, view index) int64 [3]. A sample whose audio is
    not at `sample_rate` (the rate the spectrogram graph was built for) is an error. With `damaged`
    (per shard: key → reason, from the integrity pass), a sample that is unreadable, or named there,
    comes as its `Skipped` record instead (the `skip` policy); without, it is an error.
    """
    rows, views = plan.rows, policy.indices(plan.rows)
    tolerate = damaged is not None
    for shard, sample, index in zip(plan.shards().tolist(), planned_samples(paths, plan.offsets, rows, tolerate),
                                    views.tolist()):
        if isinstance(sample, Unreadable):
            yield Skipped.of(sample, sample.reason)
            continue
        where = (sample.get("__url__", "?"), sample.get("__key__", "?"))
        try:
            if tolerate and where[1] in damaged[shard]:
                raise MediaError(damaged[shard][where[1]])
            meta = json.loads(sample["json"])
            geom = Geometry.of(meta)
            view = make_view(policy.seed, meta["row"], index, spec, geom)
        except (KeyError, ValueError) as err:  # MediaError is a ValueError
            if tolerate:
                yield Skipped.of(sample, err)
                continue
            raise MediaError(f"{where[0]} sample {where[1]}: {err}") from err
        if sample_rate is not None and geom.sample_rate != sample_rate:
            raise DataError(f"{sample['__key__']}: audio at {geom.sample_rate} Hz, the shard set says {sample_rate} Hz")
        yield {**{ext: np.frombuffer(sample.get(ext, b""), np.uint8) for ext in ENCODED.values()},
               "params": np.array(view.as_tuple(), np.int32),
               "meta": np.array([meta["label"], meta["row"], index], np.int64)}


def _to_torch(batch) -> torch.Tensor:
    """A DALI output batch as one torch tensor on its device: a copy, since DALI reuses its buffers."""
    if not batch.is_dense_tensor():
        raise MediaError(f"samples of one batch decoded to different shapes {batch.shape()}: a clip is "
                         "shorter than its JSON says")
    dense = batch.as_tensor()
    on_gpu = isinstance(batch, TensorListGPU)
    device = torch.device("cuda", batch.device_id()) if on_gpu else torch.device("cpu")
    out = torch.empty(dense.shape(), dtype=to_torch_type[dense.dtype], device=device)
    feed_ndarray(dense, out, torch.cuda.current_stream(device) if on_gpu else None)
    return out


class DaliLoader(PlannedLoader):
    """One epoch of one rank's batches, decoded by DALI; the pipeline is built when iteration starts.

    Batches hold video uint8 [B, T, crop, crop, 3] and audio float32 [B, 1, mels, frames] on the
    GPU, label, row, view int64 [B] and params int32 [B, 7] on the CPU. `device_id=None` runs
    everything on the CPU, where DALI decodes VP8, VP9 and MJPEG but not H.264: for tests.
    DALI's decoders cannot say which sample of a batch failed, so under the `skip` policy an
    integrity pass first checks the sha256 of each shard the plan reads (once per process) and
    decodes the samples of a changed one with PyAV; the damaged samples it names, and unreadable
    ones, are replaced by the rule of loaders/loading/bad.py before DALI sees them.
    """

    def __init__(self, paths: Sequence[str], plan: EpochPlan, policy: ViewPolicy, spec: ViewSpec,
                 modalities: Sequence[str], sample_rate: int | None, device_id: int | None, num_threads: int,
                 entries: Sequence[dict] = (), bad: BadSamples = BadSamples()):
        check_decodable(modalities)
        super().__init__(plan, policy)
        self.paths, self.spec, self.modalities = list(paths), spec, tuple(modalities)
        self.sample_rate, self.device_id, self.num_threads = sample_rate, device_id, num_threads
        self.entries, self.bad, self.skipped = list(entries), bad, deque()

    def inputs(self) -> Iterator[dict[str, np.ndarray] | Skipped]:
        """The pipeline's per-sample inputs, in the plan's order (names of damaged samples under `skip`)."""
        damaged = None
        if self.bad.skip:
            members = tuple((m, ENCODED[m]) for m in self.modalities)
            needed = set(self.plan.shards().tolist())
            damaged = [damaged_samples(path, e["name"], e["count"], e["offset"], e["sha256"], members)
                       if i in needed else {} for i, (path, e) in enumerate(zip(self.paths, self.entries))]
        return view_samples(self.paths, self.plan, self.spec, self.policy, self.sample_rate, damaged)

    def _batches(self, keys: Sequence[str]) -> Iterator[tuple[list, ...]]:
        """The plan's batches in DALI's batch format (one list per input named in `keys`); each
        batch's skipped samples go to `self.skipped`, in order, for __iter__ to attach."""
        samples, streak = self.inputs(), Streak(self.bad)
        for _ in range(len(self)):
            got = list(itertools.islice(samples, self.plan.batch_size))
            names = [s for s in got if isinstance(s, Skipped)]
            for s in got:
                if isinstance(s, Skipped):
                    streak.damaged(s)
                else:
                    streak.good()
            batch = filled([s for s in got if not isinstance(s, Skipped)], names)
            self.skipped.append(names)
            yield tuple([sample[key] for sample in batch] for key in keys)

    def _pipeline(self) -> Pipeline:
        keys = ["params", "meta"] + [ENCODED[m] for m in ENCODED if m in self.modalities]
        pipe = Pipeline(batch_size=self.plan.batch_size, num_threads=self.num_threads, device_id=self.device_id)
        with pipe:
            inputs = dict(zip(keys, fn.external_source(
                source=self._batches(keys), num_outputs=len(keys),
                batch=True, dtype=[DTYPES[k] for k in keys], ndim=1)))
            params, outputs = inputs["params"], [inputs["params"], inputs["meta"]]
            on_cpu = self.device_id is None
            if "mp4" in inputs:
                outputs.append(dali_view_video(inputs["mp4"], params, self.spec, "cpu" if on_cpu else "mixed"))
            if "flac" in inputs:
                outputs.append(dali_view_audio(inputs["flac"], params, self.spec, self.sample_rate,
                                               "cpu" if on_cpu else "gpu"))
            pipe.set_outputs(*outputs)
        pipe.build()
        return pipe

    def __iter__(self) -> Iterator[dict]:
        if not len(self):
            return
        self.skipped.clear()
        pipe = self._pipeline()
        for _ in range(len(self)):
            params, meta, *media = map(_to_torch, pipe.run())
            batch = {"label": meta[:, 0], "row": meta[:, 1], "view": meta[:, 2], "params": params}
            batch.update(zip([m for m in ENCODED if m in self.modalities], media))
            if "audio" in batch:
                batch["audio"] = batch["audio"].unsqueeze(1)
            if self.bad.skip:
                batch["bad_samples"] = self.skipped.popleft()
            yield batch
