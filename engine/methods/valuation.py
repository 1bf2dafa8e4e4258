"""Modality-valuation, sample-level (Wei, Feng, Lin, Hu, CVPR 2024, "Enhancing multimodal Cooperation via
Sample-level Modality Valuation"): each training sample's modalities are valued by their Shapley
contribution to a correct prediction, and the modality a sample hardly uses is trained more on that
sample, by copies of it in which only that modality is present.

After epoch e ≥ `warmup` − 1 (from 0; warm-up 5), on every training sample i (centre views, eval mode),
with M the modalities, S ⊆ M, x_S the sample with the features of the modalities outside S zeroed
before the fusion head, and H the model's prediction,
    v_i(S) = |S| · [H(x_S) = y_i]                 (v_i(∅) = 0),
    φ_i,m = Σ_{S ⊆ M∖{m}} |S|! (|M| − |S| − 1)! / |M|! · (v_i(S ∪ {m}) − v_i(S)),
    c_i,m = 1 if 0.4 < φ_i,m < 0.9,   2 if −0.1 < φ_i,m < 0.4,   3 if φ_i,m < −0.1,   else 0,
(for two modalities φ_i,m ∈ {−0.5, 0, 0.5, 1, 1.5}: a modality that adds nothing to a correct prediction,
or harms one, gets the most copies). In epoch e + 1, a batch B of samples with fused logits z_i and,
per modality, the logits z_i^m with only m present, is trained on
    L = (1/|B|) Σ_i [ CE(z_i, y_i) + Σ_m c_i,m · CE(z_i^m, y_i) ].
Before that, L is the fused cross-entropy (plain joint training).

Source: the authors' GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation, code/sample_level.py
(`execute_modulation`: v = 2 for a correct prediction from both modalities, 1 from one, contributions
(v_a + v_all − v_v)/2; the values are refreshed after every epoch from warmup − 1 on; --warmup 5; Adam,
lr 5e-5, weight decay 1e-4, so AdamW is this method's optimiser) and code/datasets/dataloader.py
(`AV_KS_Dataset_sample_level`: the thresholds and copies, a copy's other modality zeroed after its
encoder in models.py); GeWu-Lab/BalanceBenchmark, balancemm/evaluation/modalitys.py
(`Calculate_Shapley_Sample`, with v(S) = [correct], not |S|·[correct], and a cache of predictions that is
never cleared between batches, so every batch after the first gets the first batch's values) and
balancemm/datasets/__init__.py (`create_dataset_sample_level`, the same thresholds for any number of
modalities, upper bound 1 instead of 0.9: the same copies for the values that occur).
Deviations: the official code appends the copies to the training set, so each epoch after the warm-up
is longer and the copies land in other batches, on views of their own; here a copy shares its sample's
batch and view and enters as a weighted term of that batch's loss (an epoch keeps its steps; each copy
counts as much as an original sample, as in the official enlarged set). The values are computed on the
training split's centre views (the official re-reads the training set with its training augmentation),
on the main process, and broadcast. Fusion heads: linear (the official concatenation), sum or mlp; a
modality is removed by zeroing its feature before the head.
"""
from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from accelerate.utils import broadcast_object_list

from ..options import ConfigError, MethodOptions, option
from ..evaluate import evaluate_split
from ..models import LateFusionNet
from .base import ZEROING_FUSIONS, ZEROING_NEEDS, Method, Parts

if TYPE_CHECKING:
    from ..config import TrainConfig


def shapley_values(correct: dict[frozenset[str], torch.Tensor], mods: list[str]) -> torch.Tensor:
    """[N, M] φ_i,m from the correctness [N] of the prediction with each non-empty subset S of `mods`
    present, with v(S) = |S|·[correct] and v(∅) = 0."""
    n = len(mods)
    value = {s: len(s) * c.double() for s, c in correct.items()}
    zero = torch.zeros_like(next(iter(value.values())))
    out = []
    for m in mods:
        others = [o for o in mods if o != m]
        phi = torch.zeros_like(zero)
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for subset in itertools.combinations(others, size):
                s = frozenset(subset)
                phi += weight * (value[s | {m}] - value.get(s, zero))
        out.append(phi)
    return torch.stack(out, 1)


