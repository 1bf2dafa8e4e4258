"""The interface every trainable method implements, and the plain cross-entropy methods.

The training loop (engine/train.py) calls, before each epoch (also one resumed mid-way),
`begin_epoch`; per micro-batch, `loss`; per optimiser step, after the backward passes of its
window, `after_backward`; per epoch, `end_of_epoch`; and checkpoints `state_dict` with the loop's
own state, so a resumed run continues every method bit for bit.

A method also names the fusion head and the optimiser a run gets when it leaves them unset: the
optimiser its official code trained with. The choice matters to methods that rescale gradients
(OGM-GE, AGM, MMPareto): SGD's step is proportional to the gradient, so the rescaling acts as
intended, while Adam divides each coordinate's step by the running root mean square of its own
gradient, which cancels a factor applied to a tensor's gradient for many steps (MMPareto's
γ changes nothing but ε's relative size; OGM's and AGM's k are largely normalised away, leaving
mostly their step-to-step variation and OGM's GE noise).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..options import ConfigError, MethodOptions
from ..models import LateFusionNet

if TYPE_CHECKING:
    from ..config import TrainConfig

Parts = dict[str, torch.Tensor]
# The heads, and why only those, of methods that remove a modality by zeroing its feature (CML, Modality-valuation)
ZEROING_FUSIONS = ("linear", "sum", "mlp")
ZEROING_NEEDS = ("removes a modality by zeroing its feature before a fusion head; the shared head's entropy "
                 "weighting has no such removal")


class Method:
    """Plain late fusion: cross-entropy on the fused logits (`joint`)."""

    name = "joint"
    summary = "naive late fusion: all encoders + fusion head, cross-entropy on the fused logits"
    single_modality = False
    fusions: tuple[str, ...] = ("linear", "mlp", "sum", "shared")  # the heads it trains; the first when none is named
    fusion_needs = ""      # why it trains only those heads (the refusal says it)
    optimizer = "adamw"    # the optimiser when the run names none: the official code's
    authors_lr: float | None = None  # the official code's learning rate (listed in --help and docs/methods.md)
    Options: type[MethodOptions] | None = None  # its own settings (engine/options.py)

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        """Refuse a configuration this method cannot train."""
        if cls.single_modality and len(cfg.modalities) != 1:
            raise ConfigError(f"{cls.name} trains one modality, got {list(cfg.modalities)}")
        if not cls.single_modality and len(cfg.modalities) < 2:
            raise ConfigError(f"{cls.name} needs two or more modalities, got {list(cfg.modalities)}")
        if cfg.fusion not in cls.fusions:
            heads = " or ".join([", ".join(cls.fusions[:-1]), cls.fusions[-1]] if len(cls.fusions) > 1 else cls.fusions)
            raise ConfigError(f"{cls.name} {cls.fusion_needs}: use --fusion {heads}, or name none (got {cfg.fusion!r})")

    def model_options(self) -> dict[str, Any]:
        """Extra ModelConfig fields the method's model needs (auxiliary heads, projectors)."""
        return {}

    def prepare(self, net: LateFusionNet, device: torch.device) -> tuple[int, int | None]:
        """Load what the method needs beside the model; returns the (view seed, view count) to train on."""
        return self.cfg.resolved_view_seed, self.cfg.num_views

    def begin_epoch(self, epoch: int, steps: range) -> None:
        """Before an epoch (or its resumed rest): the optimiser steps it spans, for a loss or schedule that
        depends on them (PMR, modality dropout, MLA's alternation)."""

    def fresh_optimizer(self, epoch: int) -> bool:
        """Whether the optimiser starts epoch `epoch` with no state (momenta), as if rebuilt (ReconBoost's stages);
        asked only at an epoch's first batch, so a run resumed mid-epoch keeps its restored state."""
        return False

    def loss(self, net: LateFusionNet, batch: dict[str, torch.Tensor], logits: torch.Tensor,
             feats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Parts]:
        """The loss of one micro-batch and its logged parts (detached)."""
        loss = F.cross_entropy(logits, batch["label"])
        return loss, {"ce": loss.detach()}

    def after_backward(self, net: LateFusionNet, batch: dict[str, torch.Tensor], feats: dict[str, torch.Tensor],
                       epoch: int, step: int, accelerator) -> Parts:
        """Change the window's gradients before the optimiser step (OGM-GE); returns logged values."""
        return {}

    def end_of_epoch(self, net: LateFusionNet, val: dict, accelerator) -> dict[str, Any]:
        """Update the method's state from the epoch; returns values for the epoch's record."""
        return {}

    def describe(self) -> str:
        """Markdown lines for the run's report.md."""
        return ""

    def state_dict(self) -> dict[str, Any]:
        """The method's checkpointed state. Only rank 0's is saved and every rank (on any number of
        processes, engine/resume.py) loads it, so it must be the same on every rank: reduce across ranks."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Unimodal(Method):
    name = "unimodal"
    summary = "one modality's encoder + linear head (a teacher, and a UME member)"
    single_modality = True
