"""MMCosine (Xu, Feng, Li, Hu, Wei, ICASSP 2023, "MMCosine: Multi-Modal Cosine Loss Towards Balanced
Audio-Visual Fine-Grained Learning"): joint training whose fused logits are a sum of per-modality
cosine similarities, so that no modality dominates the fused logits through the norm of its features
or of its block of the head.

With W_m the [C, D_m] block of the linear fusion head that reads modality m's feature f_m, and
ŵ_m,c = W_m,c / ‖W_m,c‖ (each class's row), f̂_m = f_m / ‖f_m‖:
    z_c = s · Σ_m f̂_m · ŵ_m,c,       L = CE(z, y),       s = 10,
at training and at evaluation alike (the head has no bias): ModelConfig.cosine_scale, `CosineHead`
and `cosine_logits` below.

Source: the authors' GeWu-Lab/MMCosine_ICASSP23, main_CD.py (`--mmcosine`: F.normalize(feature, dim=1)
against F.normalize(fc_out.weight[:, block].T, dim=0), times `--scaling`, 10 by default and in the
README's command; SGD, momentum 0.9, weight decay 1e-4 at 261-262, lr 1e-3 and batch 32 at 60-64 with
200 epochs and a step decay at 100); GeWu-Lab/BalanceBenchmark, balancemm/trainer/MMCosine_trainer.py
(the same logits at training and validation) differs in the scale: 15 in configs/trainer_config.yaml,
`--mmcosine-scale 15` (`mmcosine.scale`). The learning rate is umt's SGD default (docs/methods.md).
Deviations: the head is built without a bias (the official heads keep an unused one); the cosine logits
hold from the first epoch to the last (BalanceBenchmark's modulation window, epochs 0-80, covers its
30 epochs); the official main_CD.py scores its fused accuracy on the plain linear output
(`out` of the model's forward), BalanceBenchmark and this module on the cosine logits. The NCE term
of the paper's supplement (`--lam`, default 0) is not carried over.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models import PARTS, LateFusionNet, ModelPart
from ..options import ConfigError, MethodOptions, option
from .base import Method

if TYPE_CHECKING:
    from ..config import TrainConfig


def cosine_logits(net: LateFusionNet, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MMCosine's per-modality logits s·cos(f_m, W_m,c): the feature and each class's row of the head's
    block for modality m, both L2-normalised, so no modality wins by the norm of its features or weights."""
    out, start = {}, 0
    for m in net.cfg.modalities:
        dim = feats[m].shape[1]
        weight = F.normalize(net.head.weight[:, start:start + dim], dim=1)
        out[m] = net.cfg.cosine_scale * F.normalize(feats[m], dim=1) @ weight.T
        start += dim
    return out


class CosineHead(ModelPart):
    """ModelConfig.cosine_scale > 0: the linear head without a bias, its logits Σ_m s·cos(f_m, W_m,c)."""

    fusion = "linear"

    def head(self, net: LateFusionNet, dim: int) -> nn.Module:
        return nn.Linear(dim, net.cfg.num_classes, bias=False)

    def fuse(self, net: LateFusionNet, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(cosine_logits(net, feats).values())


PARTS["cosine_scale"] = CosineHead()


class MMCosine(Method):
    name = "mmcosine"
    summary = ("joint with fused logits s·Σ_m cos(f_m, W_m,c): feature and per-class weight rows of each\n"
               "            modality normalised (Xu et al., ICASSP 2023; needs --fusion linear)")
    fusions = ("linear",)
    fusion_needs = "normalises each modality's block of a linear head"
    optimizer = "sgd"
    authors_lr = 0.001

    class Options(MethodOptions):
        scale: float = option(10.0, "MMCosine: scale s of the summed per-modality cosine logits (the authors' "
                              "README: --scaling 10; BalanceBenchmark: 15)")

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        super().check(cfg)
        if cfg.mmcosine_scale <= 0:
            raise ConfigError(f"mmcosine scale must be > 0, got {cfg.mmcosine_scale}")

    def model_options(self) -> dict[str, Any]:
        return {"cosine_scale": self.cfg.mmcosine_scale}

    def describe(self) -> str:
        return f"- MMCosine: cosine fused logits, scale s = {self.cfg.mmcosine_scale}\n"
