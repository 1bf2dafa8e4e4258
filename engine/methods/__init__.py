"""The trainable methods, one class each, by the name `--method` gives them."""
from __future__ import annotations

import dataclasses

from ..config import METHODS, ConfigError, TrainConfig
from ..resume import global_batch
from .agm import Agm
from .amco import Amco
from .base import Method, Unimodal
from .cml import Cml
from .dropout import ModalityDropout
from .gblend import GBlend
from .greedy import Greedy
from .lfm import Lfm
from .mbsd import Mbsd
from .mmpareto import MMPareto
from .mla import Mla
from .mmcosine import MMCosine
from .ogm_ge import OgmGe
from .opm import Opm
from .pmr import Pmr
from .reconboost import ReconBoost
from .relearning import Relearning
from .umt import Umt
from .valuation import Valuation

REGISTRY: dict[str, type[Method]] = {m.name: m for m in (Unimodal, Method, Umt, OgmGe, GBlend, MMPareto, Agm, Pmr,
                                                         ModalityDropout, Mla,
                                                         MMCosine, Opm, Cml, Mbsd, Relearning, Amco, Lfm,
                                                         ReconBoost, Greedy, Valuation)}


def run_optimizer(method: str, named: str | None) -> str | None:
    """The optimiser a run of `method` trains with: the one named, else the method's official one (ume, which
    evaluates members, trains none)."""
    cls = REGISTRY.get(method)
    return named or (cls.optimizer if cls else None)


ADAMW_LR = 2e-3       # AdamW's default learning rate, every method alike
SGD_LR_PER_64 = 0.025  # SGD's, per 64 samples of an optimiser step: the linear scaling rule's 0.1 per 256, every
                       # method alike. The authors' own rates (ReconBoost, LFM 0.01; MMPareto, Re-learning 2e-3;
                       # OGM-GE, MLA, MMCosine 1e-3; PMR 1e-4) come with long step-decay schedules (OGM-GE's
                       # StepLR at epoch 70, ReconBoost's hundreds of 8-epoch stages) and barely train in a few
                       # epochs (docs/methods.md, tests/test_default_lr.py)


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
    lr = cfg.lr or default_lr(optimizer, global_batch(cfg, world) * cfg.grad_accum)
    return dataclasses.replace(cfg, fusion=cfg.fusion or cls.fusions[0], optimizer=optimizer, lr=lr)


def method_for(cfg: TrainConfig) -> Method:
    """The method object that trains `cfg` (resolved), after it checked the configuration."""
    if cfg.method not in REGISTRY:
        raise ConfigError(f"{cfg.method!r} is not a trainable method ({', '.join(REGISTRY)})")
    cfg = resolved(cfg)
    REGISTRY[cfg.method].check(cfg)
    return REGISTRY[cfg.method](cfg)

assert set(REGISTRY) | {"ume"} == set(METHODS), "config.METHODS names each method once: the trainable ones here"
