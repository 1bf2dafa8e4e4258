"""CPU loader: WebDataset shards → PyAV decode → view crop/flip → log-mel → batches.

Each process (rank) reads a disjoint subset of the split's shards; DataLoader workers split that
subset again. Shard order and the shuffle buffer are seeded by (seed, epoch, rank), so an epoch is
reproducible. Video leaves the workers as uint8 (4x less inter-process traffic than float);
normalisation happens on the model's device.
"""
from __future__ import annotations

import io
import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import webdataset as wds

from .audio import log_mel
from .kernels import crop_flip_to_rgb
from .media import MediaError, decode_flac, decode_h264
from .images import make_image_loader
from .shards import DataError, load_manifest, locate, modality_inputs, split_shards
from .vectors import VectorLoader, batch_count
from .views import CENTRE, VIEW_FIELDS, Geometry, ViewSpec, audio_window, make_view, train_view_index

@dataclass(frozen=True)
class ViewPolicy:
    """How a sample's view index is chosen: centre (evaluation) or per epoch (training)."""

    seed: int
    epoch: int = 0
    train: bool = False
    num_views: int | None = None

    def index(self, row: int) -> int:
        return train_view_index(self.seed, self.epoch, row, self.num_views) if self.train else CENTRE


MEDIA = ("video", "audio", "flow")
CLIPS = {"video": "mp4", "flow": "flow.mp4"}  # tar members of the H.264 modalities


def decode_views(sample: dict, spec: ViewSpec, modalities: Sequence[str], seed: int,
                 view_indices: Sequence[int] | Callable[[int], Sequence[int]]) -> list[dict]:
    """Decode one raw tar sample once and cut every requested view from it.

    `view_indices` is a list, or a function of the sample's row giving the list. Optical flow
    gets the video's crop; a horizontal flip also negates its x component (red: 255 - red). Vector
    views (`<key>.<name>.npy`, from `umt-data pack-arrays`) have no augmentation: every view is the
    vector itself and its params are zeros.
    """
    where = f"{sample.get('__url__', '?')} sample {sample.get('__key__', '?')}"
    try:
        meta = json.loads(sample["json"])
        if callable(view_indices):
            view_indices = view_indices(meta["row"])
        media = [m for m in modalities if m in MEDIA]
        vectors = {m: torch.from_numpy(np.load(io.BytesIO(sample[f"{m}.npy"]), allow_pickle=False))
                   for m in modalities if m not in MEDIA}
        if media:
            geom = Geometry.of(meta)
            views = [make_view(seed, meta["row"], v, spec, geom) for v in view_indices]
            span = (spec.frames - 1) * spec.stride + 1
            first = min(v.t0 for v in views)
            clips = {m: decode_h264(sample[CLIPS[m]], first, max(v.t0 for v in views) + span)
                     for m in media if m in CLIPS}
            wave = decode_flac(sample["flac"]) if "audio" in media else None
        else:
            views, clips, wave = [None] * len(view_indices), {}, None
    except KeyError as err:
        raise MediaError(f"{where}: no member or field {err} (does the shard set have modalities "
                         f"{list(modalities)}?)") from err
    except (ValueError, MediaError) as err:
        raise MediaError(f"{where}: {err}") from err
    if wave is not None:  # every view's window through one STFT call
        window = audio_window(spec, geom.sample_rate)
        pieces = torch.from_numpy(np.stack([wave[v.audio_offset:v.audio_offset + window] for v in views]))
        mels = log_mel(pieces, geom.sample_rate, spec.mel_bins).unsqueeze(1)
    out = []
    for i, (index, view) in enumerate(zip(view_indices, views)):
        params = view.as_tuple() if view else (0,) * len(VIEW_FIELDS)
        item = {"label": meta["label"], "row": meta["row"], "view": index,
                "params": torch.tensor(params, dtype=torch.int32), **vectors}
        for m, frames in clips.items():
            clip = crop_flip_to_rgb(frames[view.t0 - first:view.t0 - first + span:spec.stride], view.y0, view.x0,
                                    spec.crop, view.flip)
            if m == "flow" and view.flip:
                clip[..., 0] = 255 - clip[..., 0]
            item[m] = torch.from_numpy(clip)
        if wave is not None:
            item["audio"] = mels[i]
        out.append(item)
    return out


