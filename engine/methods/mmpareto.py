"""MMPareto (Wei & Hu, ICML 2024): the multi-modal loss and one uni-modal loss per modality, and for each
modality's encoder the two losses' gradients combined by the Pareto rule.

Losses (GeWu-Lab/MMPareto_ICML2024, code/MMPareto.py; uni-modal logits from a linear head of their
own, code/models/models.py `head_audio`/`head_video`: here the auxiliary heads):
    L = CE(fused logits) + Σ_m CE(head_m(f_m)).
The heads take the plain gradient of L. For encoder m, with g = ∇L_mm and h = ∇L_m over all its
parameters (flattened, as the official `concat`):
    cos(g, h) > 0:  (k_g, k_h) = (1/2, 1/2)
    otherwise:      the 2-task min-norm point, k_g = argmin_{k∈[0,1]} ‖k g + (1−k) h‖
                    = (‖h‖² − g·h) / ‖g − h‖²  (MinNormSolver._min_norm_element_from2, which clips to
                    0.999 / 0.001 when one gradient's projection dominates; never when g·h ≤ 0)
and then, per parameter tensor p (the official magnitude rule), with the summed gradient s_p = g_p + h_p
and c_p = 2 k_g g_p + 2 k_h h_p:
    grad_p = γ · c_p · max(1, ‖s_p‖ / ‖c_p‖),   γ = 1.5.
In the conflicting case c is a convex combination's double, so c·g ≥ 0 and c·h ≥ 0 (the Pareto
property the paper's method is named for).

Multi-process: g comes from torch.autograd.grad, which DDP does not all-reduce, so it is averaged over
ranks here; s is the DDP-averaged gradient of L (encoder m receives no gradient from the other
modalities' uni-modal losses), and h = s − g. Every rank then applies the same rule to the same numbers.
Refused: grad_accum > 1 (the rule needs each step's separate gradients, which accumulation would
mix) and fp16 (its loss scaling scales s but not g).
Cost: one extra backward pass through the encoders per step (the official code runs four in all).
Optimiser: the official code trains with SGD, momentum 0.9, weight decay 1e-4 (lr 2e-3, StepLR 30 × 0.1):
SGD is the method's default here (with umt's cosine schedule). Under Adam, γ is a no-op apart from ε
(engine/methods/base.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..options import ConfigError, MethodOptions, option
from .base import Method, Parts
from .gblend import head_losses

if TYPE_CHECKING:
    from ..config import TrainConfig


def pareto_weights(gg: float, gh: float, hh: float) -> tuple[float, float]:
    """(k_g, k_h): equal when the gradients agree (cosine > 0), else the 2-task min-norm weights."""
    if gh > 0:
        return 0.5, 0.5
    if gh >= gg:  # only when g = 0 (then gh = 0): the official solver's end points
        return 0.999, 0.001
    if gh >= hh:
        return 0.001, 0.999
    k = (hh - gh) / (gg + hh - 2 * gh)
    return k, 1 - k


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """The inner product of two gradients given tensor by tensor (in float64)."""
    return sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b))


def combine(g: list[torch.Tensor], h: list[torch.Tensor], gamma: float) -> tuple[list[torch.Tensor], float, float]:
    """The new gradient of each tensor of one encoder from its multi-modal (g) and uni-modal (h)
    gradients; returns it with the cosine of g and h and the weight k_g."""
    gg, gh, hh = _dot(g, g), _dot(g, h), _dot(h, h)
    k_g, k_h = pareto_weights(gg, gh, hh)
    out = []
    for gp, hp in zip(g, h):
        new = 2 * k_g * gp + 2 * k_h * hp
        norm = new.norm()
        scale = torch.clamp((gp + hp).norm() / norm, min=1.0) if norm > 0 else 1.0
        out.append(gamma * scale * new)
    return out, gh / max((gg * hh) ** 0.5, 1e-30), k_g


class MMPareto(Method):
    name = "mmpareto"
    summary = ("multi-modal + uni-modal losses; each encoder's two gradients combined by the Pareto rule\n"
               "            (equal weights when they agree, min-norm when they conflict; Wei & Hu, ICML 2024);\n"
               "            SGD by default")
    optimizer = "sgd"
    authors_lr = 0.002

    class Options(MethodOptions, prefix="pareto"):
        gamma: float = option(1.5, "MMPareto: factor on each encoder's combined gradient after its rescaling to "
                              "the summed gradient's norm (MMPareto.py: gamma=1.5)")

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        super().check(cfg)
        if cfg.grad_accum > 1:
            raise ConfigError("mmpareto needs grad_accum 1: it combines each step's multi-modal and uni-modal "
                              "gradients, which accumulation over micro-batches would mix")
        if cfg.precision == "fp16":
            raise ConfigError("mmpareto does not run with fp16 (its loss scaling would scale the summed gradient "
                              "but not the separately computed multi-modal one); use bf16 or no")

    def model_options(self) -> dict[str, Any]:
        return {"aux_heads": True}

    def loss(self, net, batch, logits, feats) -> tuple[torch.Tensor, Parts]:
        losses = head_losses(net, logits, feats, batch["label"])
        params = [p for m in net.cfg.modalities for p in net.encoders[m].parameters()]
        grads = torch.autograd.grad(losses["fused"], params, retain_graph=True, allow_unused=True)
        self.fused_grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        return sum(losses.values()), {f"ce_{k}": v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def after_backward(self, net, batch, feats, epoch, step, accelerator) -> Parts:
        flat = accelerator.reduce(torch.cat([g.flatten() for g in self.fused_grads]), "mean")
        fused = iter(flat.split([g.numel() for g in self.fused_grads]))
        parts = {}
        for m in net.cfg.modalities:
            params = list(net.encoders[m].parameters())
            g = [next(fused).view_as(p) for p in params]
            s = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            new, cos, k_g = combine(g, [sp - gp for sp, gp in zip(s, g)], self.cfg.pareto_gamma)
            for p, grad in zip(params, new):
                if p.grad is None:
                    p.grad = grad
                else:
                    p.grad.copy_(grad)
            parts[f"pareto_cos_{m}"], parts[f"pareto_k_{m}"] = torch.tensor(cos), torch.tensor(k_g)
        self.fused_grads = []
        return parts
