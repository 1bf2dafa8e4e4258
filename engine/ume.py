"""Uni-Modal Ensemble (UME): uni-modal models trained separately, their outputs averaged.

Members' logits (or probabilities) are averaged, uniformly or with weights fit on the validation
split (a grid over the simplex, step 0.05: no gradient, no overfitting machinery needed for 2-4
members). No joint training at all.
"""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import torch

from umt.loaders.stored.views import ViewSpec

from .checkpoint import check_views, load_model
from .evaluate import evaluate_split, final_evaluation, top1
from .models import LateFusionNet
from .options import ConfigError, MethodOptions, option

if TYPE_CHECKING:
    from .config import TrainConfig

SUMMARY = "evaluation only (never trains): average the logits of uni-modal --member checkpoints"


class Options(MethodOptions):
    members: dict[str, str] = option({}, "UME member", attr="members", flag="--member", metavar="MODALITY=CKPT")
    combine: str = option("logits", "UME: average logits or probabilities", choices=("logits", "probs"))
    fit_weights: bool = option(False, "UME: fit member weights on the validation split")


def check(cfg: TrainConfig) -> None:
    if len(cfg.members) < 2:
        raise ConfigError("ume combines two or more uni-modal checkpoints: --member MODALITY=CKPT")


def load_members(paths: dict[str, str], num_classes: int, device: torch.device,
                 spec: ViewSpec) -> dict[str, LateFusionNet]:
    """Uni-modal models for `num_classes` classes, each trained on the view spec `spec`."""
    members = {}
    for m, path in sorted(paths.items()):
        model, ckpt = load_model(path)
        if tuple(model.cfg.modalities) != (m,) or model.cfg.num_classes != num_classes:
            raise ConfigError(f"UME member {path} is not a uni-modal {m} model for {num_classes} classes")
        check_views("UME member", path, ckpt, spec)
        members[m] = model.to(device).eval()
    return members


def combine(stacked: torch.Tensor, how: str, weights: torch.Tensor) -> torch.Tensor:
    """[N, M, K] member logits → [N, K] ensemble scores."""
    parts = stacked if how == "logits" else stacked.softmax(-1)
    return (parts * weights.view(1, -1, 1)).sum(1)


def fit_weights(stacked: torch.Tensor, labels: torch.Tensor, how: str, step: float = 0.05) -> torch.Tensor:
    """The simplex point (grid `step`) with the best accuracy; ties go to the most uniform one."""
    m = stacked.shape[1]
    ticks = round(1 / step)
    best, best_key = None, None
    for combo in itertools.product(range(ticks + 1), repeat=m - 1):
        if sum(combo) > ticks:
            continue
        w = torch.tensor([*combo, ticks - sum(combo)], dtype=torch.float32) / ticks
        key = (top1(combine(stacked, how, w), labels), -float((w - 1 / m).abs().sum()))
        if best_key is None or key > best_key:
            best, best_key = w, key
    return best


def forward_fn(members: dict[str, LateFusionNet]):
    """A `collect` forward: stacked member logits [B, M, K] and each member's encoder feature."""
    names = sorted(members)

    def forward(batch):
        outs = {m: members[m](batch) for m in names}
        return torch.stack([outs[m][0] for m in names], 1), {m: outs[m][1][m] for m in names}
    return forward


@torch.no_grad()
def evaluate(cfg: TrainConfig, num_classes: int, device: torch.device) -> dict:
    members = load_members(cfg.members, num_classes, device, cfg.view)
    names = sorted(members)
    forward = forward_fn(members)
    weights = torch.full((len(names),), 1 / len(names))
    if cfg.ume_fit_weights:
        val = evaluate_split(cfg, forward, "val", device, modalities=names)
        weights = fit_weights(val["logits"], val["labels"], cfg.ume_combine)
    results = final_evaluation(forward, cfg, device, tuple(names),
                               scores=lambda stacked: combine(stacked, cfg.ume_combine, weights))
    results["ume"] = {"combine": cfg.ume_combine, "weights": dict(zip(names, weights.tolist()))}
    return results
