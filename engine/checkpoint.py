"""Model checkpoints, the view spec each was trained on, and the teacher fingerprint that ties a cache
to the weights that built it.

A checkpoint used by another run (an online teacher, a UME or guide member) must see the views it
was trained on: `check_views` refuses one saved with another view spec rather than run it silently
on views it never saw.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from umt.loaders.errors import UserError
from umt.loaders.stored.views import ViewSpec

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
    """The model a checkpoint holds, built on the meta device and given the checkpoint's tensors (no random
    initialisation of weights about to be replaced: 0.2 s of a ResNet-18's load)."""
    ckpt = load_checkpoint(path)
    with torch.device("meta"):
        model = LateFusionNet(ModelConfig.from_dict(ckpt["model_config"]))
    try:
        model.load_state_dict(ckpt["state_dict"], assign=True)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not fit its own model config: {err}") from err
    return model, ckpt


def fingerprint(ckpt: dict[str, Any]) -> str:
    """Hash of the weights and the architecture config: equal only for the same teacher."""
    digest = hashlib.sha256(json.dumps(ckpt["model_config"], sort_keys=True).encode())
    for name in sorted(ckpt["state_dict"]):
        digest.update(name.encode())
        digest.update(ckpt["state_dict"][name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def saved_views(path: str | Path, ckpt: dict[str, Any]) -> ViewSpec:
    if "view" not in ckpt:
        raise CheckpointError(f"{path} records no view spec (saved by an older umt); retrain it")
    return ViewSpec.of(ckpt["view"])


def check_views(role: str, path: str | Path, ckpt: dict[str, Any], spec: ViewSpec) -> None:
    """Refuse a checkpoint trained on another view spec than the run's (naming the fields that differ)."""
    saved = saved_views(path, ckpt)
    if saved != spec:
        theirs, ours = saved.to_dict(), spec.to_dict()
        diff = ", ".join(f"{k.replace('_', ' ')} {theirs[k]}" for k in ours if theirs[k] != ours[k])
        want = ", ".join(f"{k.replace('_', ' ')} {ours[k]}" for k in ours if theirs[k] != ours[k])
        raise CheckpointError(f"{role} {path} was trained on views with {diff}, this run uses {want}; "
                              "run with the checkpoint's view flags, or retrain it on these views")


def load_teachers(paths: dict[str, str], device: torch.device,
                  spec: ViewSpec | None = None) -> tuple[dict[str, torch.nn.Module], dict[str, str], ViewSpec]:
    """Frozen eval-mode teacher encoders, their fingerprints, and the view spec they were trained on."""
    models, prints, spec = load_teacher_models(paths, device, spec)
    return {m: model.encoders[m] for m, model in models.items()}, prints, spec


def load_teacher_models(paths: dict[str, str], device: torch.device, spec: ViewSpec | None = None
                        ) -> tuple[dict[str, LateFusionNet], dict[str, str], ViewSpec]:
    """Frozen eval-mode uni-modal teachers (encoder and classifier, for features and logits), their
    fingerprints, and the view spec they were trained on.

    With `spec`, every teacher must have been trained on it; without, they must agree with each other.
    """
    models, prints, specs = {}, {}, {}
    for m, path in sorted(paths.items()):
        model, ckpt = load_model(path)
        if tuple(model.cfg.modalities) != (m,):
            raise CheckpointError(f"teacher {path} is a {'+'.join(model.cfg.modalities)} model, "
                                  f"not a uni-modal {m} model")
        if spec is not None:
            check_views("teacher", path, ckpt, spec)
        models[m] = model.to(device).eval().requires_grad_(False)
        prints[m] = fingerprint(ckpt)
        specs[path] = saved_views(path, ckpt)
    if len(set(specs.values())) != 1:
        raise CheckpointError(f"teachers {sorted(paths.values())} were trained on different view specs")
    return models, prints, next(iter(specs.values()))
