"""The `cpu` backend: WebDataset shards → PyAV decode → view box resized to the crop, flip → log-mel → batches.

The epoch plan (loaders/loading/plan.py) fixes this rank's batches. DataLoader workers take them in turn
(batch b → worker b mod W) and torch's DataLoader returns its workers' outputs round-robin, so the
batches come out in plan order whatever the worker count, and a resume starts at any batch
exactly. Each worker streams the shards its batches touch and decodes only its own samples; a
shard spanning k batches is thus streamed by up to min(W, k) workers (reading, not decoding, is
repeated). Video leaves the workers as uint8 (4x less inter-process traffic than float);
normalisation happens on the model's device. With a finishing device (`finish_on`, the trainer's GPU) the
workers stop after the decode: they ship each view's frame regions and int16 audio window, and the resize,
conversion, flip and log-mel run there, batched (finish.py), giving the same batches.
"""
from __future__ import annotations

import ctypes
import io
import json
import multiprocessing
import weakref
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import webdataset as wds

from .audio import log_mel, pcm_float
from .bad import BadSamples, Skipped, Streak, filled
from .finish import REGION, finish, region, region_bytes, ship_frame
from ..errors import UserError
from .kernels import BoxResize, load as load_kernels
from ..stored.media import MediaError, Planes, decode_flac_span, h264_stream
from .plan import EpochPlan, PlannedLoader
from ..stored.shards import MEDIA_MEMBERS, DataError, member
from .stream import Unreadable, planned_samples
from ..stored.views import VIEW_FIELDS, Geometry, ViewPolicy, ViewSpec, audio_window, make_view



class _Media:
    """One raw tar sample parsed for `view_indices`: its views, the frames each reads, and the audio span the views'
    windows cover (decoded here, as stored: int16); each video modality decodes when asked (`decoded`)."""

    def __init__(self, sample: dict, spec: ViewSpec, modalities: Sequence[str], seed: int, view_indices: Sequence[int]):
        self.where = f"{sample.get('__url__', '?')} sample {sample.get('__key__', '?')}"
        self.indices = list(view_indices)
        self.shipped: tuple[int, ...] | None = None  # shipping: (offset, row, column, h, w), set by the worker
        self.wave, self.audio_start, self.window, self.video = None, 0, 0, {}
        try:
            self.meta = json.loads(sample["json"])
            media = [m for m in modalities if m in MEDIA_MEMBERS]
            self.vectors = {m: torch.from_numpy(np.load(io.BytesIO(sample[member(m)]), allow_pickle=False))
                            for m in modalities if m not in MEDIA_MEMBERS}
            if media:
                self.geom = geom = Geometry.of(self.meta)
                self.views = [make_view(seed, self.meta["row"], v, spec, geom) for v in view_indices]
                self.frames = [[v.t0 + k * spec.stride for k in range(spec.frames)] for v in self.views]
                self.video = {m: sample[member(m)] for m in media if m != "audio"}
                if "audio" in media:  # only the span the views' windows cover
                    self.window = audio_window(spec, geom.sample_rate)
                    self.audio_start = min(v.audio_offset for v in self.views)
                    self.wave, total = decode_flac_span(sample[member("audio")], self.audio_start,
                                                        max(v.audio_offset for v in self.views) + self.window)
                    if total is not None and total < geom.audio_samples:  # a view could read past its end
                        raise MediaError(f"audio holds {total} samples, the json says {geom.audio_samples}")
            else:
                self.views = [None] * len(view_indices)
        except KeyError as err:
            raise MediaError(f"{self.where}: no member or field {err} (does the shard set have modalities "
                             f"{list(modalities)}?)") from err
        except (ValueError, MediaError) as err:
            raise MediaError(f"{self.where}: {err}") from err

    def decoded(self, m: str) -> Iterator[tuple[int, Planes]]:
        """Video modality m's frames that the views read, as they decode (media.h264_stream)."""
        try:
            yield from h264_stream(self.video[m], sorted({t for f in self.frames for t in f}),
                                   (self.geom.height, self.geom.width))
        except MediaError as err:
            raise MediaError(f"{self.where}: {err}") from err

    def windows(self) -> list[torch.Tensor]:
        """Each view's audio window [samples], int16 as stored (over the decoded span: not copied)."""
        first = [v.audio_offset - self.audio_start for v in self.views]
        return [torch.from_numpy(self.wave[f:f + self.window]) for f in first]

    def item(self, i: int) -> dict:
        """View i's label, row, view index and params, and the vectors (every view the same)."""
        view = self.views[i]
        params = view.as_tuple() if view else (0,) * len(VIEW_FIELDS)
        return {"label": self.meta["label"], "row": self.meta["row"], "view": self.indices[i],
                "params": torch.tensor(params, dtype=torch.int32), **self.vectors}