def copies(values: torch.Tensor) -> torch.Tensor:
    """The official copies per value: 1 in (0.4, 0.9), 2 in (−0.1, 0.4), 3 below −0.1, none otherwise."""
    out = torch.zeros(values.shape, dtype=torch.int8)
    out[(values > 0.4) & (values < 0.9)] = 1
    out[(values > -0.1) & (values < 0.4)] = 2
    out[values < -0.1] = 3
    return out


def only(feats: dict[str, torch.Tensor], present: set[str] | frozenset[str]) -> dict[str, torch.Tensor]:
    """`feats` with every modality outside `present` zeroed."""
    return {m: f if m in present else torch.zeros_like(f) for m, f in feats.items()}


@torch.no_grad()
def subset_correctness(net: LateFusionNet, feats: dict[str, torch.Tensor], labels: torch.Tensor,
                       chunk: int = 4096) -> dict[frozenset[str], torch.Tensor]:
    """Whether the prediction with only S present is right, per sample, for every non-empty subset S."""
    mods, device = list(net.cfg.modalities), next(net.parameters()).device
    out = {}
    for size in range(1, len(mods) + 1):
        for subset in itertools.combinations(mods, size):
            s = frozenset(subset)
            out[s] = torch.cat([net.fuse(only({m: f[i:i + chunk].to(device) for m, f in feats.items()}, s))
                                .argmax(1).cpu() == labels[i:i + chunk] for i in range(0, len(labels), chunk)])
    return out


class Valuation(Method):
    name = "valuation"
    summary = ("joint; after a warm-up, each sample's modalities are valued (Shapley) every epoch and a\n"
               "            modality of low value gets weighted copies of the sample with only it present\n"
               "            (Wei et al., CVPR 2024)")
    fusions = ZEROING_FUSIONS
    fusion_needs = ZEROING_NEEDS

    class Options(MethodOptions):
        warmup: int = option(5, "Modality-valuation: epochs of plain joint training before samples are valued "
                             "and copied (the authors' --warmup 5)")

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.copies: torch.Tensor | None = None  # [rows of the training split, M] copies of each sample, modality
        self.epoch = 0

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        super().check(cfg)
        if cfg.valuation_warmup < 1:
            raise ConfigError(f"valuation values samples with the model of a finished epoch: warmup must be >= 1, "
                              f"got {cfg.valuation_warmup}")

    def begin_epoch(self, epoch: int, steps: range) -> None:
        self.epoch = epoch

    def loss(self, net, batch, logits, feats) -> tuple[torch.Tensor, Parts]:
        labels = batch["label"]
        ce = F.cross_entropy(logits, labels)
        if self.epoch < self.cfg.valuation_warmup or self.copies is None:
            return ce, {"ce": ce.detach()}
        if self.copies.device != labels.device:  # once per refresh: rows are then looked up where they lie
            self.copies = self.copies.to(labels.device)
        counts = self.copies[batch["row"]].float()  # [B, M]
        extra = logits.new_zeros(())
        for j, m in enumerate(net.cfg.modalities):
            extra = extra + (counts[:, j] * F.cross_entropy(net.fuse(only(feats, {m})), labels, reduction="none")).sum()
        extra = extra / len(labels)
        return ce + extra, {"ce": ce.detach(), "valuation_extra": extra.detach(),
                            "valuation_copies": counts.sum(1).mean()}

    @torch.no_grad()
    def end_of_epoch(self, net, val, accelerator) -> dict[str, Any]:
        cfg = self.cfg
        if self.epoch < cfg.valuation_warmup - 1 or self.epoch + 1 >= cfg.epochs:
            return {}
        mods = list(cfg.modalities)
        net.eval()
        train = evaluate_split(cfg, net, "train", accelerator.device, accelerator, mods)
        result = None
        if accelerator.is_main_process:
            values = shapley_values(subset_correctness(net, train["features"], train["labels"]), mods)
            counts = copies(values)
            result = (counts, {m: float(values[:, j].mean()) for j, m in enumerate(mods)},
                      {m: int(counts[:, j].sum()) for j, m in enumerate(mods)})
        net.train()
        self.copies, mean_values, total = broadcast_object_list([result])[0]
        return {"valuation_mean": mean_values, "valuation_copies": total}

    def state_dict(self) -> dict[str, Any]:
        return {"copies": None if self.copies is None else self.copies.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.copies = state["copies"]