def shard_paths(data_dir: str | Path, split: str) -> tuple[list[str], list[int]]:
    shards = split_shards(load_manifest(data_dir), split)
    return [locate(data_dir, s["name"]) for s in shards], [s["count"] for s in shards]


def rank_shards(paths: list[str], counts: list[int], rank: int, world: int, seed: int, epoch: int,
                shuffle: bool) -> tuple[list[str], list[int]]:
    """The shards one rank reads this epoch: a (seed, epoch) permutation, dealt round-robin."""
    order = list(range(len(paths)))
    if shuffle:
        random.Random(f"{seed}:{epoch}").shuffle(order)
    mine = order[rank::world]
    return [paths[i] for i in mine], [counts[i] for i in mine]


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


class EpochLoader:
    """One epoch of one rank's batches: the DataLoader, capped so that all ranks step alike.

    Resuming mid-epoch (`skip` batches already trained on), each worker drops its share of raw
    samples before decoding; the few batches that cannot be dropped that way without changing the
    order in which the DataLoader interleaves its workers are decoded and discarded here.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, num_batches: int, discard: int = 0):
        self.loader, self.num_batches, self.discard = loader, num_batches, discard

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict]:
        for index, batch in enumerate(self.loader):
            if index < self.discard:
                continue
            if index - self.discard == self.num_batches:
                return
            yield batch


@dataclass(frozen=True)
class RankEpoch:
    """The shards one rank reads in one epoch, and how many batches a single stream over them gives."""

    paths: list[str]          # every shard of the split
    counts: list[int]
    mine: list[str]           # this rank's, in this epoch's order
    my_counts: list[int]
    num_batches: int          # training: the smallest rank's count, so that all ranks step alike


def rank_epoch(data_dir: str | Path, split: str, policy: ViewPolicy, batch_size: int, rank: int,
               world: int) -> RankEpoch:
    paths, counts = shard_paths(data_dir, split)
    if policy.train and len(paths) < world:
        raise DataError(f"{data_dir}: {split} has {len(paths)} shards, fewer than {world} processes")
    mine, my_counts = rank_shards(paths, counts, rank, world, policy.seed, policy.epoch, policy.train)
    per_rank = [sum(rank_shards(paths, counts, r, world, policy.seed, policy.epoch, True)[1])
                for r in range(world)] if policy.train else [sum(my_counts)]
    return RankEpoch(paths, counts, mine, my_counts, min(batch_count(n, batch_size, policy.train) for n in per_rank))


def make_loader(data_dir: str | Path, split: str, spec: ViewSpec, modalities: Sequence[str],
                policy: ViewPolicy, batch_size: int, num_workers: int = 1, rank: int = 0,
                world: int = 1, shuffle_buffer: int = 0, skip: int = 0, backend: str = "cpu",
                device_id: int | None = None):
    """This rank's batches of one epoch, starting after the first `skip` (a mid-epoch resume).

    Training (policy.train) drops each worker's last partial batch and caps every rank at the
    smallest rank's batch count, so all ranks step the same number of times. Vector modalities
    are served from memory; video and audio by the `cpu` backend (PyAV in workers) or, with
    backend "dali" (or "auto" on a machine with a GPU and DALI), by DALI on the GPU.
    """
    kinds = {s["kind"] for s in modality_inputs(load_manifest(data_dir), modalities, str(data_dir)).values()}
    if kinds == {"image"}:
        return make_image_loader(data_dir, split, modalities, policy.seed, policy.epoch, policy.train, batch_size,
                                 spec.crop, rank, world, skip, num_workers, policy.num_views, spec.flip)
    from .dali import choose_backend, make_dali_loader  # dali builds on this module
    if set(modalities) <= {"video", "audio"} and choose_backend(backend) == "dali":
        return make_dali_loader(data_dir, split, spec, modalities, policy, batch_size, rank, world, skip,
                                torch.cuda.current_device() if device_id is None else device_id, max(1, num_workers))
    epoch = rank_epoch(data_dir, split, policy, batch_size, rank, world)
    if kinds == {"vector"}:
        order = f"{policy.seed}:{policy.epoch}:{rank}" if policy.train else None
        return VectorLoader(epoch.mine, modalities, policy.index, batch_size, order, epoch.num_batches,
                            min(skip, epoch.num_batches))
    workers = max(0, min(num_workers, len(epoch.mine)))
    per_worker = _worker_batches(epoch.my_counts, batch_size, max(1, workers), drop_last=policy.train)
    if policy.train:  # a stream per worker: each worker drops its own last partial batch
        per_rank = [rank_shards(epoch.paths, epoch.counts, r, world, policy.seed, policy.epoch, True)[1]
                    for r in range(world)]
        num_batches = min(sum(_worker_batches(c, batch_size, max(1, workers), True)) for c in per_rank)
    else:
        num_batches = sum(-(-c // batch_size) for c in epoch.my_counts)
    skip = min(skip, num_batches)
    dropped, discard = _resume_point(per_worker, skip)
    rng = random.Random(f"{policy.seed}:{policy.epoch}:{rank}") if policy.train else None
    decode = _DecodeOne(spec, tuple(modalities), policy)
    loader = batch_loader(epoch.mine, decode, batch_size, workers, partial=not policy.train,
                          shuffle_buffer=shuffle_buffer, rng=rng, skip=[d * batch_size for d in dropped])
    return EpochLoader(loader, num_batches - skip, discard)


def _worker_order(per_worker: list[int]) -> list[int]:
    """Which worker each batch comes from: DataLoader's round robin over workers not yet exhausted."""
    left, order = list(per_worker), []
    while any(left):
        for w, n in enumerate(left):
            if n:
                order.append(w)
                left[w] -= 1
    return order


