"""UMT distillation targets: the frozen teachers' features for the batch's exact views.

Two sources give the same signal (up to float16 rounding): `CachedTargets` gathers rows of a table
built by `umt-cache build`; `OnlineTeachers` runs the teacher encoders on the batch.
"""
from __future__ import annotations

import torch

from umt.cache import store
from umt.cache.builder import load_teachers
from umt.loaders.shards import manifest_fingerprint
from umt.loaders.views import ViewSpec


class OnlineTeachers:
    """Teachers run every step, frozen and in eval mode, on the student's own view."""

    def __init__(self, checkpoints: dict[str, str], device: torch.device):
        self.encoders, self.fingerprints, self.spec = load_teachers(checkpoints, device)

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: enc(batch[m]).float() for m, enc in self.encoders.items()}


class CachedTargets:
    """A cache's feature table held on the training device; a batch's targets are one gather."""

    def __init__(self, path: str, data_dir: str, spec: ViewSpec, device: torch.device,
                 teachers: dict[str, str] | None = None):
        group = store.open_group(path)
        prints = load_teachers(teachers, torch.device("cpu"))[1] if teachers else None
        store.check(group, path, manifest_fingerprint(data_dir), prints)
        if ViewSpec(**group.attrs["view_spec"]) != spec:
            raise store.CacheError(f"cache {path} holds views of spec {group.attrs['view_spec']}, the run "
                                   f"uses {spec.to_dict()}; train with the cache's view spec")
        self.seed = group.attrs["seed"]
        self.num_views = group.attrs["num_views"]
        self.tables = {m: torch.from_numpy(t).to(device) for m, t in store.load_features(group).items()}

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: t[batch["row"], batch["view"]].float() for m, t in self.tables.items()}
