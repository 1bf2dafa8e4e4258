"""MBSD, as GeWu-Lab/BalanceBenchmark implements it (an objective-level method of its Section 3): joint
training plus each modality's own cross-entropy and, on the samples one of two modalities already gets
right, terms that pull the two modalities' predictions together, weighted by how far apart they are.

With u_m = W_m f_m + b/M modality m's additive share of the fused logits (LateFusionNet.modality_logits),
p_m = softmax(u_m), and for a pair (a, b) of modalities and sample i of a batch of B, C classes,
    w_i  = |p_a,i,y − p_b,i,y|  if argmax p_a,i = y or argmax p_b,i = y, else 0,
    s_i  = max(p_a,i,y, p_b,i,y),   v_i = min(p_a,i,y, p_b,i,y)      (the stronger and weaker true-class probability)
    RS   = (1/B) Σ_i w_i · (1/C) Σ_c (u_a,i,c − u_b,i,c)²
    KL   = (1/B) Σ_i w_i · v_i (log v_i − s_i)
and L = CE(fused logits) + Σ_m CE(u_m) + mean over pairs of (RS + KL).

KL is what the official `F.kl_div(ps, pw, reduction='none')` computes from two probabilities
(kl_div expects its first argument as a log-probability; the official passes the probability s_i):
followed as written. Gradients flow through w, s and v too (the official code writes them into tensors
by item assignment, which autograd tracks).

Source: GeWu-Lab/BalanceBenchmark, balancemm/trainer/MBSD_trainer.py (`training_step`; no knobs beside the
modulation window, epochs 0-80 of its 30, so here always on); the original authors' code is not in our
reference index.
Deviations: for more than two modalities the pairs' terms are averaged as in the official three-modality
branch, but RS is taken on the logit shares as in its two-modality branch (the three-modality branch
takes it on probabilities).
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from .base import Method, Parts


def pair_terms(u_a: torch.Tensor, u_b: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(RS, KL) of one pair of modalities' logit shares on a batch."""
    p_a, p_b = u_a.softmax(1), u_b.softmax(1)
    t_a, t_b = p_a.gather(1, labels[:, None])[:, 0], p_b.gather(1, labels[:, None])[:, 0]
    either = (p_a.argmax(1) == labels) | (p_b.argmax(1) == labels)
    w = torch.where(either, (t_a - t_b).abs(), torch.zeros_like(t_a))
    strong, weak = torch.maximum(t_a, t_b), torch.minimum(t_a, t_b)
    rs = (w * ((u_a - u_b) ** 2).mean(1)).mean()
    kl = (w * (torch.xlogy(weak, weak) - weak * strong)).mean()
    return rs, kl


class Mbsd(Method):
    name = "mbsd"
    summary = ("joint + uni-modal cross-entropies + per-sample weighted agreement terms between the modalities'\n"
               "            logit shares (BalanceBenchmark's MBSD; needs --fusion linear or sum)")
    fusions = ("linear", "sum")
    fusion_needs = "takes its uni-modal logits as each modality's share of the fused logits"

    def loss(self, net, batch, logits, feats) -> tuple[torch.Tensor, Parts]:
        labels = batch["label"]
        shares = net.modality_logits(feats)
        ce = F.cross_entropy(logits, labels)
        uni = sum(F.cross_entropy(u, labels) for u in shares.values())
        pairs = [pair_terms(shares[a], shares[b], labels) for a, b in itertools.combinations(net.cfg.modalities, 2)]
        rs, kl = (sum(t) / len(pairs) for t in zip(*pairs))
        return ce + uni + rs + kl, {"ce": ce.detach(), "ce_unimodal": uni.detach(), "mbsd_rs": rs.detach(),
                                    "mbsd_kl": kl.detach()}
