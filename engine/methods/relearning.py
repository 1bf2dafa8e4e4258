"""Diagnosing and Re-learning (Wei, Li, Hu, ECCV 2024, "Diagnosing and Re-learning for Balanced Multimodal
Learning"): joint training in which, every few epochs, each encoder is moved back toward its initial
weights by as much as its features' clustering quality differs between the training and validation
splits (a modality that learnt training-specific features is partly re-learnt).

After training epoch e (counted from 0) with 0 < e < E − 1 (E the run's epochs), e mod `every` = 0 and
e / `every` ≤ `times` (3), with `every` the authors' 20 of their 90 epochs scaled to the run,
max(1, round(20 · E / 90)) (30 epochs: 7, 14, 21; 10 epochs: 2, 4, 6), or --relearn-every's epochs,
for each modality m, on the pooled features of the training and the validation split (centre views,
eval mode), each min-max scaled per unit to [−1, 1]:
    purity_m(split) = (1/N) Σ_clusters max_c |{i in cluster : y_i = c}|     (k-means with k = C classes)
    w_m = tanh(λ · |purity_m(train) − purity_m(val)|),                      λ = 3,
    θ_m ← w_m · θ_m^init + (1 − w_m) · θ_m                                  (every parameter of encoder m)
with θ^init the weights before the first step (a resumed run rebuilds the same ones from the seed
before loading its checkpoint, so they need no checkpoint of their own). The loss is the fused
cross-entropy throughout.

Source: the authors' GeWu-Lab/Diagnosing_Relearning_ECCV2024, code/ours.py (`purity_score` 63-96, `reinit_score`
99-137, `reinit` 139-169, the schedule 415-427: after epoch e > 0 with e mod reinit_epoch = 0, at most
reinit_num times; SGD momentum 0.9, weight decay 1e-4 at 368; --move_lambda 3, --reinit_epoch 20, --reinit_num 3
at 53-56) and code/script/ours.sh (--reinit_epoch 20 --reinit_num 3 --epochs 90); GeWu-Lab/BalanceBenchmark,
balancemm/trainer/ReLearning_trainer.py (the same rule; reinit_epoch 15, reinit_num 2 in
configs/trainer_config.yaml: `--relearn-every 15 --relearn-times 2`). In epochs as given, the authors'
schedule never acts in a run under 21 epochs, hence the scaling; no re-initialisation follows the last
epoch (the authors' last, at 60 of 90, leaves 30 epochs of training after it). Optimiser: SGD (the authors'
lr 2e-3 with 90 epochs and a step decay at 30; here the SGD default of engine/methods/__init__.py, `default_lr`).
Deviations: k-means is this module's (k-means++ seeding from a generator seeded by (seed, epoch,
modality), then Lloyd iterations until the assignment stops changing, at most 300, in float64; the
official uses scikit-learn's KMeans(random_state=0), not a dependency here); the training split's
features are of its centre views (the official reads its training loader's augmented views); the
epoch's validation record is measured before the re-initialisation (the official validates after it).
Optimiser moments are left as they are, as in the official code. Computed on the main process and
broadcast, so every replica moves its weights alike.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import broadcast_object_list

from ..options import ConfigError, MethodOptions, option
from ..evaluate import evaluate_split
from .base import Method

if TYPE_CHECKING:
    from ..config import TrainConfig

AUTHORS_EVERY, AUTHORS_EPOCHS = 20, 90  # code/script/ours.sh: --reinit_epoch 20 --reinit_num 3 --epochs 90


def minmax_scaled(x: torch.Tensor) -> torch.Tensor:
    """Each column mapped linearly to [−1, 1] (a constant column to −1, as scikit-learn's MinMaxScaler)."""
    low, span = x.min(0).values, x.max(0).values - x.min(0).values
    return (x - low) / torch.where(span > 0, span, torch.ones_like(span)) * 2 - 1


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, iterations: int = 300) -> torch.Tensor:
    """Cluster index of each row: k-means++ seeding, then Lloyd iterations until the assignment is stable."""
    x = x.double()
    centres = x[torch.randint(len(x), (1,), generator=generator)]
    while len(centres) < min(k, len(x)):
        d2 = torch.cdist(x, centres).min(1).values ** 2
        pick = torch.multinomial(d2 / d2.sum(), 1, generator=generator) if d2.sum() > 0 else \
            torch.randint(len(x), (1,), generator=generator)
        centres = torch.cat([centres, x[pick]])
    assign = torch.cdist(x, centres).argmin(1)
    for _ in range(iterations):
        centres = torch.stack([x[assign == j].mean(0) if (assign == j).any() else centres[j]
                               for j in range(len(centres))])
        new = torch.cdist(x, centres).argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
    return assign


