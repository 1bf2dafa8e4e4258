"""Training run configuration: one dataclass, saved resolved as config.yaml in every run.

TrainConfig holds the settings every method shares (declared here) and each method's own settings (declared in its
module, engine/options.py), flat: OGM-GE's `alpha` is `TrainConfig.ogm_alpha`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

from umt.loaders.loading.bad import BAD_SAMPLE_POLICIES
from umt.loaders.stored.views import MAX_TEST_CLIPS, MAX_TEST_CROPS, ViewSpec

from .methods import METHODS, SETTINGS
from .options import ConfigError

# The allowed values of every choice setting, declared once (the CLI's choices come from here).
CHOICES: dict[str, tuple[str, ...]] = {
    "method": METHODS,
    "fusion": ("linear", "mlp", "sum", "shared"),
    "optimizer": ("adamw", "sgd"),
    "precision": ("auto", "no", "bf16", "fp16"),
    "backend": ("auto", "cpu", "dali"),
    "finish": ("auto", "workers", "device"),
    "select": ("last", "best_val"),
    "bad_samples": BAD_SAMPLE_POLICIES,
    "log_with": ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "none"),
    **{s.attr: s.choices for s in SETTINGS if s.choices},
}
METHOD_CHOICES = ("fusion", "optimizer")  # None: the method's choice (engine/methods `resolved`)


@dataclass
class SharedConfig:
    """The settings every method shares; TrainConfig adds each method's own."""

    data: str
    out: str
    method: str = "joint"
    modalities: tuple[str, ...] = ("video", "audio")
    epochs: int = 10
    batch_size: int = 64
    global_batch: int | None = None  # training samples per micro-batch over all processes (each: global / processes);
                                     # None: batch_size per process. Fixed, it lets a run resume on another process count
    lr: float | None = None          # None: the optimiser's default (engine/methods `default_lr`)
    weight_decay: float = 1e-4
    optimizer: str | None = None     # "adamw" or "sgd"; None: the optimiser of the method's official code
    momentum: float = 0.9            # SGD's momentum (the official OGM-GE, MMPareto, PMR and MLA use 0.9)
    nesterov: bool = False           # SGD: Nesterov momentum
    width: int = 16
    fusion: str | None = None        # None: the method's fusion (the first of its `fusions`, engine/methods)
    seed: int = 0
    view_seed: int | None = None     # None: `seed`, or the cache's seed when a cache is used
    num_views: int | None = None     # training views per sample; None: a fresh view every epoch
    view: ViewSpec = field(default_factory=ViewSpec)
    test_clips: int = 1              # test views per sample: temporal windows (and aligned audio windows) ...
    test_crops: int = 1              # ... x spatial crops along the long side, logits averaged (Kinetics: 10 x 3)
    backend: str = "auto"            # video/audio decoding: "cpu" (PyAV), "dali" (NVDEC), "auto" (dali with a GPU and DALI)
    finish: str = "auto"             # cpu backend: views resized/converted/log-mel'd in the "workers" or on the
                                     # training "device" (workers only decode); "auto": device when it is a GPU
    num_workers: int = 1
    bad_samples: str = "skip"         # a training sample that fails to decode: "skip" (replaced, counted) or "error"
    bad_samples_limit: int = 16      # with skip: stop after this many damaged samples in a row
    max_steps: int | None = None     # stop after this many optimiser steps
    grad_accum: int = 1              # micro-batches per optimiser step
    precision: str = "auto"          # "auto" (bf16 on GPU, fp32 on CPU), "no", "bf16" or "fp16"
    checkpoint_every: int = 0        # steps between training-state checkpoints (0: end of each epoch only)
    resume: str | None = None        # "latest" (this run directory's last checkpoint) or a checkpoint path
    log_every: int = 10
    probe: bool = True               # linear probes of each encoder at the end (test split)
    select: str = "last"             # final model: "last" epoch, or "best_val" (the epoch of best validation top-1)
    probe_every: int = 0             # also probe on the validation split every N epochs (0: never)
    log_with: str = "tensorboard"    # Accelerate tracker for metrics (metrics.jsonl is always written)

    def validate(self) -> None:
        """Settings every method shares; each method checks its own (engine/methods, engine/ume.py)."""
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed and not (name in METHOD_CHOICES and getattr(self, name) is None):
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.grad_accum < 1 or self.bad_samples_limit < 1:
            raise ConfigError("grad_accum and bad_samples_limit must be >= 1")
        if set(self.distill) - set(self.modalities):
            raise ConfigError(f"distilled modalities {list(self.distill)} are not all among {list(self.modalities)}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.logit_temperature <= 0:
            raise ConfigError(f"logit temperature must be > 0, got {self.logit_temperature}")
        if not 0 <= self.momentum < 1 or (self.nesterov and self.momentum == 0):
            raise ConfigError(f"momentum must lie in [0, 1) and be > 0 with nesterov; got {self.momentum}")
        if self.epochs < 1 or self.batch_size < 1 or (self.global_batch is not None and self.global_batch < 1):
            raise ConfigError("epochs, batch size and global batch must be >= 1")
        if not (1 <= self.test_clips <= MAX_TEST_CLIPS and 1 <= self.test_crops <= MAX_TEST_CROPS):
            raise ConfigError(f"test clips must be in 1..{MAX_TEST_CLIPS} and test crops in 1..{MAX_TEST_CROPS}, "
                              f"got {self.test_clips} and {self.test_crops}")

    @property
    def resolved_view_seed(self) -> int:
        """The seed of the run's views: view_seed, else seed (a UMT cache fixes its own instead)."""
        return self.seed if self.view_seed is None else self.view_seed

    def to_dict(self) -> dict:
        data = asdict(self)
        data["modalities"] = list(self.modalities)
        data["distill"] = list(self.distill)
        return data


TrainConfig = dataclasses.make_dataclass(
    "TrainConfig", [(s.attr, s.type, s.new_field()) for s in SETTINGS], bases=(SharedConfig,),
    namespace={"__doc__": "A run's configuration: the shared settings and every method's own (engine/options.py)."})
TrainConfig.__module__ = __name__
