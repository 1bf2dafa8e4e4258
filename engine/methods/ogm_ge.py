"""OGM-GE (Peng et al., CVPR 2022): joint training with on-the-fly gradient modulation (engine/balancing.py).

Optimiser: the official GeWu-Lab/OGM-GE_CVPR2022 main.py trains with SGD, momentum 0.9, weight decay 1e-4
(lr 1e-3, StepLR 70 × 0.1): SGD is the method's default here (with umt's cosine schedule). Under Adam the
coefficient k is largely normalised away (engine/methods/base.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .. import balancing
from ..options import ConfigError, option
from .base import Method, Parts

if TYPE_CHECKING:
    from ..config import TrainConfig


class OgmGe(Method):
    name = "ogm-ge"
    summary = ("joint + on-the-fly gradient modulation with generalisation enhancement (Peng et al., CVPR 2022):\n"
               "            k and N(0, std(g)) noise on conv weights (MLP encoders: their Linear weight matrices);\n"
               "            SGD by default")
    fusions = ("linear", "sum")
    fusion_needs = "modulates each modality's share of the fused logits"
    optimizer = "sgd"
    prefix = "ogm"
    authors_lr = 0.001

    @dataclass(frozen=True)
    class Options:
        alpha: float = option(0.1, "OGM-GE modulation strength α (the authors': 0.1 VGGSound, 0.8 CREMA-D); k "
                              "scales the conv-weight gradients (MLP encoders of vector views: their Linear weight "
                              "matrices) and GE adds noise of the unmodulated gradient's std to them")
        start: int = option(0, "OGM-GE: first modulated epoch")
        end: int | None = option(None, "OGM-GE: epoch at which modulation stops (default: never)")
        ge: bool = option(True, "OGM-GE: add the generalisation-enhancement noise (--no-ogm-ge: OGM without "
                           "it)")

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        super().check(cfg)
        if cfg.grad_accum > 1:
            raise ConfigError("ogm-ge needs grad_accum 1: it modulates each batch's gradients by that batch's k")

    def after_backward(self, net, batch, feats, epoch, step, accelerator) -> Parts:
        cfg = self.cfg
        if not cfg.ogm_start <= epoch < (cfg.ogm_end if cfg.ogm_end is not None else math.inf):
            return {}
        shares = balancing.modality_logits(net, {m: f.detach().float() for m, f in feats.items()})
        coeffs = balancing.ogm_coefficients(shares, batch["label"], cfg.ogm_alpha,
                                            lambda t: accelerator.reduce(t, "sum"))
        # seeded by (seed, optimiser step): every replica draws the same noise, and a resumed run too
        noise = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step) if cfg.ogm_ge else None
        balancing.modulate_gradients(net, coeffs, noise)
        return {f"ogm_k_{m}": torch.tensor(k) for m, k in coeffs.items()}
