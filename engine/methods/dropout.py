"""Modality dropout: joint training in which, with probability p, a training sample loses one modality.

For each training sample, a generator seeded by (run seed, epoch, the sample's row in its split) draws
u ~ U[0, 1) and j uniform over the run's modalities; when u < p, modality j's pooled feature is set
to zero before the fusion head. So each sample loses at most one modality (never all: a sample keeps
at least one of two or more), a given modality is dropped from a share p/|M| of the samples, and the
draw depends on neither the rank, the number of processes, nor the batch a sample falls in: a run is
reproducible, a resumed run draws the same masks, and each replica's update is the DDP average as
for any loss. The kept features are not rescaled: a dropped modality is modelled as missing, and the
present ones keep the scale they have at evaluation, where every modality is present (the idea goes
back to ModDrop, Neverova et al., TPAMI 2016, which zeroes a modality's input; here its encoder's
output, so that the absent modality's feature contributes nothing to the fused logits).
No official code: p = 0.5 is this module's default.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..options import ConfigError, MethodOptions, option
from .base import Method, Parts

if TYPE_CHECKING:
    from ..config import TrainConfig


def dropped_modality(seed: int, epoch: int, rows: torch.Tensor, num_modalities: int, p: float) -> torch.Tensor:
    """Per sample, the index of the modality it loses this epoch, or −1 when it keeps them all."""
    out = []
    for row in rows.tolist():
        rng = np.random.default_rng([seed, epoch, row])
        u, j = rng.random(), int(rng.integers(num_modalities))
        out.append(j if u < p else -1)
    return torch.tensor(out, dtype=torch.long)


class ModalityDropout(Method):
    name = "dropout"
    summary = ("joint training with modality dropout: with probability p a sample's feature of one modality\n"
               "            (chosen uniformly) is zeroed before fusion, seeded by (seed, epoch, sample row)")

    class Options(MethodOptions):
        p: float = option(0.5, "modality dropout: probability that a training sample loses one modality (chosen "
                          "uniformly; its feature zeroed, not rescaled)")

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        super().check(cfg)
        if not 0 <= cfg.dropout_p <= 1:
            raise ConfigError(f"dropout p must lie in [0, 1], got {cfg.dropout_p}")

    def begin_epoch(self, epoch: int, steps: range) -> None:
        self.epoch = epoch

    def loss(self, net, batch, logits, feats) -> tuple[torch.Tensor, Parts]:
        mods = list(net.cfg.modalities)
        dropped = dropped_modality(self.cfg.seed, self.epoch, batch["row"], len(mods), self.cfg.dropout_p)
        dropped = dropped.to(batch["label"].device)
        kept = {m: feats[m] * (dropped != i).to(feats[m].dtype)[:, None] for i, m in enumerate(mods)}
        loss = F.cross_entropy(net.fuse(kept), batch["label"])
        return loss, {"ce": loss.detach(), "dropped_share": (dropped >= 0).float().mean()}