def decode_views(sample: dict, spec: ViewSpec, modalities: Sequence[str], seed: int,
                 view_indices: Sequence[int], out: dict[str, torch.Tensor] | None = None) -> list[dict]:
    """Decode one raw tar sample once and cut every requested view from it (finish_views).

    Optical flow gets the video's box, resized alike (its values are not rescaled, as in TSN and
    MMAction2); a horizontal flip also negates its x component (red: 255 - red). Vector views
    (`<key>.<name>.npy`, from `umt-data pack-arrays`) have no augmentation: every view is the
    vector itself and its params are zeros.
    """
    return finish_views(_Media(sample, spec, modalities, seed, view_indices), spec, out)


def log_mels(medias: Sequence[_Media], spec: ViewSpec) -> list[torch.Tensor | None]:
    """Each parsed sample's views' log-mels [views, 1, n_mels, frames] (None: no audio), all windows of one sample
    rate through one call: a worker's batch in one call costs 0.3 ms a clip less than a call per sample in one process
    at --realistic settings, and joins the worker's stages with less loss (benchmarks/RESULTS.md, "The batch's log-mel
    in one call"). Each window's values are the same as alone (tests/test_synth_loader.py checks a batch's rows)."""
    out: list[torch.Tensor | None] = [None] * len(medias)
    heard = [i for i, media in enumerate(medias) if media.wave is not None]
    for rate in sorted({medias[i].geom.sample_rate for i in heard}):
        these = [i for i in heard if medias[i].geom.sample_rate == rate]
        mels = log_mel(pcm_float(torch.stack([w for i in these for w in medias[i].windows()])), rate,
                       spec.mel_bins).unsqueeze(1)
        first = 0
        for i in these:  # each sample's views' rows, in place
            out[i], first = mels[first:first + len(medias[i].views)], first + len(medias[i].views)
    return out


def finish_views(media: _Media, spec: ViewSpec, out: dict[str, torch.Tensor] | None = None,
                 mels: torch.Tensor | None = None) -> list[dict]:
    """A parsed sample's views, finished: only the frames the views use are read out of the decoder, in place and one
    at a time (media.h264_stream), and each view's box is resized and converted straight into `out[m][i]` when
    given (the batch a worker ships: uint8 [views, T, crop, crop, 3]), else into a new tensor. `mels`: its views'
    log-mels when already computed with its batch's (log_mels)."""
    if media.wave is not None and mels is None:
        mels = log_mels([media], spec)[0]
    if out is None:
        out = {m: torch.empty((len(media.views), spec.frames, spec.crop, spec.crop, 3), dtype=torch.uint8)
               for m in media.video}
    if media.video:
        size = (media.geom.height, media.geom.width)
        resizers = [BoxResize(view.box, spec.crop, size, view.flip) for view in media.views]
        at = [{t: k for k, t in enumerate(frames)} for frames in media.frames]
    for m in media.video:
        clips = out[m].numpy()
        for index, planes in media.decoded(m):  # each frame into every view that reads it, then let go
            for i, positions in enumerate(at):
                if index in positions:
                    resizers[i](*planes, clips[i, positions[index]])
    items = []
    for i, view in enumerate(media.views):
        item = media.item(i)
        for m in media.video:
            item[m] = out[m][i]
            if m == "flow" and view.flip:
                item[m][..., 0] = 255 - item[m][..., 0]
        if media.wave is not None:
            item["audio"] = mels[i]
        items.append(item)
    return items


