"""OPM, on-the-fly prediction modulation (Wei, Hu et al., TPAMI 2024, "On-the-fly Modulation for Balanced
Multimodal Learning"): joint training that drops the dominant modality's features from some samples,
more often the more it dominates.

Per batch, with u_m = W_m f_m + b/M modality m's additive share of the fused logits (LateFusionNet.modality_logits),
    s_m = Σ_i softmax(u_m,i)_{y_i},        r_m = tanh(max(0, s_m / Σ_{o≠m} s_o − 1)),
    q_m = clip(q_base · (1 + α · r_m), 0, 1) if r_m > 0 else 0          (q_base 0.4, α 0.5),
so only a modality that outscores the others is dropped. With probability p_exe (0.7) the batch is
modulated: each sample keeps modality m with probability 1 − q_m (a Bernoulli mask per sample and
modality), the kept features are divided by 1 − θ with θ = Σ_m d_m q_m / Σ_m d_m (d_m the feature
dimension: the expected share of dropped feature units), samples that lost every modality leave
the batch, and L = CE(fuse(masked features), y) over the rest. Otherwise L = CE(fused logits, y).

Source: GeWu-Lab/BML_TPAMI2024, code/models/Classifier.py (`calcu_q`, `Modality_drop.execute_drop`;
q_base 0.4, p_exe 0.7 in code/config.py, `--lam` α) and main.py (the loss of the fused output only;
no dropping in warm-up epochs 0-5); GeWu-Lab/BalanceBenchmark, balancemm/trainer/OPM_trainer.py
(α 0.5, p_exe 0.7, q_base 0.4, modulation from epoch 0 in configs/trainer_config.yaml: this module's
defaults; for three modalities the ratio over the sum of the others' scores, as here).
Deviations: the scores s_m are summed over all ranks' samples, so every replica drops with the same
q; the coin is drawn per micro-batch from (seed, optimiser step, micro-batch of the window), the
same on every rank, and each sample's masks from (seed, optimiser step, sample row), so a resumed
run draws the same; a rank whose samples all lost every modality contributes a zero gradient (the
official code skips the batch); no 1e-5 in 1 − θ (BalanceBenchmark's; at most one modality has
q > 0, so θ < 1).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import reduce

from ..options import ConfigError, MethodOptions, option
from .base import Method, Parts

if TYPE_CHECKING:
    from ..config import TrainConfig


def drop_probabilities(scores: dict[str, float], q_base: float, alpha: float) -> dict[str, float]:
    """q_m from the modalities' summed true-class confidences: 0 unless m outscores the others together."""
    q = {}
    for m, s in scores.items():
        ratio = math.tanh(max(0.0, s / sum(v for o, v in scores.items() if o != m) - 1))
        q[m] = min(max(q_base * (1 + alpha * ratio), 0.0), 1.0) if ratio > 0 else 0.0
    return q


def keep_masks(seed: int, step: int, rows: torch.Tensor, q: list[float]) -> torch.Tensor:
    """[B, M] 1 where a sample keeps a modality (probability 1 − q_m), drawn from (seed, step, row)."""
    draws = np.stack([np.random.default_rng([seed, step, row]).random(len(q)) for row in rows.tolist()])
    return torch.from_numpy(draws >= np.asarray(q)).float()


class Opm(Method):
    name = "opm"
    summary = ("joint + on-the-fly prediction modulation (Wei, Hu et al., TPAMI 2024): the dominant\n"
               "            modality's features dropped per sample with probability q (needs --fusion linear or sum)")
    fusions = ("linear", "sum")
    fusion_needs = "scores each modality by its share of the fused logits"

    class Options(MethodOptions):
        alpha: float = option(0.5, "OPM: α, growth of the dominant modality's drop probability with its lead "
                              "(BalanceBenchmark: 0.5)")
        p_exe: float = option(0.7, "OPM: probability that a batch is modulated")
        q_base: float = option(0.5, "OPM: base drop probability q_base (the authors' scripts/train_opm.sh; their "
                               "config.py and BalanceBenchmark: 0.4)")
        start: int = option(0, "OPM: first modulated epoch (BalanceBenchmark 0; BML_TPAMI2024 warms up 6)")

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.step = 0    # the optimiser step the coming micro-batches belong to
        self.micro = 0   # micro-batches of that step so far
        self.epoch = 0

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        super().check(cfg)
        if not 0 <= cfg.opm_p_exe <= 1 or not 0 <= cfg.opm_q_base <= 1:
            raise ConfigError(f"opm p_exe and q_base must lie in [0, 1], got {cfg.opm_p_exe}, {cfg.opm_q_base}")

    def begin_epoch(self, epoch: int, steps: range) -> None:
        self.epoch = epoch

    def loss(self, net, batch, logits, feats) -> tuple[torch.Tensor, Parts]:
        cfg, labels, mods = self.cfg, batch["label"], list(net.cfg.modalities)
        micro, self.micro = self.micro, self.micro + 1
        if self.epoch < cfg.opm_start:
            return super().loss(net, batch, logits, feats)
        with torch.no_grad():
            shares = net.modality_logits({m: feats[m].detach() for m in mods})
            sums = reduce(torch.stack([shares[m].softmax(1).gather(1, labels[:, None]).sum() for m in mods]), "sum")
        q = drop_probabilities(dict(zip(mods, sums.tolist())), cfg.opm_q_base, cfg.opm_alpha)
        parts = {f"opm_q_{m}": torch.tensor(q[m]) for m in mods}
        if np.random.default_rng([cfg.seed, self.step, micro]).random() >= cfg.opm_p_exe:
            loss = F.cross_entropy(logits, labels)
            return loss, {"ce": loss.detach(), **parts}
        keep = keep_masks(cfg.seed, self.step, batch["row"], [q[m] for m in mods]).to(labels.device)
        dims = [feats[m].shape[1] for m in mods]
        theta = sum(d * q[m] for d, m in zip(dims, mods)) / sum(dims)
        masked = {m: feats[m] * keep[:, i, None] / (1 - theta) for i, m in enumerate(mods)}
        present = keep.sum(1) > 0
        if not present.any():  # every sample lost every modality: a zero gradient keeps DDP's buckets full
            loss = 0.0 * logits.sum()
        else:
            loss = F.cross_entropy(net.fuse(masked)[present], labels[present])
        return loss, {"ce": loss.detach(), "opm_kept_share": present.float().mean(), **parts}

    def after_backward(self, net, batch, feats, epoch, step, accelerator) -> Parts:
        self.step, self.micro = step + 1, 0
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.micro = state["step"], 0
