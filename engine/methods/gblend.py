"""Gradient Blending (Wang, Tran, Feiszli, CVPR 2020): fused and auxiliary heads' losses, weighted
per epoch by w_k ∝ G_k / O_k² (engine/balancing.py)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import broadcast_object_list

from .. import balancing
from .base import Method, Parts


class GBlend(Method):
    name = "gblend"
    summary = "joint + auxiliary uni-modal heads, losses weighted by gradient blending (Wang et al., CVPR 2020)"

    def __init__(self, cfg):
        super().__init__(cfg)
        heads = ("fused", *cfg.modalities)
        self.weights = {k: 1 / len(heads) for k in heads}
        self.previous: dict[str, tuple[float, float]] | None = None  # (train, val) loss per head, last epoch
        self.sums: dict[str, torch.Tensor] = {}  # this epoch's head losses so far (restored on resume)
        self.count = 0

    def model_options(self) -> dict[str, Any]:
        return {"aux_heads": True}

    def loss(self, net, batch, logits, feats) -> tuple[torch.Tensor, Parts]:
        losses = balancing.head_losses(net, logits, feats, batch["label"])
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach()
        self.count += 1
        return sum(self.weights[k] * v for k, v in losses.items()), {f"ce_{k}": v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def end_of_epoch(self, net, val, accelerator) -> dict[str, Any]:
        """The next epoch's weights from this and the previous epoch's (train, val) head losses."""
        train = {k: accelerator.reduce(v / max(self.count, 1), "mean").item() for k, v in sorted(self.sums.items())}
        pairs = None
        if accelerator.is_main_process:
            device = next(net.parameters()).device
            val_loss = {"fused": F.cross_entropy(val["logits"], val["labels"]).item()}
            val_loss.update({m: F.cross_entropy(head(val["features"][m].to(device)).cpu(), val["labels"]).item()
                             for m, head in net.aux_heads.items()})
            pairs = {k: (train[k], val_loss[k]) for k in train}
        pairs = broadcast_object_list([pairs])[0]
        if self.previous is not None:
            self.weights = balancing.blend_weights(self.previous, pairs)
        self.previous, self.sums, self.count = pairs, {}, 0
        return {"blend_weights": dict(self.weights)}

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "previous": self.previous, "count": self.count,
                "sums": {k: v.cpu() for k, v in self.sums.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights, self.previous, self.count = state["weights"], state["previous"], state["count"]
        self.sums = dict(state["sums"])
