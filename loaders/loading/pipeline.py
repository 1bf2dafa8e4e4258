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
import multiprocessing
import weakref
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import webdataset as wds

from .audio import log_mel
from .bad import BadSamples, Streak, filled
from ..errors import UserError
from .kernels import frames_to_rgb, load as load_kernels
from ..stored.media import MediaError, decode_flac_span, h264_planes
from .plan import EpochPlan, PlannedLoader
from ..stored.shards import MEDIA_MEMBERS, DataError, member
from .stream import Unreadable, planned_samples
from ..stored.views import VIEW_FIELDS, Geometry, ViewPolicy, ViewSpec, audio_window, make_view



def decode_views(sample: dict, spec: ViewSpec, modalities: Sequence[str], seed: int,
                 view_indices: Sequence[int], out: dict[str, torch.Tensor] | None = None) -> list[dict]:
    """Decode one raw tar sample once and cut every requested view from it.

    Only the frames the views use are read out of the decoder, in place (media.h264_planes), and each
    view's box is resized and converted straight into `out[m][i]` when given (the batch a worker ships:
    uint8 [len(view_indices), T, crop, crop, 3]), else into a new tensor.
    Optical flow gets the video's box, resized alike (its values are not rescaled, as in TSN and
    MMAction2); a horizontal flip also negates its x component (red: 255 - red). Vector views
    (`<key>.<name>.npy`, from `umt-data pack-arrays`) have no augmentation: every view is the
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
            frames = [[v.t0 + k * spec.stride for k in range(spec.frames)] for v in views]
            planes = {m: h264_planes(sample[member(m)], sorted({t for f in frames for t in f}),
                                     (geom.height, geom.width)) for m in media if m != "audio"}
            wave, audio_start = None, 0
            if "audio" in media:  # only the span the views' windows cover
                window = audio_window(spec, geom.sample_rate)
                audio_start = min(v.audio_offset for v in views)
                wave, total = decode_flac_span(sample[member("audio")], audio_start,
                                               max(v.audio_offset for v in views) + window)
                if total is not None and total < geom.audio_samples:  # a view could read past its end
                    raise MediaError(f"audio holds {total} samples, the json says {geom.audio_samples}")
        else:
            views, planes, wave = [None] * len(view_indices), {}, None
    except KeyError as err:
        raise MediaError(f"{where}: no member or field {err} (does the shard set have modalities "
                         f"{list(modalities)}?)") from err
    except (ValueError, MediaError) as err:
        raise MediaError(f"{where}: {err}") from err
    if wave is not None:  # every view's window through one STFT call
        pieces = torch.from_numpy(np.stack([wave[v.audio_offset - audio_start:v.audio_offset - audio_start + window]
                                            for v in views]))
        mels = log_mel(pieces, geom.sample_rate, spec.mel_bins).unsqueeze(1)
    if out is None:
        out = {m: torch.empty((len(views), spec.frames, spec.crop, spec.crop, 3), dtype=torch.uint8) for m in planes}
    items = []
    for i, (index, view) in enumerate(zip(view_indices, views)):
        params = view.as_tuple() if view else (0,) * len(VIEW_FIELDS)
        item = {"label": meta["label"], "row": meta["row"], "view": index,
                "params": torch.tensor(params, dtype=torch.int32), **vectors}
        for m, decoded in planes.items():
            clip = frames_to_rgb([decoded[t] for t in frames[i]], view.box, view.flip, out[m][i].numpy())
            if m == "flow" and view.flip:
                clip[..., 0] = 255 - clip[..., 0]
            item[m] = out[m][i]
        if wave is not None:
            item["audio"] = mels[i]
        items.append(item)
    return items


def worker_init(_: int) -> None:
    torch.set_num_threads(1)


def batch_tensor(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """A new tensor for a batch; in a DataLoader worker, in shared memory, so that it reaches the main process
    without the copy torch would otherwise make into shared memory when the batch is sent."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape))
    return torch.empty(0, dtype=dtype).set_(torch.UntypedStorage._new_shared(numel * dtype.itemsize), 0, tuple(shape))


def collate(items: list[dict], batched: dict[str, torch.Tensor] | None = None) -> dict:
    """Stack tensors, tensorise numbers, list strings; drop webdataset's bookkeeping keys (__key__).
    `batched`: keys whose batch tensor the items already wrote into (video clips)."""
    out = dict(batched or {})
    for key, first in items[0].items():
        if key.startswith("__") or key in out:
            continue
        values = [it[key] for it in items]
        if torch.is_tensor(first):
            out[key] = torch.stack(values, out=batch_tensor((len(values), *first.shape), first.dtype))
        else:
            out[key] = values if isinstance(first, str) else torch.tensor(values)
    return out


FAILED = "__failed__"  # a worker's batch that carries its error message instead of samples
LEASE = "__lease__"    # (worker, slot): the pooled shared memory a batch's clips lie in


