"""Greedy, balanced multi-modal learning (Wu, Jastrzębski, Cho, Geras, ICML 2022, "Characterizing and
overcoming the greedy nature of learning in multi-modal deep neural networks"): a model whose branches
exchange information through a multimodal transfer module (MMTM) tends to learn from one modality and
use the other only through that module; the training alternates regular steps with re-balancing steps
that cut the cross-modal route into the branch that relies on it most, so that branch has to learn from
its own modality.

The model (ModelConfig.mmtm, `MMTM` below): for modalities m ∈ {0, 1} with pooled features f_m,
    h = ReLU(W_s [f_0, f_1] + b_s),   g_m = σ(W_m h + b_m),   u_m = head_m(g_m ⊙ f_m)   (fusion `sum`),
the prediction Σ_m u_m (the authors average the two branches' logits: the same argmax), and the loss
    L = Σ_m CE(u_m, y)          (the authors' `blend_loss`; BalanceBenchmark's trainer: CE of the fused output).
Conditional learning speed: with θ_main(m) the parameters of branch m (encoder m and head_m) and
θ_bypass(m) those of the module that produce g_m (W_m, b_m, and the shared W_s, b_s), after each
step's backward pass
    μ(θ) = Σ ‖∇θ‖² / Σ ‖θ‖²,   M_main(m) += μ(θ_main(m)),   M_bypass(m) += μ(θ_bypass(m)),
    BDR_m = log10(M_bypass(m) / M_main(m)),   d_BDR = BDR_0 − BDR_1,
the sums running over every step measured since the start. From epoch `start` (1) on, a regular step
with |d_BDR| > ε (0.01) opens a window of `window` (5) re-balancing steps: branch m* = 0 if d_BDR > 0
else 1 gets, instead of its gate g_m*, the running mean of its past gates (one constant vector), so
the other modality no longer reaches it, and the layer (W_m*, b_m*) whose gate is unused takes no step.
d_BDR is not measured during a window (before `start` it is measured every step, with no window
opened). Evaluation always uses the computed gates.

Source: the authors' nyukat/greedy_multimodal_learning (src/balanced_mmtm.py `MMTM_mitigate`,
src/callbacks.py `Bias_Mitigation_Strong`: `compute_BDR`, epsilon 0.01, curation_windowsize 5,
starting_epoch 2 counted from 1; train.py `blend_loss`; src/model.py, the branches' mean;
configs/training_guided.gin: SGD, lr 0.1, momentum 0, weight decay 0: SGD is this method's optimiser,
with this trainer's momentum and weight decay unless told). GeWu-Lab/BalanceBenchmark carries it in
balancemm/trainer/Greedy_trainer.py and balancemm/models/avclassify_model.py (`BaseClassifierGreedyModel`,
`MMTM`; alpha 0.001, window_size 5 in configs/trainer_config.yaml), but cannot run it as stored: its
MMTM.forward empties `running_avg_weight` and then reads it (a KeyError at the first forward pass), its
trainer calls `model.Unimodality_Calculate()`, which that model does not define (it has
`unimodality_calculate`), and its visual reshape hard-codes a batch of 64.
Deviations: one MMTM on the pooled features after the encoders (the authors put one after each of
ResNet-18's stages 2-4, BalanceBenchmark after stages 1-4), so it works with any encoder here; two
modalities only (d_BDR is a difference of two); the running mean of the gates averages every training
micro-batch's mean gate over all ranks, up to the previous micro-batch (the authors' includes the current
batch and also moves during evaluation passes, and their second module's skeleton mean averages the
visual gates, a slip); the window counts optimiser steps, and d_BDR is measured after each optimiser
step's window of micro-batches on the gradients DDP has averaged, so every rank decides alike. Not with
fp16, whose loss scale would weight the summed speeds step by step.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from accelerate.utils import reduce
from torch import nn

from ..models import PARTS, LateFusionNet, ModelPart
from ..options import ConfigError, MethodOptions, option
from .base import Method, Parts

if TYPE_CHECKING:
    from ..config import TrainConfig


class MMTM(nn.Module):
    """Multimodal transfer module (Joze et al., CVPR 2020) on pooled features: each modality's feature is
    rescaled unit by unit by a sigmoid gate computed from every modality's feature,
        h = ReLU(W_s [f_1, ..., f_M] + b_s),   g_m = σ(W_m h + b_m),   f'_m = g_m ⊙ f_m,
    with h of 2·Σ_m D_m / ratio units. The gates are how one modality's information reaches another's
    branch (Greedy's "bypass"). While training with `caring` set to a modality, that modality's gate is
    the running mean of its past gates instead (one constant vector for every sample), which cuts the
    other modalities out of its branch; evaluation always uses the computed gates. The running means
    (buffers, so they are checkpointed with the model) are updated by the method that trains the
    module (Greedy, below), from the gates of all ranks.
    """

    def __init__(self, dims: dict[str, int], ratio: int = 4):
        super().__init__()
        self.dims = dict(dims)
        total = sum(dims.values())
        self.squeeze = nn.Linear(total, int(2 * total / ratio))
        self.excite = nn.ModuleDict({m: nn.Linear(self.squeeze.out_features, d) for m, d in dims.items()})
        self.register_buffer("running", torch.zeros(total))     # per modality, concatenated in `dims` order
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))  # micro-batches averaged into it
        self.caring: str | None = None

    def gates(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """g_m for each modality, [B, D_m]."""
        hidden = torch.relu(self.squeeze(torch.cat([feats[m] for m in self.dims], dim=1)))
        return {m: torch.sigmoid(excite(hidden)) for m, excite in self.excite.items()}

    def running_gates(self) -> dict[str, torch.Tensor]:
        """The running mean of each modality's gate, [D_m]."""
        return dict(zip(self.dims, self.running.split(list(self.dims.values()))))

    @torch.no_grad()
    def remember(self, mean_gates: torch.Tensor) -> None:
        """Fold one micro-batch's mean gates (concatenated in `dims` order) into the running means."""
        self.running.copy_((mean_gates + self.running * self.seen) / (self.seen + 1))
        self.seen += 1

    def forward(self, feats: dict[str, torch.Tensor],
                gates: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The rescaled features; `gates`: this batch's `gates(feats)` when the caller has them already."""
        gates = dict(self.gates(feats) if gates is None else gates)
        if self.training and self.caring is not None:
            # a copy: the buffer is updated in place after this forward, before its backward pass; plus 0 × the
            # computed gate, so its parameters take part in the backward pass (DDP expects every parameter's
            # gradient; Greedy drops these zeros before the optimiser step, as the branch's gate was never used)
            computed = gates[self.caring]
            gates[self.caring] = self.running_gates()[self.caring].clone().expand_as(computed) + 0 * computed
        return {m: feats[m] * gates[m] for m in self.dims}


class MmtmPart(ModelPart):
    """ModelConfig.mmtm: one MMTM between the encoders and the head, rescaling the pooled features."""

    def build(self, net: LateFusionNet) -> None:
        net.mmtm = MMTM({m: enc.out_dim for m, enc in net.encoders.items()})

    def features(self, net: LateFusionNet, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return net.mmtm(feats)


PARTS["mmtm"] = MmtmPart()


def learning_speed(params: list[torch.nn.Parameter]) -> float:
    """μ = Σ‖∇θ‖² / Σ‖θ‖² over `params` (a parameter without a gradient counts as a zero gradient)."""
    grads = sum(float((p.grad.detach().float() ** 2).sum()) for p in params if p.grad is not None)
    weights = sum(float((p.detach().float() ** 2).sum()) for p in params)
    return grads / weights


def branch_parameters(net: LateFusionNet) -> dict[str, tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]]:
    """modality → (main: its encoder and head, bypass: the MMTM parameters that produce its gate)."""
    return {m: ([*net.encoders[m].parameters(), *net.head[m].parameters()],
                [*net.mmtm.squeeze.parameters(), *net.mmtm.excite[m].parameters()]) for m in net.cfg.modalities}


def bdr_gap(sums: dict[str, list[float]], mods: list[str]) -> float:
    """d_BDR = log10(M_bypass/M_main) of the first modality minus the same of the second."""
    bdr = [math.log10(sums[m][1] / sums[m][0]) for m in mods]
    return bdr[0] - bdr[1]


class Greedy(Method):
    name = "greedy"
    summary = ("MMTM between the branches; when one branch learns through it faster than the other (d_BDR),\n"
               "            re-balancing steps replace its gate by a running mean (Wu et al., ICML 2022; fusion sum)")
    fusions = ("sum",)
    fusion_needs = "trains one classifier per branch and sums their logits, as the paper's model"
    optimizer = "sgd"

    class Options(MethodOptions):
        epsilon: float = option(0.01, "Greedy: threshold on |d_BDR|, the gap between the modalities' conditional "
                                "learning speeds, that starts re-balancing (the authors' 0.01; BalanceBenchmark's "
                                "0.001)")
        window: int = option(5, "Greedy: optimiser steps of each re-balancing window (curation_windowsize 5)")
        start: int = option(1, "Greedy: first epoch (from 0) that may re-balance (the authors' starting_epoch 2, "
                            "counted from 1)")

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.mods = list(cfg.modalities)
        self.sums = {m: [0.0, 0.0] for m in self.mods}  # modality → [M_main, M_bypass]
        self.gap: float | None = None                   # the last d_BDR measured
        self.caring: str | None = None                  # the branch of the open window, if any
        self.window_step = 0
        self.epoch = 0
        self.mmtm: MMTM | None = None

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        super().check(cfg)
        if len(cfg.modalities) != 2:
            raise ConfigError(f"greedy compares the learning speeds of two modalities, got {list(cfg.modalities)}")
        if cfg.precision == "fp16":
            raise ConfigError("greedy does not run with fp16 (its loss scaling multiplies the gradients whose norms "
                              "d_BDR sums, by a factor that changes from step to step); use bf16 or no")
        if cfg.greedy_epsilon < 0 or cfg.greedy_window < 1 or cfg.greedy_start < 0:
            raise ConfigError(f"greedy needs epsilon >= 0, window >= 1 and start >= 0, got {cfg.greedy_epsilon}, "
                              f"{cfg.greedy_window}, {cfg.greedy_start}")

    def model_options(self) -> dict[str, Any]:
        return {"mmtm": True}

    def prepare(self, net, device) -> tuple[int, int | None]:
        self.mmtm = net.mmtm
        return super().prepare(net, device)

    def begin_epoch(self, epoch: int, steps: range) -> None:
        self.epoch = epoch

    def loss(self, net, batch, logits, feats) -> tuple[torch.Tensor, Parts]:
        labels = batch["label"]
        gates = net.mmtm.gates(feats)
        branches = net.mmtm(feats, gates)
        ces = {m: F.cross_entropy(net.head[m](branches[m]), labels) for m in self.mods}
        with torch.no_grad():  # the running mean of the computed gates, over every rank's samples
            net.mmtm.remember(reduce(torch.cat([gates[m].mean(0) for m in net.mmtm.dims]), "mean"))
        loss = sum(ces.values())
        return loss, {"ce": F.cross_entropy(logits, labels).detach(), **{f"ce_{m}": v.detach() for m, v in ces.items()}}

    def after_backward(self, net, batch, feats, epoch, step, accelerator) -> Parts:
        """Measure d_BDR (outside a window) and decide whether the next step re-balances, and which branch."""
        if net.mmtm.caring is not None:  # this step re-balanced: the replaced gate's layer gets no update
            for p in net.mmtm.excite[net.mmtm.caring].parameters():
                p.grad = None
        unlocked = self.epoch >= self.cfg.greedy_start
        if not unlocked or self.caring is None:
            for m, (main, bypass) in branch_parameters(net).items():
                self.sums[m][0] += learning_speed(main)
                self.sums[m][1] += learning_speed(bypass)
            self.gap = bdr_gap(self.sums, self.mods)
            if unlocked and abs(self.gap) > self.cfg.greedy_epsilon:
                self.caring, self.window_step = self.mods[0] if self.gap > 0 else self.mods[1], 0
        else:
            self.window_step += 1
            if self.window_step == self.cfg.greedy_window:
                self.caring = None
        net.mmtm.caring = self.caring
        branch = -1.0 if self.caring is None else float(self.mods.index(self.caring))
        return {"greedy_d_bdr": torch.tensor(self.gap), "greedy_rebalancing": torch.tensor(branch)}  # next step's

    def end_of_epoch(self, net, val, accelerator) -> dict[str, Any]:
        return {"greedy_d_bdr": self.gap}

    def state_dict(self) -> dict[str, Any]:
        return {"sums": {m: list(v) for m, v in self.sums.items()}, "gap": self.gap, "caring": self.caring,
                "window_step": self.window_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = {m: list(v) for m, v in state["sums"].items()}
        self.gap, self.caring, self.window_step = state["gap"], state["caring"], state["window_step"]
        if self.mmtm is not None:
            self.mmtm.caring = self.caring
