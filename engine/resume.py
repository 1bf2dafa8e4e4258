"""Training-state checkpoints: everything needed to continue a killed run bit for bit.

`checkpoints/last.pt` in the run directory holds the model, optimiser and schedule states, the RNG
states, the position (epoch, global batches done in it, global step, the global batch and the
plan's streams) and the throughput counters. It is written to a temporary file and renamed, so a
kill during the write leaves the previous one whole. Views and shuffles are pure functions of
(seed, epoch, row), so the position is all the loader needs.

The position is in global units, so a run may resume on another number of processes as long as
its global batch stays the same (the epoch plan, loaders/loading/plan.py, then reads the same
global batches, split among the new processes). Method states are saved from rank 0: a method
must keep its state equal on every rank (reduced across ranks) for that to be its whole state.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import config_files
from .config import ConfigError, TrainConfig
from .methods import SETTINGS

LAST = "last.pt"
# Settings a resumed run may change without changing what it computes.
FREE = {"resume", "log_every", "probe", "probe_every", "log_with"}
# What runs did before a setting existed, where that is not the setting's default (for the runs that read it: a
# CML run from before `cml_batch_clamp` clamped the batch's sum; a joint run, nothing). A method's own settings
# declare theirs (engine/options.py `option(before=...)`).
BEFORE = {"optimizer": "adamw", **{s.attr: s.before for s in SETTINGS if s.before is not None}}


def checkpoint_path(out: str | Path) -> Path:
    return Path(out) / "checkpoints" / LAST


def save(out: str | Path, cfg: TrainConfig, model: torch.nn.Module, optimizer, schedule,
         position: dict[str, Any]) -> None:
    path = checkpoint_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"config": cfg.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "schedule": schedule.state_dict(), "position": position,
             "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(cfg: TrainConfig, world: int = 1) -> dict[str, Any] | None:
    """The state to resume from (None for a fresh run) on `world` processes; refuses a checkpoint of
    another config or, on another number of processes, of another global batch."""
    if not cfg.resume:
        return None
    path = checkpoint_path(cfg.out) if cfg.resume == "latest" else Path(cfg.resume)
    if not path.is_file():
        if cfg.resume == "latest":
            return None  # nothing saved yet: start from scratch, so `--resume latest` is always safe
        raise ConfigError(f"checkpoint {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=False)
    # a setting added since the checkpoint was saved counts as what runs did before it (its default, or BEFORE's)
    read = config_files.settings_read(cfg.method)
    before = {k: v for k, v in BEFORE.items() if k in read}
    saved, now, default = state["config"], cfg.to_dict(), {**TrainConfig(data="", out="").to_dict(), **before}
    changed = sorted(k for k in now if k not in FREE | {"global_batch"} and saved.get(k, default[k]) != now[k])
    if changed:
        raise ConfigError(f"{path} was saved by a run with other settings ({', '.join(changed)}); "
                          "resume with the same configuration or start a new --out")
    position = state.get("position", {})
    saved_world = position.get("world") or world  # older checkpoints: assume the same processes
    before = position.get("global_batch") or saved["batch_size"] * saved_world
    if global_batch(cfg, world) != before:
        how = (f"set optim.global_batch={before} (--global-batch {before}) to train {before // world} samples per "
               "process" if before % world == 0 else f"resume on a number of processes that divides {before}")
        raise ConfigError(f"{path} was saved by {saved_world} process(es) with a global batch of {before}; on "
                          f"{world} process(es) this configuration makes it {global_batch(cfg, world)}, which would "
                          f"change every following batch: {how}")
    return state


def global_batch(cfg: TrainConfig, world: int) -> int:
    """Training samples per micro-batch over all `world` processes."""
    return cfg.global_batch or cfg.batch_size * world


def layout(cfg: TrainConfig, world: int, state: dict[str, Any] | None) -> tuple[int, int, int]:
    """(global batch, per-process batch, plan streams) of a run on `world` processes, resumed from
    `state` or fresh; a fresh run has as many streams as processes, a resumed one keeps its start's."""
    glob = global_batch(cfg, world)
    if glob % world:
        raise ConfigError(f"a global batch of {glob} does not split among {world} processes: set optim.global_batch "
                          f"to a multiple of {world}")
    streams = state["position"].get("streams") or world if state else world
    return glob, glob // world, streams


def restore(state: dict[str, Any], model: torch.nn.Module, optimizer, schedule) -> dict[str, Any]:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return state["position"]
