"""UMT distillation targets: the frozen teachers' features, and their classifiers' logits, for the
batch's exact views.

Two sources give the same signal (up to float16 rounding): `CachedTargets` gathers rows of a table
built by `umt-cache build`; `OnlineTeachers` runs the teachers on the batch. Both return
{kind: {modality: [B, ...] float32}} for the asked kinds ("features", "logits"; loaders/stored/cache_store.py KINDS).
"""
from __future__ import annotations

import torch

from umt.loaders.stored import cache_store as store
from umt.loaders.stored.cache_reader import FeatureTable, Targets
from umt.loaders.stored.shards import load_manifest, manifest_fingerprint
from umt.loaders.stored.views import ViewSpec

from .checkpoint import load_teacher_models, load_teachers


class OnlineTeachers:
    """Teachers run every step, frozen and in eval mode, on the student's own view (which must be
    the view spec they were trained on)."""

    def __init__(self, checkpoints: dict[str, str], device: torch.device, spec: ViewSpec,
                 kinds: tuple[str, ...] = ("features",)):
        self.teachers, self.fingerprints, self.spec = load_teacher_models(checkpoints, device, spec)
        self.kinds = kinds

    def dims(self) -> dict[str, int]:
        return {m: t.encoders[m].out_dim for m, t in self.teachers.items()}

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor]) -> Targets:
        feats = {m: t.encoders[m](batch[m]) for m, t in self.teachers.items()}
        out = {"features": {m: f.float() for m, f in feats.items()}}
        if "logits" in self.kinds:
            out["logits"] = {m: t.fuse({m: feats[m]}).float() for m, t in self.teachers.items()}
        return {k: out[k] for k in self.kinds}


class CachedTargets:
    """Targets read from a verified cache: whole in memory within `budget_bytes`, else streamed."""

    def __init__(self, path: str, data_dir: str, spec: ViewSpec, device: torch.device,
                 teachers: dict[str, str] | None = None, budget_bytes: int = 8 << 30,
                 kinds: tuple[str, ...] = ("features",)):
        group = store.open_group(path)
        prints = load_teachers(teachers, torch.device("cpu"))[1] if teachers else None
        store.check(group, path, manifest_fingerprint(data_dir), prints)
        if ViewSpec.of(group.attrs["view_spec"]) != spec:
            raise store.CacheError(f"cache {path} holds views of spec {group.attrs['view_spec']}, the run "
                                   f"uses {spec.to_dict()}; train with the cache's view spec")
        train = load_manifest(data_dir)["splits"]["train"]["num_samples"]
        if group.attrs["split"] != "train" or group.attrs["num_samples"] != train:
            raise store.CacheError(f"cache {path} holds split {group.attrs['split']!r} ({group.attrs['num_samples']} "
                                   f"samples); UMT trains on split 'train' ({train} samples): build the cache "
                                   "with `umt-cache build --split train`")
        self.seed = group.attrs["seed"]
        self.num_views = group.attrs["num_views"]
        self.table = FeatureTable(group, device, budget_bytes, kinds=kinds)

    def dims(self) -> dict[str, int]:
        return self.table.dims()

    def __call__(self, batch: dict[str, torch.Tensor]) -> Targets:
        return self.table.gather(batch["row"], batch["view"])
