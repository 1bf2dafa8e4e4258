"""UMT (Du et al., ICML 2023): joint training + λ · Σ_m MSE(student feature_m, teacher feature_m),
targets from a verified cache or from online teachers (engine/targets.py).

Logit targets (`distill_targets: logits` or `both`; default `features`, the paper's): each teacher's
classifier logits z_t on the same view are distilled into the student's per-modality auxiliary head
z_s = A_m f_m (the heads G-Blending uses; ModelConfig.aux_heads) by Hinton et al.'s (2015) KD term

    w · Σ_m T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)),   batch mean, T = logit_temperature, w = logit_weight.

Why an auxiliary head and not the modality's additive share of a linear fused head (OGM-GE's
W_m f_m + b/M): the teacher's logits are a whole uni-modal classifier's, and matching every share to
one would make the fused logits a sum of M teachers' logits (their evidence counted M times, a sum
the fused head's cross-entropy then fights); an auxiliary head leaves the fusion head free, works for
every fusion (mlp too), and costs one small linear layer per modality. The auxiliary heads do not
enter the fused prediction. There is no official UMT logit code: T = 4 and
w = 1 are common KD settings (Hinton et al. use T in 2…20), not tuned.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..options import ConfigError, MethodOptions, option
from ..targets import CachedTargets, OnlineTeachers
from .base import Method, Parts

if TYPE_CHECKING:
    from ..config import TrainConfig

KINDS = {"features": ("features",), "logits": ("logits",), "both": ("features", "logits")}


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), mean over the batch."""
    log_s = F.log_softmax(student / temperature, dim=1)
    log_t = F.log_softmax(teacher / temperature, dim=1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * temperature ** 2


class Umt(Method):
    name = "umt"
    summary = ("joint + λ·Σ_m MSE(student feature_m, frozen teacher feature_m) (Du et al., ICML 2023);\n"
               "            targets from --cache (umt-cache build) or online from --teacher checkpoints;\n"
               "            --distill-targets logits|both: T²·KL(teacher logits ‖ auxiliary head) too")

    class Options(MethodOptions, prefix=""):
        lambda_: float = option(10.0, "UMT weight λ of the feature distillation (BalanceMM uses 10 with mean-reduced "
                                "MSE)", attr="distill_weight", flag="--lambda")
        distill: tuple[str, ...] = option((), "UMT: distil only these modalities (repeatable; default all)",
                                          metavar="MODALITY")
        projector: bool = option(False, "UMT: distil through a learned linear projector, MSE(P·f_student, "
                                 "f_teacher) (FitNets)")
        cache: str | None = option(None, "UMT: teacher-feature cache from `umt-cache build`")
        cache_budget_gb: float = option(8.0, "load the cache whole onto the training device up to this size; "
                                        "beyond it, stream it shard by shard")
        teachers: dict[str, str] = option({}, "UMT: online teacher, or with --cache the teacher to verify the "
                                          "cache against", flag="--teacher", metavar="MODALITY=CKPT")
        targets: str = option("features", "UMT: distil the teachers' features (MSE, the paper's), their logits "
                              "(T²·KL(teacher ‖ student) on per-modality auxiliary heads), or both; from a cache or "
                              "online teachers", choices=tuple(KINDS), attr="distill_targets")
        temperature: float = option(4.0, "UMT logit distillation temperature T (Hinton et al. 2015's KD; T² keeps "
                                    "the gradients' scale)", attr="logit_temperature", flag="--temperature")
        logit_weight: float = option(1.0, "UMT: weight of the logit KL term, T²·KL(teacher ‖ student) per "
                                     "modality")

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        super().check(cfg)
        if not (cfg.cache or cfg.teachers):
            raise ConfigError("umt needs teacher targets: --cache CACHE or --teacher MODALITY=CKPT")
        if not cfg.cache and set(cfg.teachers) != set(cfg.modalities):
            raise ConfigError(f"online umt needs a teacher for each of {list(cfg.modalities)}, "
                              f"got {sorted(cfg.teachers)}")
        if cfg.distill_targets != "features" and cfg.distill and set(cfg.distill) != set(cfg.modalities):
            raise ConfigError("logit distillation trains an auxiliary head for every modality, so it distils "
                              f"them all: drop --distill {' '.join(cfg.distill)} or use --distill-targets features")

    @property
    def kinds(self) -> tuple[str, ...]:
        return KINDS[self.cfg.distill_targets]

    def model_options(self) -> dict[str, Any]:
        cfg = self.cfg
        projector = cfg.projector and "features" in self.kinds
        return {"projector": tuple(cfg.distill or cfg.modalities) if projector else (),
                "aux_heads": "logits" in self.kinds}

    def prepare(self, net, device) -> tuple[int, int | None]:
        cfg = self.cfg
        view_seed, num_views = super().prepare(net, device)
        if cfg.cache:
            self.targets = CachedTargets(cfg.cache, cfg.data, cfg.view, device, cfg.teachers or None,
                                         int(cfg.cache_budget_gb * 2**30), self.kinds)
            for name, given, cached in (("view_seed", cfg.view_seed, self.targets.seed),
                                        ("num_views", cfg.num_views, self.targets.num_views)):
                if given is not None and given != cached:
                    raise ConfigError(f"{name}={given} but the cache {cfg.cache} was built with {cached}")
            view_seed, num_views = self.targets.seed, self.targets.num_views
        else:
            self.targets = OnlineTeachers(cfg.teachers, device, cfg.view, self.kinds)
            classes = {m: t.cfg.num_classes for m, t in self.targets.teachers.items()}
            if any(c != net.cfg.num_classes for c in classes.values()):
                raise ConfigError(f"teachers classify {classes} classes, the data has {net.cfg.num_classes}")
        dims = self.targets.dims()
        student = {m: enc.out_dim for m, enc in net.encoders.items()}
        if "logits" in self.kinds and set(student) - set(dims):
            raise ConfigError(f"logit distillation needs a teacher for each of {sorted(student)}; the "
                              f"targets have {sorted(dims)}")
        if "features" in self.kinds and any(dims.get(m) != student[m] for m in student):
            raise ConfigError(f"teacher feature dims {dims} do not match the student's {student} "
                              "(train the student with the teachers' --width)")
        return view_seed, num_views

    def describe(self) -> str:
        cfg = self.cfg
        source = f"cache `{cfg.cache}`" if cfg.cache else "online teachers (checked against the run's view spec)"
        logits = (f", logit KL T = {cfg.logit_temperature}, weight {cfg.logit_weight}"
                  if "logits" in self.kinds else "")
        return f"- UMT targets: {source}, {cfg.distill_targets}, λ = {cfg.distill_weight}{logits}\n"

    def loss(self, net, batch, logits, feats) -> tuple[torch.Tensor, Parts]:
        cfg = self.cfg
        loss, parts = super().loss(net, batch, logits, feats)
        distilled = cfg.distill or cfg.modalities
        targets = {kind: {m: t for m, t in by_modality.items() if m in distilled}
                   for kind, by_modality in self.targets(batch).items()}
        if "features" in targets:
            distill = sum(F.mse_loss(net.distilled(m, feats[m]), t) for m, t in targets["features"].items())
            loss = loss + cfg.distill_weight * distill
            parts["distill"] = distill.detach()
        if "logits" in targets:
            kd = sum(kd_loss(net.aux_heads[m](feats[m]), t, cfg.logit_temperature)
                     for m, t in targets["logits"].items())
            loss = loss + cfg.logit_weight * kd
            parts["distill_kl"] = kd.detach()
        return loss, parts
