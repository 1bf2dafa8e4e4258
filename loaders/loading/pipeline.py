"""The `cpu` backend: WebDataset shards → PyAV decode → view box resized to the crop, flip → log-mel → batches.

The epoch plan (loaders/loading/plan.py) fixes this rank's batches. DataLoader workers take them in turn
(batch b → worker b mod W) and torch's DataLoader returns its workers' outputs round-robin, so the
batches come out in plan order whatever the worker count, and a resume starts at any batch
exactly. Each worker streams the shards its batches touch and decodes only its own samples; a
shard spanning k batches is thus streamed by up to min(W, k) workers (reading, not decoding, is
repeated). Video leaves the workers as uint8 (4x less inter-process traffic than float);
normalisation happens on the model's device.
"""
from __future__ import annotations

import io
import json
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import webdataset as wds

from .audio import log_mel
from .bad import BadSamples, Streak, filled
from ..errors import UserError
from .kernels import load as load_kernels, resize_to_rgb
from ..stored.media import MediaError, decode_flac_span, decode_h264
from .plan import EpochPlan, PlannedLoader
from ..stored.shards import MEDIA_MEMBERS, DataError, member
from .stream import Unreadable, planned_samples
from ..stored.views import VIEW_FIELDS, Geometry, ViewPolicy, ViewSpec, audio_window, make_view



def decode_views(sample: dict, spec: ViewSpec, modalities: Sequence[str], seed: int,
                 view_indices: Sequence[int]) -> list[dict]:
    """Decode one raw tar sample once and cut every requested view from it.

    Optical flow gets the video's box, resized alike (its values are not rescaled, as in TSN and
    MMAction2); a horizontal flip also negates its x component (red: 255 - red). Vector views (`<key>.<name>.npy`, from `umt-data pack-arrays`) have no augmentation: every view is the
    vector itself and its params are zeros.
    """
    where = f"{sample.get('__url__', '?')} sample {sample.get('__key__', '?')}"
    try:
        meta = json.loads(sample["json"])
        media = [m for m in modalities if m in MEDIA_MEMBERS]
        vectors = {m: torch.from_numpy(np.load(io.BytesIO(sample[member(m)]), allow_pickle=False))
                   for m in modalities if m not in MEDIA_MEMBERS}
        if media:
            geom = Geometry.of(meta)
            views = [make_view(seed, meta["row"], v, spec, geom) for v in view_indices]
            span = (spec.frames - 1) * spec.stride + 1
            first = min(v.t0 for v in views)
            clips = {m: decode_h264(sample[member(m)], first, max(v.t0 for v in views) + span)
                     for m in media if m != "audio"}
            wave, audio_start, total = None, 0, None
            if "audio" in media:  # only the span the views' windows cover
                window = audio_window(spec, geom.sample_rate)
                audio_start = min(v.audio_offset for v in views)
                wave, total = decode_flac_span(sample[member("audio")], audio_start,
                                               max(v.audio_offset for v in views) + window)
            _check_geometry(clips, total, geom)
        else:
            views, clips, wave = [None] * len(view_indices), {}, None
    except KeyError as err:
        raise MediaError(f"{where}: no member or field {err} (does the shard set have modalities "
                         f"{list(modalities)}?)") from err
    except (ValueError, MediaError) as err:
        raise MediaError(f"{where}: {err}") from err
    if wave is not None:  # every view's window through one STFT call
        pieces = torch.from_numpy(np.stack([wave[v.audio_offset - audio_start:v.audio_offset - audio_start + window]
                                            for v in views]))
        mels = log_mel(pieces, geom.sample_rate, spec.mel_bins).unsqueeze(1)
    out = []
    for i, (index, view) in enumerate(zip(view_indices, views)):
        params = view.as_tuple() if view else (0,) * len(VIEW_FIELDS)
        item = {"label": meta["label"], "row": meta["row"], "view": index,
                "params": torch.tensor(params, dtype=torch.int32), **vectors}
        for m, frames in clips.items():
            clip = resize_to_rgb(frames[view.t0 - first:view.t0 - first + span:spec.stride], view.box, spec.crop,
                                 view.flip)
            if m == "flow" and view.flip:
                clip[..., 0] = 255 - clip[..., 0]
            item[m] = torch.from_numpy(clip)
        if wave is not None:
            item["audio"] = mels[i]
        out.append(item)
    return out


