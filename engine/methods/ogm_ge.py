"""OGM-GE (Peng et al., CVPR 2022): joint training with on-the-fly gradient modulation.

Per batch, each modality's share of the fused logits gives a confidence in the true class, s^m = Σ_i softmax(W_m f_m(x_i) + b/M)_{y_i} (for `sum` fusion, that
modality's own head). The discrepancy ratio ρ^m = s^m / mean_{m'≠m} s^{m'} (for two modalities, the
paper's s^a / s^v) sets the coefficient k^m = 1 − tanh(α · ρ^m) when ρ^m > 1, else 1, which scales
the convolution-weight gradients of modality m's encoder (GeWu-Lab/OGM-GE_CVPR2022; for an MLP
encoder, its Linear weight matrices); generalisation enhancement (GE) then adds Gaussian noise with
the standard deviation of the unmodulated gradient to each of them, g ← k·g + N(0, std(g)). Only for
`linear` or `sum` fusion, whose logits split by modality. Counts are summed over ranks and the
noise is seeded by (seed, step), so every replica applies the same update.

Optimiser: the official GeWu-Lab/OGM-GE_CVPR2022 main.py trains with SGD, momentum 0.9, weight decay 1e-4
(lr 1e-3, StepLR 70 × 0.1): SGD is the method's default here (with umt's cosine schedule). Under Adam the
coefficient k is largely normalised away (engine/methods/base.py).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ..models import LateFusionNet
from ..options import ConfigError, MethodOptions, option
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
    authors_lr = 0.001

    class Options(MethodOptions, prefix="ogm"):
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
        shares = net.modality_logits({m: f.detach().float() for m, f in feats.items()})
        coeffs = ogm_coefficients(shares, batch["label"], cfg.ogm_alpha, lambda t: accelerator.reduce(t, "sum"))
        # seeded by (seed, optimiser step): every replica draws the same noise, and a resumed run too
        noise = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step) if cfg.ogm_ge else None
        modulate_gradients(net, coeffs, noise)
        return {f"ogm_k_{m}": torch.tensor(k) for m, k in coeffs.items()}


def ogm_coefficients(shares: dict[str, torch.Tensor], labels: torch.Tensor, alpha: float,
                     reduce=lambda t: t) -> dict[str, float]:
    """k^m for each modality from the batch (confidences summed over ranks by `reduce`)."""
    scores = {m: reduce(logits.softmax(1).gather(1, labels[:, None]).sum()) for m, logits in shares.items()}
    coeffs = {}
    for m, s in scores.items():
        others = [scores[o] for o in scores if o != m]
        ratio = float(s.detach() / (sum(others).detach() / len(others) + 1e-12))
        coeffs[m] = 1 - math.tanh(alpha * ratio) if ratio > 1 else 1.0
    return coeffs


def modulated(net: LateFusionNet, modality: str) -> list[torch.nn.Parameter]:
    """The tensors OGM-GE modulates: convolution weights (4-D, as the official code), or for an encoder
    without convolutions (the MLP of vector views) its Linear weight matrices, by the same rule."""
    params = list(net.encoders[modality].parameters())
    convs = [p for p in params if p.dim() == 4]
    return convs or [p for p in params if p.dim() == 2]


def modulate_gradients(net: LateFusionNet, coeffs: dict[str, float], generator: torch.Generator | None) -> None:
    """g ← k^m·g (+ N(0, std(g)) with a generator: GE noise of the unmodulated gradient's std)."""
    for m, k in coeffs.items():
        for p in modulated(net, m):
            if p.grad is None:
                continue
            sigma = p.grad.std().item() + 1e-8
            p.grad.mul_(k)
            if generator is not None:
                noise = torch.randn(p.grad.shape, generator=generator, dtype=p.grad.dtype)
                p.grad.add_(noise.to(p.grad.device) * sigma)
