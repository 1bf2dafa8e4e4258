"""ReconBoost (Hua, Xu, Wu, Zhang, Wang, ICML 2024, "ReconBoost: Boosting Can Achieve Modality
Reconcilement"), as its authors' code: the modalities' learners are trained in turn, each boosted against
the others' ensemble, with global fine-tuning of the whole ensemble between.

The model is an ensemble z = ρ · Σ_m h(f_m): one head h shared by every modality (`--fusion shared`), an
MLP D → D/2 → C (the authors' 512 → 256 → C for 512-d ResNet-18 features, scaled to this run's encoder
width D = 8 × --width), and a learned rate ρ (from 1.0; ModelConfig.boost_rate, shared_mlp). Training
cycles through phases of T = 4 epochs each: for every modality m in turn, a boosting phase, then a global
(correction) phase (T shortened to epochs // (2·M), at least 1, in a run shorter than one cycle of such
phases, so that every phase acts: 10 epochs, 2 modalities: T = 2). In modality m's boosting phase, with
o = h(f_m) (m's learner), e = ρ · Σ_{k≠m} h(f_k) the others' ensemble (no gradient) and t the one-hot
label, per sample
    L_i = −w_1 · mean_c(t · log softmax(o)) + w_2 · mean_c(t · softmax(e) · log softmax(o)),
plus, after the first cycle, α · MSE(softmax(o), softmax(h(f_p))) with p the modality before m (both
detached in the official code, so this term is logged but moves nothing); only m's encoder and the
head learn (the others' gradients are set to None, so the optimiser leaves them). In a global phase,
L = CE(z, y) over everything. Each phase starts with a fresh optimiser state (the authors build a new
SGD for each phase). Evaluation predicts z. w_1 = 5, w_2 = 1, α = 0.5; SGD, momentum 0.9.

Source: the authors' huacong/ReconBoost, train.py (arguments 53-77: batch 64, boost_rate 1.0,
epochs_per_stage 4, correct_epoch 4, m_lr = e_lr 0.01, weight1 5, weight2 1, alpha 0.5; the boosting phase
296-357 with its SGD(momentum 0.9, weight decay 5e-4) built at 296; the correction phase 370-402 with a
new SGD at 371) and models/dynamic_net.py (`Head` 5-15: Linear(512, 256), ReLU, Linear(256, C);
`boost_rate` a learned parameter from --boost_rate, 33). GeWu-Lab/BalanceBenchmark,
balancemm/trainer/ReconBoost_trainer.py and models/avclassify_model.py differ: ρ from 0.01, T 1, a linear
shared head, one optimiser throughout: `--reconboost-rate 0.01 --reconboost-epochs 1
--reconboost-head linear` (`reconboost.rate`, `epochs`, `head`).
Deviations: one authors' stage (a boosting and a correction phase of T epochs each) is 2·T epochs here;
the learning rate is umt's SGD default with its cosine schedule (the authors': 0.01 at batch 64,
constant, ×0.1 every 30 stages on CREMA-D, over about a hundred 8-epoch stages; 3 epochs at 0.01 leave
10-class vectors at chance); weight decay is the run's (--weight-decay, 1e-4; the authors' 5e-4); the ga
term starts with the second cycle (the authors': the second stage); the loss adds 0·(fused logits) so DDP
reduces a zero gradient for every parameter in a boosting phase (as MLA).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models import PARTS, LateFusionNet, ModelPart
from ..options import ConfigError, MethodOptions, option
from .base import Method, Parts

if TYPE_CHECKING:
    from ..config import TrainConfig

AUTHORS_PHASE = 4  # train.py: --epochs_per_stage 4, --correct_epoch 4


class MlpSharedHead(ModelPart):
    """ModelConfig.shared_mlp: the shared head an MLP D → D/2 → C (the authors' 512 → 256 → C)."""

    def head(self, net: LateFusionNet, dim: int) -> nn.Module | None:
        if net.cfg.fusion != "shared":
            return None
        return nn.Sequential(nn.Linear(dim, dim // 2), nn.ReLU(inplace=True), nn.Linear(dim // 2, net.cfg.num_classes))


class BoostedSum(ModelPart):
    """ModelConfig.boost_rate > 0: the shared head's logits summed over the modalities, ρ·Σ_m head(f_m), the rate
    ρ a learned parameter from boost_rate."""

    fusion = "shared"

    def build(self, net: LateFusionNet) -> None:
        net.rate = nn.Parameter(torch.tensor(float(net.cfg.boost_rate)))

    def fuse(self, net: LateFusionNet, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return net.rate * sum(net.head(feats[m]) for m in net.cfg.modalities)


PARTS["shared_mlp"] = MlpSharedHead()
PARTS["boost_rate"] = BoostedSum()


def boosting_loss(own: torch.Tensor, others: torch.Tensor, labels: torch.Tensor, w1: float, w2: float) -> torch.Tensor:
    """Batch mean of −w1·mean_c(t·log p) + w2·mean_c(t·softmax(others)·log p), p = softmax(own)."""
    target = F.one_hot(labels, own.shape[1]).to(own.dtype)
    log_p = own.log_softmax(1)
    return (-w1 * (target * log_p).mean(1) + w2 * (target * others.softmax(1) * log_p).mean(1)).mean()


class ReconBoost(Method):
    name = "reconboost"
    summary = ("modalities' learners boosted in turn against the others' ensemble, with global fine-tuning\n"
               "            between (Hua et al., ICML 2024; picks --fusion shared, an MLP head; one pass per epoch)")
    fusions = ("shared",)
    fusion_needs = "boosts learners that share one head"
    optimizer = "sgd"
    authors_lr = 0.01

    class Options(MethodOptions):
        alpha: float = option(0.5, "ReconBoost: weight of the official ga term (gradient-free as written; "
                              "BalanceBenchmark: 0.5)")
        w1: float = option(5.0, "ReconBoost: weight of the boosted learner's own log-likelihood (weight1 5)")
        w2: float = option(1.0, "ReconBoost: weight of the term against the other modalities' ensemble "
                           "(weight2 1)")
        epochs: int | None = option(None, "ReconBoost: epochs per phase (boosting one modality, then global "
                                    "fine-tuning; default the authors' 4, shortened to epochs // (2 x modalities) in "
                                    "a shorter run; BalanceBenchmark's 1)")
        rate: float = option(1.0, "ReconBoost: start of the learned rate ρ of the ensemble ρ·Σ h(f_m) (the "
                             "authors' 1.0; BalanceBenchmark: 0.01)", before=0.01)
        head: str = option("mlp", "ReconBoost: the shared head h, an MLP D→D/2→C (the authors' 512→256→C, scaled "
                           "to the encoders' width D) or linear (BalanceBenchmark's)", choices=("mlp", "linear"),
                           before="linear")

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.epoch = 0

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        super().check(cfg)
        if (cfg.reconboost_epochs is not None and cfg.reconboost_epochs < 1) or cfg.reconboost_rate <= 0:
            raise ConfigError(f"reconboost needs T >= 1 epochs per phase and a rate > 0, got "
                              f"{cfg.reconboost_epochs} and {cfg.reconboost_rate}")

    def model_options(self) -> dict[str, Any]:
        return {"boost_rate": self.cfg.reconboost_rate,
                "shared_mlp": self.cfg.reconboost_head == "mlp"}

    @property
    def phase_epochs(self) -> int:
        """T: --reconboost-epochs, or the authors' 4 shortened to epochs // (2·M), at least 1, when a run is too
        short for one cycle of 4-epoch phases (so that a global phase acts: 3 epochs, 2 modalities: T = 1)."""
        cfg = self.cfg
        if cfg.reconboost_epochs is not None:
            return cfg.reconboost_epochs
        return max(1, min(AUTHORS_PHASE, cfg.epochs // (2 * len(cfg.modalities))))

    def phase(self, epoch: int) -> tuple[str | None, str, int]:
        """(the boosted modality, or None in a global phase; its predecessor; the cycle) of an epoch."""
        mods, t = list(self.cfg.modalities), self.phase_epochs
        cycle, within = divmod(epoch, 2 * t * len(mods))
        i = within // (2 * t)
        return (mods[i] if within % (2 * t) < t else None), mods[i - 1], cycle

    def begin_epoch(self, epoch: int, steps: range) -> None:
        self.epoch = epoch

    def fresh_optimizer(self, epoch: int) -> bool:
        return epoch % self.phase_epochs == 0  # each phase's first epoch

    def loss(self, net, batch, logits, feats) -> tuple[torch.Tensor, Parts]:
        cfg, labels = self.cfg, batch["label"]
        boosted, before, cycle = self.phase(self.epoch)
        if boosted is None:
            return super().loss(net, batch, logits, feats)
        own = net.head(feats[boosted])
        with torch.no_grad():
            others = net.rate * sum(net.head(feats[m]) for m in net.cfg.modalities if m != boosted)
        loss = boosting_loss(own, others, labels, cfg.reconboost_w1, cfg.reconboost_w2)
        parts = {f"boost_{boosted}": loss.detach()}
        if cycle > 0:  # the official term: both sides detached, so it changes the loss value, not the step
            ga = F.mse_loss(own.detach().softmax(1), net.head(feats[before]).detach().softmax(1))
            loss = loss + cfg.reconboost_alpha * ga
            parts["reconboost_ga"] = ga
        return loss + 0.0 * logits.sum(), parts

    @torch.no_grad()
    def after_backward(self, net, batch, feats, epoch, step, accelerator) -> Parts:
        boosted, _, _ = self.phase(epoch)
        if boosted is not None:  # only the boosted learner (its encoder and the shared head) takes the step
            learner = {id(p) for p in (*net.encoders[boosted].parameters(), *net.head.parameters())}
            for p in net.parameters():
                if id(p) not in learner:
                    p.grad = None
        return {}

    def describe(self) -> str:
        t = self.phase_epochs
        return (f"- ReconBoost: phases of {t} epoch(s): boost each of {', '.join(self.cfg.modalities)} in turn, "
                "each followed by global fine-tuning\n")