def _check_geometry(clips: dict[str, np.ndarray], audio_samples: int | None, geom: Geometry) -> None:
    """Decoded media must be as large as the JSON says (audio: its FLAC header), or a view would read past its end."""
    for m, planes in clips.items():
        if planes.shape[1:] != (geom.height * 3 // 2, geom.width):
            raise MediaError(f"{m} decodes to {planes.shape[2]}x{planes.shape[1] * 2 // 3} frames, the json says "
                             f"{geom.width}x{geom.height}")
    if audio_samples is not None and audio_samples < geom.audio_samples:
        raise MediaError(f"audio holds {audio_samples} samples, the json says {geom.audio_samples}")


def worker_init(_: int) -> None:
    torch.set_num_threads(1)


def collate(items: list[dict]) -> dict:
    """Stack tensors, tensorise numbers, list strings; drop webdataset's bookkeeping keys (__key__)."""
    out = {}
    for key, first in items[0].items():
        if key.startswith("__"):
            continue
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if torch.is_tensor(first) else values if isinstance(first, str) else torch.tensor(values)
    return out


FAILED = "__failed__"  # a worker's batch that carries its error message instead of samples


class _PlannedBatches(torch.utils.data.IterableDataset):
    """Worker w of W: batches w, w + W, ... of the plan, each decoded and collated in the worker.

    Under the `skip` policy each batch also carries `bad_samples`, a list of "shard<TAB>key<TAB>reason"
    of every sample skipped in it (the trainer pops it before the batch goes to the device).
    """

    def __init__(self, paths: Sequence[str], plan: EpochPlan, policy: ViewPolicy, spec: ViewSpec,
                 modalities: tuple[str, ...], bad: BadSamples):
        self.paths, self.plan, self.policy, self.spec, self.modalities = list(paths), plan, policy, spec, modalities
        self.bad = bad

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        batches = self.plan.batches()[worker::workers]
        if not batches:
            return
        rows = np.concatenate(batches)
        views = iter(self.policy.indices(rows).tolist())
        samples = planned_samples(self.paths, self.plan.offsets, rows, tolerate=self.bad.skip)
        try:
            yield from self._decoded(batches, samples, views)
        except UserError as err:  # to the main process as a message, not as a worker's traceback
            yield {FAILED: str(err)}

    def _decoded(self, batches: list[np.ndarray], samples: Iterator, views: Iterator[int]) -> Iterator[dict]:
        streak = Streak(self.bad)
        for batch in batches:
            items, skipped = [], []
            for _ in range(len(batch)):
                sample, view = next(samples), next(views)
                try:
                    items.append(self._decode(sample, view))
                    streak.good()
                except (MediaError, DataError) as err:
                    if not self.bad.skip:
                        raise
                    skipped.append(_name(sample, err))
                    streak.damaged(skipped[-1])
            yield {**collate(filled(items, skipped)), **({"bad_samples": skipped} if self.bad.skip else {})}

    def _decode(self, sample: dict | Unreadable, view: int) -> dict:
        if isinstance(sample, Unreadable):
            raise DataError(f"{sample.url} sample {sample.key}: {sample.reason}")
        return decode_views(sample, self.spec, self.modalities, self.policy.seed, [view])[0]


def _name(sample: dict | Unreadable, err: Exception) -> str:
    """shard<TAB>key<TAB>reason of a skipped sample."""
    if isinstance(sample, Unreadable):
        return f"{sample.url}\t{sample.key}\t{sample.reason}"
    url, key = sample.get("__url__", "?"), sample.get("__key__", "?")
    return f"{url}\t{key}\t{str(err).removeprefix(f'{url} sample {key}: ')}"


class CpuLoader(PlannedLoader):
    """One epoch of one rank's batches, decoded with PyAV in `num_workers` DataLoader workers."""

    def __init__(self, paths: Sequence[str], plan: EpochPlan, policy: ViewPolicy, spec: ViewSpec,
                 modalities: Sequence[str], num_workers: int, bad: BadSamples = BadSamples()):
        super().__init__(plan, policy)
        self.batches = _PlannedBatches(paths, plan, policy, spec, tuple(modalities), bad)
        self.num_workers = max(0, min(num_workers, len(plan)))

    def __iter__(self) -> Iterator[dict]:
        load_kernels()  # before the workers fork
        for batch in torch.utils.data.DataLoader(self.batches, batch_size=None, num_workers=self.num_workers,
                                                 worker_init_fn=worker_init):
            if FAILED in batch:
                raise MediaError(batch[FAILED])
            yield batch


def shard_loader(paths: list[str], decode: Callable[[dict], dict], batcher: Callable,
                 num_workers: int) -> torch.utils.data.DataLoader:
    """Whole shards dealt to workers → tar samples in stored order → decode → batcher (the cache
    builder's pass: every sample of its shards, batches that follow shard boundaries)."""
    stages = [wds.SimpleShardList(paths), wds.split_by_worker, wds.tarfile_to_samples(), wds.map(decode), batcher]
    return torch.utils.data.DataLoader(wds.DataPipeline(*stages), batch_size=None,
                                       num_workers=min(num_workers, len(paths)), worker_init_fn=worker_init)