def ship_view(media: _Media, spec: ViewSpec, out: dict[str, torch.Tensor]) -> dict:
    """A parsed sample's one view, decoded but not finished (finish.py): each video modality's frames, cut to the
    region the view reads (`media.shipped`: offset and region), copied into the flat `out[m]` as they decode; the
    audio window as stored (int16); REGION: where the frames lie. The trainer's device finishes them, batched."""
    item = media.item(0)
    if media.video:
        offset, *where = media.shipped
        item[REGION] = torch.tensor((*media.shipped, media.geom.height, media.geom.width), dtype=torch.int64)
        shape = (spec.frames, where[2] * 3 // 2, where[3])
    for m in media.video:
        frames = out[m][offset:offset + region_bytes(spec.frames, where)].numpy().reshape(shape)
        for (_, planes), frame in zip(media.decoded(m), frames):
            ship_frame(planes, where, frame)
        item[m] = out[m]
    if media.wave is not None:
        item["audio"] = media.windows()[0]
    return item


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def worker_init(_: int) -> None:
    """A loader worker: one torch thread, and the memory it frees kept for its next batch (keep_freed_memory)."""
    torch.set_num_threads(1)
    keep_freed_memory()


def keep_freed_memory() -> None:
    """glibc's malloc gives large freed blocks back to the kernel (above 128 KB each is its own mapping, and the heap's
    free top is trimmed), so a worker that allocates and frees the same buffers for every batch — the log-mel's
    intermediates, the decoder's frames, the kernel's rows — takes their page faults again and again: up to 5,000 a
    batch's log-mel call after the first two at --realistic settings (2.0 ms a clip there against 1.3 in one process).
    Served from the heap and kept, they fault in a worker's first two batches only (benchmarks/RESULTS.md, "The
    batch's log-mel in one call"). A worker's heap then stays at its high-water mark (tens of MB) until the epoch's
    workers exit. Other C libraries keep their allocator's own policy."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest
    mallopt(M_TRIM_THRESHOLD, 1 << 30)


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
LEASE = "__lease__"    # {key: (worker, slot)}: the pooled shared memory a batch's tensors lie in


class _ClipPool:
    """A worker's shared-memory tensors for its batches' clips and audio, each reused once the main process has
    dropped the batch that carried it (it sends the slot back through `released`). A fresh 38 MB shared tensor
    (16 clips of 16 x 224 x 224) cost 45 ms to fill on the 2-core development VM against 1 ms for a reused one:
    the page faults, not the copy. With no slot released it allocates another: it never waits, and a caller that
    keeps every batch (list(loader)) keeps every batch's memory."""

    def __init__(self, released: multiprocessing.SimpleQueue):
        self.released, self.slots, self.free = released, [], []

    def take(self, nbytes: int) -> tuple[int, torch.Tensor]:
        while not self.released.empty():
            self.free.append(self.released.get())
        fits = [slot for slot in self.free if len(self.slots[slot]) >= nbytes]
        if fits:  # the smallest that fits: a batch's audio does not take the room of its clips
            slot = min(fits, key=lambda k: len(self.slots[k]))
            self.free.remove(slot)
            return slot, self.slots[slot][:nbytes]
        self.slots.append(batch_tensor((nbytes,), torch.uint8))
        return len(self.slots) - 1, self.slots[-1]


class _PlannedBatches(torch.utils.data.IterableDataset):
    """Worker w of W: batches w, w + W, ... of the plan, each decoded and collated in the worker.

    Under the `skip` policy each batch also carries `bad_samples`, a list of "shard<TAB>key<TAB>reason"
    of every sample skipped in it (the trainer pops it before the batch goes to the device).
    `ship`: batches of decoded frames and audio windows (ship_view), finished on the trainer's device.
    """

    def __init__(self, paths: Sequence[str], plan: EpochPlan, policy: ViewPolicy, spec: ViewSpec,
                 modalities: tuple[str, ...], bad: BadSamples, ship: bool = False):
        self.paths, self.plan, self.policy, self.spec, self.modalities = list(paths), plan, policy, spec, modalities
        self.bad, self.ship = bad, ship
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
            read = [(next(samples), next(views)) for _ in batch]
            parsed, items, skipped = [], [], []
            for sample, view in read:  # json, views, audio: what sizes the batch's memory when shipping
                try:
                    parsed.append((sample, self._media(sample, view)))
                except (MediaError, DataError) as err:
                    self._skipped(sample, err, skipped, streak)
            leases: dict[str, tuple[int, int]] = {}
            medias = [media for _, media in parsed]
            clips = self._clips(len(read), medias, leases)
            mels = self._mels(medias)
            for (sample, media), mel in zip(parsed, mels):
                try:
                    items.append(self._write(media, len(items), clips, mel))
                    streak.good()
                except MediaError as err:
                    self._skipped(sample, err, skipped, streak)
            good = len(items)
            items = filled(items, skipped)
            if not self.ship:  # the good samples' clips in turn fill the skipped ones' places
                for i in range(len(skipped)):
                    for clip in clips.values():
                        clip[good + i] = clip[i % good]
            if "audio" in items[0]:
                first = items[0]["audio"]
                clips["audio"] = self._memory((len(items), *first.shape), first.dtype, leases, "audio")
                torch.stack([item["audio"] for item in items], out=clips["audio"])
            yield {**collate(items, clips), **({"bad_samples": skipped} if self.bad.skip else {}),
                   **({LEASE: leases} if leases else {})}

    def _skipped(self, sample: dict | Unreadable, err: Exception, skipped: list[Skipped], streak: Streak) -> None:
        if not self.bad.skip:
            raise err
        skipped.append(Skipped.of(sample, err))
        streak.damaged(skipped[-1])

    def _media(self, sample: dict | Unreadable, view: int) -> "_Media":
        if isinstance(sample, Unreadable):
            raise DataError(f"{sample.url} sample {sample.key}: {sample.reason}")
        return _Media(sample, self.spec, self.modalities, self.policy.seed, [view])

    def _clips(self, size: int, medias: list["_Media"], leases: dict) -> dict[str, torch.Tensor]:
        """The batch's video tensors, which each sample's clips are converted straight into ([size, T, crop, crop,
        3]), or, shipping, each parsed sample's regions copied into (flat; each media's `shipped` says where)."""
        if not self.videos:
            return {}
        if self.ship:
            offset = 0
            for media in medias:
                view = media.views[0]
                where = region(view.box, self.spec.crop, (media.geom.height, media.geom.width))
                media.shipped = (offset, *where)
                offset += region_bytes(self.spec.frames, where)
            shape = (offset,)
        else:
            shape = (size, self.spec.frames, self.spec.crop, self.spec.crop, 3)
        per = int(np.prod(shape))
        memory = self._memory((per * len(self.videos),), torch.uint8, leases, self.videos[0])
        return {m: memory[k * per:(k + 1) * per].view(shape) for k, m in enumerate(self.videos)}

    def _mels(self, medias: list["_Media"]) -> list[torch.Tensor | None]:
        """The batch's log-mels, one call for all its samples (none when shipping: the trainer's device makes them)."""
        return [None] * len(medias) if self.ship else log_mels(medias, self.spec)

    def _write(self, media: "_Media", position: int, clips: dict[str, torch.Tensor],
               mels: torch.Tensor | None) -> dict:
        """A parsed sample's view, its video into `clips` (finished: at `position` among the batch's good samples)."""
        if self.ship:
            return ship_view(media, self.spec, clips)
        return finish_views(media, self.spec, {m: c[position:position + 1] for m, c in clips.items()}, mels)[0]

    def _memory(self, shape: tuple, dtype: torch.dtype, leases: dict, key: str) -> torch.Tensor:
        """A batch tensor in this worker's pool, its slot leased under `key` (the main process gives it back when
        batch[key] is gone), else in fresh shared memory."""
        if self.pool is None:
            return batch_tensor(shape, dtype)
        slot, memory = self.pool.take(int(np.prod(shape)) * dtype.itemsize)
        leases[key] = (self.worker, slot)
        return memory.view(dtype).view(shape)


class CpuLoader(PlannedLoader):
    """One epoch of one rank's batches, decoded with PyAV in `num_workers` DataLoader workers.

    `finish_on`: a device (the trainer's GPU) on which each batch's views are resized, converted and log-mel'd
    (finish.py) instead of in the workers; the batches are the same (video to the bit), their video and audio
    already on that device. `sample_rate`: the audio's (needed with `finish_on`)."""

    def __init__(self, paths: Sequence[str], plan: EpochPlan, policy: ViewPolicy, spec: ViewSpec,
                 modalities: Sequence[str], num_workers: int, bad: BadSamples = BadSamples(),
                 finish_on: torch.device | None = None, sample_rate: int | None = None):
        super().__init__(plan, policy)
        self.batches = _PlannedBatches(paths, plan, policy, spec, tuple(modalities), bad, ship=finish_on is not None)
        self.num_workers = max(0, min(num_workers, len(plan)))
        self.finish_on, self.sample_rate = finish_on, sample_rate

    def __iter__(self) -> Iterator[dict]:
        if self.finish_on is None:
            yield from self.shipped()
            return
        for batch in self.shipped():
            yield finish(batch, self.batches.spec, self.batches.videos, self.sample_rate, self.finish_on)

    def shipped(self) -> Iterator[dict]:
        """The batches as the workers ship them (with `finish_on`: decoded frames and audio windows, unfinished)."""
        load_kernels()  # before the workers fork
        released = [multiprocessing.SimpleQueue() for _ in range(self.num_workers)]
        self.batches.released = released  # the workers fork with them
        for batch in torch.utils.data.DataLoader(self.batches, batch_size=None, num_workers=self.num_workers,
                                                 worker_init_fn=worker_init):
            if FAILED in batch:
                raise MediaError(batch[FAILED])
            for key, (worker, slot) in batch.pop(LEASE, {}).items():
                # when the last view of the batch's tensor is gone, its memory goes back
                weakref.finalize(batch[key].untyped_storage(), released[worker].put, slot).atexit = False
            yield batch


def shard_loader(paths: list[str], decode: Callable[[dict], dict], batcher: Callable,
                 num_workers: int, *then: Callable[[dict], dict]) -> torch.utils.data.DataLoader:
    """Whole shards dealt to workers → tar samples in stored order → decode → batcher → each of `then` on every
    batch, in the workers (the cache builder's pass: every sample of its shards, batches that follow shard
    boundaries)."""
    stages = [wds.SimpleShardList(paths), wds.split_by_worker, wds.tarfile_to_samples(), wds.map(decode), batcher,
              *map(wds.map, then)]
    return torch.utils.data.DataLoader(wds.DataPipeline(*stages), batch_size=None,
                                       num_workers=min(num_workers, len(paths)), worker_init_fn=worker_init)
