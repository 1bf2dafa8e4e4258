"""The trainable methods, one class each, by the name `--method` gives them."""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import TYPE_CHECKING

from .. import ume
from ..options import ConfigError, Setting, settings
from .base import Method

if TYPE_CHECKING:
    from ..config import TrainConfig


def _discovered() -> dict[str, type[Method]]:
    """Every Method class defined in this package's modules, by name: base's first, then by module name (adding
    a method is adding its module)."""
    names = sorted((m.name for m in pkgutil.iter_modules(__path__)), key=lambda n: (n != "base", n))
    return {cls.name: cls for n in names for cls in vars(importlib.import_module(f"{__name__}.{n}")).values()
            if isinstance(cls, type) and issubclass(cls, Method) and cls.__module__ == f"{__name__}.{n}"}


REGISTRY: dict[str, type[Method]] = _discovered()
METHODS: tuple[str, ...] = (*REGISTRY, "ume")  # ume evaluates, the others train
# Every method's own settings, declared in its module (`Options`), in the order of METHODS.
SETTINGS: tuple[Setting, ...] = tuple(
    [s for name, cls in REGISTRY.items() for s in settings(name, cls.__dict__.get("Options"))]
    + settings("ume", ume.Options))


def run_optimizer(method: str, named: str | None) -> str | None:
    """The optimiser a run of `method` trains with: the one named, else the method's official one (ume, which
    evaluates members, trains none)."""
    cls = REGISTRY.get(method)
    return named or (cls.optimizer if cls else None)


ADAMW_LR = 2e-3       # AdamW's default learning rate, every method alike
SGD_LR_PER_64 = 0.025  # SGD's, per 64 samples of an optimiser step: the linear scaling rule's 0.1 per 256, every
                       # method alike. The authors' own rates (`authors_lr`, `authors_rates`) come with long
                       # step-decay schedules (OGM-GE's StepLR at epoch 70, ReconBoost's hundreds of 8-epoch
                       # stages) and barely train in a few epochs (docs/methods.md, tests/test_default_lr.py)


def authors_rates() -> str:
    """The official codes' learning rates, highest first: 'reconboost and lfm 0.01, ...'."""
    rates: dict[float, list[str]] = {}
    for name, cls in REGISTRY.items():
        if cls.authors_lr is not None:
            rates.setdefault(cls.authors_lr, []).append(name)
    return ", ".join(" and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names) + f" {lr:g}"
                     for lr, names in sorted(rates.items(), reverse=True))


def default_lr(optimizer: str, batch: int) -> float:
    """The learning rate of a run that names none: AdamW's ADAMW_LR, or SGD's SGD_LR_PER_64 scaled linearly with
    the optimiser step's batch (Goyal et al. 2017's linear scaling rule)."""
    return SGD_LR_PER_64 * batch / 64 if optimizer == "sgd" else ADAMW_LR


def resolved(cfg: TrainConfig, world: int = 1) -> TrainConfig:
    """`cfg` with the settings it leaves to its method (None: fusion, optimiser, learning rate) set to the
    method's, for a run on `world` processes: the learning-rate rule's batch is an optimiser step's samples,
    the global batch times the gradient-accumulation steps."""
    cls = REGISTRY.get(cfg.method)
    if cls is None:  # ume evaluates members: no fusion head, no optimiser
        return cfg
    optimizer = run_optimizer(cfg.method, cfg.optimizer)
    from ..resume import global_batch  # resume reads the config, which is built from this registry
    lr = cfg.lr or default_lr(optimizer, global_batch(cfg, world) * cfg.grad_accum)
    return dataclasses.replace(cfg, fusion=cfg.fusion or cls.fusions[0], optimizer=optimizer, lr=lr)


def method_for(cfg: TrainConfig) -> Method:
    """The method object that trains `cfg` (resolved), after it checked the configuration."""
    if cfg.method not in REGISTRY:
        raise ConfigError(f"{cfg.method!r} is not a trainable method ({', '.join(REGISTRY)})")
    cfg = resolved(cfg)
    REGISTRY[cfg.method].check(cfg)
    return REGISTRY[cfg.method](cfg)

