"""UMT (Du et al., ICML 2023): joint training + λ · Σ_m MSE(student feature_m, teacher feature_m),
targets from a verified cache or from online teachers (engine/targets.py)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..config import ConfigError, TrainConfig
from ..targets import CachedTargets, OnlineTeachers
from .base import Method, Parts


class Umt(Method):
    name = "umt"
    summary = ("joint + λ·Σ_m MSE(student feature_m, frozen teacher feature_m) (Du et al., ICML 2023);\n"
               "            targets from --cache (umt-cache build) or online from --teacher checkpoints")

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        super().check(cfg)
        if not (cfg.cache or cfg.teachers):
            raise ConfigError("umt needs teacher targets: --cache CACHE or --teacher MODALITY=CKPT")
        if not cfg.cache and set(cfg.teachers) != set(cfg.modalities):
            raise ConfigError(f"online umt needs a teacher for each of {list(cfg.modalities)}, "
                              f"got {sorted(cfg.teachers)}")

    def model_options(self) -> dict[str, Any]:
        return {"projector": tuple(self.cfg.distill or self.cfg.modalities) if self.cfg.projector else ()}

    def prepare(self, net, device) -> tuple[int, int | None]:
        cfg = self.cfg
        view_seed, num_views = super().prepare(net, device)
        if cfg.cache:
            self.targets = CachedTargets(cfg.cache, cfg.data, cfg.view, device, cfg.teachers or None,
                                         int(cfg.cache_budget_gb * 2**30))
            for name, given, cached in (("view_seed", cfg.view_seed, self.targets.seed),
                                        ("num_views", cfg.num_views, self.targets.num_views)):
                if given is not None and given != cached:
                    raise ConfigError(f"{name}={given} but the cache {cfg.cache} was built with {cached}")
            view_seed, num_views = self.targets.seed, self.targets.num_views
        else:
            self.targets = OnlineTeachers(cfg.teachers, device, cfg.view)
        dims = self.targets.dims()
        student = {m: enc.out_dim for m, enc in net.encoders.items()}
        if any(dims.get(m) != student[m] for m in student):
            raise ConfigError(f"teacher feature dims {dims} do not match the student's {student} "
                              "(train the student with the teachers' --width)")
        return view_seed, num_views

    def describe(self) -> str:
        cfg = self.cfg
        source = f"cache `{cfg.cache}`" if cfg.cache else "online teachers (checked against the run's view spec)"
        return f"- UMT targets: {source}, λ = {cfg.distill_weight}\n"

    def loss(self, net, batch, logits, feats) -> tuple[torch.Tensor, Parts]:
        loss, parts = super().loss(net, batch, logits, feats)
        distill = sum(F.mse_loss(net.distilled(m, feats[m]), t) for m, t in self.targets(batch).items()
                      if not self.cfg.distill or m in self.cfg.distill)
        return loss + self.cfg.distill_weight * distill, {**parts, "distill": distill.detach()}
