"""Model checkpoints and the teacher fingerprint that ties a cache to the weights that built it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from umt.loaders.errors import UserError

from .models import LateFusionNet, ModelConfig


class CheckpointError(UserError):
    """A checkpoint is missing or not a umt model."""


def save_model(path: str | Path, model: LateFusionNet, extra: dict[str, Any] | None = None) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": "umt-model/1", "model_config": model.cfg.to_dict(), "state_dict": state,
                **(extra or {})}, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt file
        raise CheckpointError(f"checkpoint {path} could not be read: {err}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != "umt-model/1":
        raise CheckpointError(f"{path} is not a umt model checkpoint")
    return ckpt


def load_model(path: str | Path) -> tuple[LateFusionNet, dict[str, Any]]:
    ckpt = load_checkpoint(path)
    model = LateFusionNet(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model, ckpt


def fingerprint(ckpt: dict[str, Any]) -> str:
    """Hash of the weights and the architecture config: equal only for the same teacher."""
    digest = hashlib.sha256(json.dumps(ckpt["model_config"], sort_keys=True).encode())
    for name in sorted(ckpt["state_dict"]):
        digest.update(name.encode())
        digest.update(ckpt["state_dict"][name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()
