"""`make_loader`: one rank's batches of one epoch, from whichever backend fits the data.

Every backend follows the same epoch plan (loaders/loading/plan.py) behind one interface
(plan.PlannedLoader: `len()`, iteration of dict batches, `samples()`): the `cpu` backend (PyAV in
DataLoader workers, loaders/loading/pipeline.py), `dali` (loaders/loading/dali.py), ffcv image sets
(loaders/loading/images.py) and in-memory vector sets (loaders/loading/vectors.py).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import torch

from .dali import DaliLoader, check_decodable, choose_backend
from .images import make_image_loader
from .bad import BadSamples
from .pipeline import CpuLoader
from .plan import EpochPlan, PlannedLoader, plan_epoch
from ..stored.shards import is_image_set, load_manifest, locate, modality_inputs, split_shards
from .vectors import VectorLoader
from ..stored.views import ViewPolicy, ViewSpec


def planned_split(data_dir: str | Path, split: str, modalities: Sequence[str], policy: ViewPolicy, batch_size: int,
                  rank: int = 0, world: int = 1, skip: int = 0, streams: int | None = None
                  ) -> tuple[dict, list[str], EpochPlan, set[str]]:
    """(manifest, shard locations, this rank's plan from batch `skip`, modality kinds) of a split."""
    manifest = load_manifest(data_dir)
    kinds = {s["kind"] for s in modality_inputs(manifest, list(modalities), str(data_dir)).values()}
    shards = split_shards(manifest, split)
    source = manifest.get("source", {})
    if policy.train and source.get("generator") == "umt-data pack" and "seed" not in source:
        warnings.warn(f"{data_dir} was packed in annotation-file order by an older umt-data pack: if that file "
                      "is sorted by class, each shard holds few classes and so does each batch (the loader "
                      "shuffles within shards); repack it to write shards in a seeded random order", stacklevel=3)
    counts = [s["count"] for s in shards]
    if kinds == {"vector"}:
        counts = [sum(counts)]  # in memory, the whole split is one shard: one permutation of all rows
    plan = plan_epoch(counts, policy.seed, policy.epoch, rank, world, batch_size, policy.train, skip, streams)
    return manifest, [locate(data_dir, s["name"]) for s in shards], plan, kinds


def dali_loader(data_dir: str | Path, split: str, spec: ViewSpec, modalities: Sequence[str], policy: ViewPolicy,
                batch_size: int, rank: int = 0, world: int = 1, skip: int = 0, device_id: int | None = None,
                num_threads: int = 1, streams: int | None = None, bad_samples: BadSamples = BadSamples()) -> DaliLoader:
    """The dali backend's loader on GPU `device_id`, or with None all on the CPU (VP9 shards: tests)."""
    check_decodable(modalities)
    manifest, paths, plan, _ = planned_split(data_dir, split, modalities, policy, batch_size, rank, world, skip,
                                             streams)
    rate = _audio_rate(manifest, modalities)
    return DaliLoader(paths, plan, policy, spec, modalities, rate, device_id, num_threads,
                      split_shards(manifest, split), bad_samples)


def finish_device(choice: str, device: torch.device) -> torch.device | None:
    """Where the cpu backend's views are finished (make_loader's `finish_on`) for a `finish` setting ("auto",
    "workers", "device") when training on `device`: auto is the device when it is a GPU, else the workers."""
    if choice == "device" or (choice == "auto" and device.type == "cuda"):
        return device
    return None


def make_loader(data_dir: str | Path, split: str, *, spec: ViewSpec, modalities: Sequence[str],
                policy: ViewPolicy, batch_size: int, num_workers: int = 1, rank: int = 0,
                world: int = 1, skip: int = 0, backend: str = "cpu",
                device_id: int | None = None, bad_samples: BadSamples = BadSamples(),
                streams: int | None = None, finish_on: torch.device | None = None) -> PlannedLoader:
    """This rank's batches of one epoch, starting after the first `skip` (a mid-epoch resume). Every
    argument after the split is keyword-only: a request names what it asks for.

    Training (policy.train) shuffles as the plan says and gives every rank the same number of whole
    batches; evaluation reads every sample once, in order. `streams` is the plan's C (by default the
    world size; an elastic resume keeps the C of the run's start). Vector sets are served from memory, image
    sets by ffcv, video and audio by the `cpu` backend or, with backend "dali" (or "auto" on a
    machine with a GPU and DALI), by DALI.
    `finish_on`: the cpu backend's workers only decode, and each batch's views are resized, converted and
    log-mel'd on this device (loaders/loading/finish.py; the trainer's GPU), the same views to the bit.
    `bad_samples` (skip or stop at a damaged sample, loaders/loading/bad.py) applies to the cpu backend,
    vector sets, image sets and dali (these two find them by an integrity pass first: their decoders
    do not say which sample failed).
    """
    if set(modalities) <= {"video", "audio"} and choose_backend(backend) == "dali":
        return dali_loader(data_dir, split, spec, modalities, policy, batch_size, rank, world, skip,
                           torch.cuda.current_device() if device_id is None else device_id, max(1, num_workers), streams,
                           bad_samples)
    manifest, paths, plan, kinds = planned_split(data_dir, split, modalities, policy, batch_size, rank, world, skip,
                                                 streams)
    if is_image_set(manifest):
        return make_image_loader(data_dir, manifest, split, modalities, plan, policy, spec.crop, spec.flip,
                                 num_workers, bad_samples)
    if kinds == {"vector"}:
        return VectorLoader(paths, [s["count"] for s in split_shards(manifest, split)], plan, policy, modalities,
                            bad_samples)
    return CpuLoader(paths, plan, policy, spec, modalities, num_workers, bad_samples, finish_on,
                     _audio_rate(manifest, modalities))


def _audio_rate(manifest: dict, modalities: Sequence[str]) -> int | None:
    return manifest["modalities"]["audio"]["sample_rate"] if "audio" in modalities else None
