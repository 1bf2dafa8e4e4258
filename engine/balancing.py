"""Peers' baselines for modality imbalance: OGM-GE and Gradient Blending.

OGM-GE (Peng et al., CVPR 2022). Per batch, each modality's share of the fused logits gives a
confidence in the true class, s^m = Σ_i softmax(W_m f_m(x_i) + b/M)_{y_i} (for `sum` fusion, that
modality's own head). The discrepancy ratio ρ^m = s^m / mean_{m'≠m} s^{m'} (for two modalities, the
paper's s^a / s^v) sets the coefficient k^m = 1 − tanh(α · ρ^m) when ρ^m > 1, else 1, which scales
the convolution-weight gradients of modality m's encoder (GeWu-Lab/OGM-GE_CVPR2022; for an MLP
encoder, its Linear weight matrices); generalisation enhancement (GE) then adds Gaussian noise with
the standard deviation of the unmodulated gradient to each of them, g ← k·g + N(0, std(g)). Only for
`linear` or `sum` fusion, whose logits split by modality. Counts are summed over ranks and the
noise is seeded by (seed, step), so every replica applies the same update.

Gradient Blending (Wang, Tran, Feiszli, CVPR 2020). Loss = Σ_k w_k · CE_k over the fused head and
one auxiliary linear head per modality. After each epoch, with train and validation losses of each
head at the previous and current epoch: generalisation G_k = L^val_prev − L^val_now, overfitting
O_k = (L^val_now − L^train_now) − (L^val_prev − L^train_prev), and w_k ∝ G_k / O_k² (negative G
clipped to 0; normalised to sum 1). Uniform weights until two epochs have been measured.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .models import LateFusionNet


def modality_logits(net: LateFusionNet, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each modality's additive share of the fused logits (linear or sum fusion only)."""
    mods = net.cfg.modalities
    if net.cfg.fusion == "sum":
        return {m: net.head[m](feats[m]) for m in mods}
    if net.cfg.fusion != "linear":
        raise ValueError("OGM-GE needs fusion 'linear' or 'sum', whose logits split by modality")
    out, start = {}, 0
    for m in mods:
        dim = feats[m].shape[1]
        out[m] = feats[m] @ net.head.weight[:, start:start + dim].T + net.head.bias / len(mods)
        start += dim
    return out


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


def head_losses(net: LateFusionNet, logits: torch.Tensor, feats: dict[str, torch.Tensor],
                labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cross-entropy of the fused head and of each modality's auxiliary head (G-Blending)."""
    losses = {"fused": F.cross_entropy(logits, labels)}
    for m, head in net.aux_heads.items():
        losses[m] = F.cross_entropy(head(feats[m]), labels)
    return losses


def blend_weights(prev: dict[str, tuple[float, float]], now: dict[str, tuple[float, float]]) -> dict[str, float]:
    """w_k ∝ G_k / O_k² from (train, val) losses per head at two epochs."""
    raw = {}
    for k, (train_now, val_now) in now.items():
        train_prev, val_prev = prev[k]
        gain = max(val_prev - val_now, 0.0)
        overfit = (val_now - train_now) - (val_prev - train_prev)
        raw[k] = gain / (overfit ** 2 + 1e-8)
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()} if total > 0 else {k: 1 / len(raw) for k in raw}