def period(every: int | None, epochs: int) -> int:
    """Epochs between re-initialisations: `every`, or (None) the authors' 20 of their 90 epochs scaled to a run
    of `epochs`, max(1, round(20 · epochs / 90)), so their 3 re-initialisations fall within any run of 5 or
    more epochs (30 epochs: every 7th)."""
    return every if every is not None else max(1, round(AUTHORS_EVERY * epochs / AUTHORS_EPOCHS))


def purity(labels: torch.Tensor, clusters: torch.Tensor) -> float:
    """Share of samples whose label is their cluster's most frequent one."""
    return sum(int(torch.bincount(labels[clusters == c]).max()) for c in clusters.unique()) / len(labels)


class Relearning(Method):
    name = "relearning"
    summary = ("joint; every few epochs each encoder moved toward its initial weights by tanh(λ·|train − val\n"
               "            k-means purity of its features|) (Wei, Li, Hu, ECCV 2024)")
    optimizer = "sgd"
    authors_lr = 0.002

    class Options(MethodOptions, prefix="relearn"):
        lambda_: float = option(3.0, "Re-learning: λ in the re-initialisation strength tanh(λ·|train − val "
                                "purity|) (BalanceBenchmark: move_lambda 3)")
        every: int | None = option(None, "Re-learning: epochs between re-initialisations (default: the authors' "
                                   "20 of 90 epochs scaled to --epochs, max(1, round(20 x epochs / 90)): every 7 of "
                                   "30; BalanceBenchmark: 15)")
        times: int = option(3, "Re-learning: most re-initialisations (the authors' reinit_num 3; "
                            "BalanceBenchmark: 2)")

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.initial: dict[str, list[torch.Tensor]] = {}
        self.epoch = 0

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        super().check(cfg)
        if (cfg.relearn_every is not None and cfg.relearn_every < 1) or cfg.relearn_times < 0:
            raise ConfigError(f"relearning needs every >= 1 and times >= 0, got {cfg.relearn_every}, "
                              f"{cfg.relearn_times}")

    def prepare(self, net, device) -> tuple[int, int | None]:
        self.initial = {m: [p.detach().clone() for p in enc.parameters()] for m, enc in net.encoders.items()}
        return super().prepare(net, device)

    def begin_epoch(self, epoch: int, steps: range) -> None:
        self.epoch = epoch

    def due(self, epoch: int) -> bool:
        every = period(self.cfg.relearn_every, self.cfg.epochs)
        return 0 < epoch < self.cfg.epochs - 1 and epoch % every == 0 and epoch // every <= self.cfg.relearn_times

    @torch.no_grad()
    def end_of_epoch(self, net, val, accelerator) -> dict[str, Any]:
        if not self.due(self.epoch):
            return {}
        cfg = self.cfg
        net.eval()
        train = evaluate_split(cfg, net, "train", accelerator.device, accelerator)
        net.train()
        scores = None
        if accelerator.is_main_process:
            scores = {}
            for i, m in enumerate(cfg.modalities):
                generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.epoch * 101 + i)
                pure = [purity(split["labels"], kmeans(minmax_scaled(split["features"][m]), net.cfg.num_classes,
                                                       generator)) for split in (train, val)]
                scores[m] = {"train": pure[0], "val": pure[1],
                             "weight": math.tanh(cfg.relearn_lambda * abs(pure[0] - pure[1]))}
        scores = broadcast_object_list([scores])[0]
        for m, encoder in net.encoders.items():
            w = scores[m]["weight"]
            for p, p0 in zip(encoder.parameters(), self.initial[m]):
                p.copy_(w * p0.to(p.device) + (1 - w) * p)
        return {"relearn": scores}