def _resume_point(per_worker: list[int], skip: int) -> tuple[list[int], int]:
    """(batches each worker drops before decoding, batches to discard after loading) for `skip`.

    Workers can only drop whole rounds of the round robin: a resumed DataLoader starts again at
    the first worker that has batches left, so the drop stops at the last such point <= skip.
    """
    order = _worker_order(per_worker)
    for point in range(skip, -1, -1):
        taken = [order[:point].count(w) for w in range(len(per_worker))]
        active = [w for w, n in enumerate(per_worker) if n > taken[w]]
        if point == len(order) or order[point] == active[0]:
            return taken, skip - point
    return [0] * len(per_worker), skip


def batch_loader(paths: list[str], decode: Callable[[dict], dict], batch_size: int, num_workers: int,
                 partial: bool, shuffle_buffer: int = 0, rng: random.Random | None = None,
                 skip: list[int] | None = None) -> torch.utils.data.DataLoader:
    """Shards → tar samples → (seeded shuffle) → (resume skip) → decode → batches, in workers."""
    stages = [wds.shuffle(shuffle_buffer, initial=shuffle_buffer, rng=rng)] if rng and shuffle_buffer > 1 else []
    if skip and any(skip):
        stages.append(_SkipPerWorker(skip))
    return shard_loader(paths, decode, wds.batched(batch_size, collation_fn=collate, partial=partial),
                        num_workers, stages)


def shard_loader(paths: list[str], decode: Callable[[dict], dict], batcher: Callable, num_workers: int,
                 before_decode: Sequence = ()) -> torch.utils.data.DataLoader:
    """The shared skeleton: shards split over workers → tar samples → ... → decode → batcher."""
    stages = [wds.SimpleShardList(paths), wds.split_by_worker, wds.tarfile_to_samples(), *before_decode,
              wds.map(decode), batcher]
    return torch.utils.data.DataLoader(wds.DataPipeline(*stages), batch_size=None,
                                       num_workers=min(num_workers, len(paths)), worker_init_fn=worker_init)


@dataclass(frozen=True)
class _DecodeOne:
    """Picklable map stage: one raw sample → its view for this epoch."""

    spec: ViewSpec
    modalities: tuple[str, ...]
    policy: ViewPolicy

    def __call__(self, sample: dict) -> dict:
        return decode_views(sample, self.spec, self.modalities, self.policy.seed,
                            lambda row: [self.policy.index(row)])[0]


class _SkipPerWorker:
    """Pipeline stage: worker w drops its first skip[w] raw samples, before any decoding."""

    def __init__(self, skip: list[int]):
        self.skip = skip

    def __call__(self, samples: Iterator[dict]) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        return itertools.islice(samples, self.skip[info.id if info else 0], None)


def _worker_batches(counts: list[int], batch_size: int, workers: int, drop_last: bool) -> list[int]:
    """Batches each worker yields when shards are dealt round-robin to workers."""
    per_worker = [sum(counts[w::workers]) for w in range(workers)]
    return [n // batch_size if drop_last else -(-n // batch_size) for n in per_worker]