class _ClipPool:
    """A worker's shared-memory tensors for its batches' clips, each reused once the main process has dropped the
    batch that carried it (it sends the slot back through `released`). A fresh 38 MB shared tensor (16 clips of
    16 x 224 x 224) cost 45 ms to fill on the 2-core development VM against 1 ms for a reused one: the page
    faults, not the copy. With no slot released it allocates another: it never waits, and a caller that keeps
    every batch (list(loader)) keeps every batch's memory."""

    def __init__(self, released: multiprocessing.SimpleQueue):
        self.released, self.slots, self.free = released, [], []

    def take(self, nbytes: int) -> tuple[int, torch.Tensor]:
        while not self.released.empty():
            self.free.append(self.released.get())
        for slot in self.free:
            if len(self.slots[slot]) >= nbytes:
                self.free.remove(slot)
                return slot, self.slots[slot][:nbytes]
        self.slots.append(batch_tensor((nbytes,), torch.uint8))
        return len(self.slots) - 1, self.slots[-1]


class _PlannedBatches(torch.utils.data.IterableDataset):
    """Worker w of W: batches w, w + W, ... of the plan, each decoded and collated in the worker.

    Under the `skip` policy each batch also carries `bad_samples`, a list of "shard<TAB>key<TAB>reason"
    of every sample skipped in it (the trainer pops it before the batch goes to the device).
    """

    def __init__(self, paths: Sequence[str], plan: EpochPlan, policy: ViewPolicy, spec: ViewSpec,
                 modalities: tuple[str, ...], bad: BadSamples):
        self.paths, self.plan, self.policy, self.spec, self.modalities = list(paths), plan, policy, spec, modalities
        self.bad = bad
        self.videos = [m for m in modalities if m in MEDIA_MEMBERS and m != "audio"]
        self.released: list[multiprocessing.SimpleQueue] = []  # per worker, set by CpuLoader for each epoch
        self.pool: _ClipPool | None = None

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        self.worker = worker
        self.pool = _ClipPool(self.released[worker]) if info and self.released else None
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
            clips, lease = self._clips(len(batch))
            items, skipped = [], []
            for _ in range(len(batch)):
                sample, view = next(samples), next(views)
                try:
                    items.append(self._decode(sample, view, {m: c[len(items):len(items) + 1] for m, c in clips.items()}))
                    streak.good()
                except (MediaError, DataError) as err:
                    if not self.bad.skip:
                        raise
                    skipped.append(_name(sample, err))
                    streak.damaged(skipped[-1])
            good = len(items)
            items = filled(items, skipped)
            for i in range(len(skipped)):  # the good samples' clips in turn fill the skipped ones' places
                for clip in clips.values():
                    clip[good + i] = clip[i % good]
            yield {**collate(items, clips), **({"bad_samples": skipped} if self.bad.skip else {}),
                   **({LEASE: lease} if lease is not None else {})}

    def _clips(self, size: int) -> tuple[dict[str, torch.Tensor], tuple[int, int] | None]:
        """The batch's video tensors, which each sample's clips are converted straight into, and the lease of
        the pooled memory they lie in (None: fresh memory)."""
        shape = (size, self.spec.frames, self.spec.crop, self.spec.crop, 3)
        if self.pool is None or not self.videos:
            return {m: batch_tensor(shape, torch.uint8) for m in self.videos}, None
        per = int(np.prod(shape))
        slot, memory = self.pool.take(per * len(self.videos))
        return {m: memory[k * per:(k + 1) * per].view(shape) for k, m in enumerate(self.videos)}, (self.worker, slot)

    def _decode(self, sample: dict | Unreadable, view: int, out: dict[str, torch.Tensor]) -> dict:
        if isinstance(sample, Unreadable):
            raise DataError(f"{sample.url} sample {sample.key}: {sample.reason}")
        return decode_views(sample, self.spec, self.modalities, self.policy.seed, [view], out)[0]


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
        released = [multiprocessing.SimpleQueue() for _ in range(self.num_workers)]
        self.batches.released = released  # the workers fork with them
        for batch in torch.utils.data.DataLoader(self.batches, batch_size=None, num_workers=self.num_workers,
                                                 worker_init_fn=worker_init):
            if FAILED in batch:
                raise MediaError(batch[FAILED])
            lease = batch.pop(LEASE, None)
            if lease is not None:  # when the last view of the batch's clips is gone, their memory goes back
                worker, slot = lease
                clips = batch[self.batches.videos[0]].untyped_storage()
                weakref.finalize(clips, released[worker].put, slot).atexit = False
            yield batch


def shard_loader(paths: list[str], decode: Callable[[dict], dict], batcher: Callable,
                 num_workers: int) -> torch.utils.data.DataLoader:
    """Whole shards dealt to workers → tar samples in stored order → decode → batcher (the cache
    builder's pass: every sample of its shards, batches that follow shard boundaries)."""
    stages = [wds.SimpleShardList(paths), wds.split_by_worker, wds.tarfile_to_samples(), wds.map(decode), batcher]
    return torch.utils.data.DataLoader(wds.DataPipeline(*stages), batch_size=None,
                                       num_workers=min(num_workers, len(paths)), worker_init_fn=worker_init)
