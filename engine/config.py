"""Training run configuration: one dataclass, saved resolved as config.yaml in every run.

TrainConfig holds the settings every method shares (declared here, SharedConfig) and each method's own (declared in
its module's `Options`), flat: OGM-GE's `alpha` is `TrainConfig.ogm_alpha`. Each declaration (engine/options.py
`option`) holds the default, the help and the names, from which the flags (engine/cli.py) and the YAML sections
(engine/config_files.py) are made.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

from umt.loaders.loading.bad import BAD_SAMPLE_POLICIES
from umt.loaders.stored.views import MAX_TEST_CLIPS, MAX_TEST_CROPS, ViewSpec

from .methods import ADAMW_LR, METHODS, REGISTRY, SETTINGS, SGD_LR_PER_64, authors_rates
from .options import ConfigError, Setting, option, settings

_SGD = ", ".join(name for name, cls in REGISTRY.items() if cls.optimizer == "sgd")
_OWN_HEADS = ", ".join(f"{name}: {cls.fusions[0]}" for name, cls in REGISTRY.items() if cls.fusions[0] != "linear")


@dataclass
class SharedConfig:
    """The settings every method shares, each declared once: its default, help (the flag's), YAML section and key
    (engine/config_files.py) and flag (engine/cli.py). TrainConfig adds each method's own."""

    data: str = option(dataclasses.MISSING, "shard directory (umt-data synth / pack)", section="data", key="path")
    out: str = option(dataclasses.MISSING, "run directory", section="run", key="out")
    method: str = option("joint", "the method (the list below)", choices=METHODS, section="method", key="name")
    backend: str = option("auto", "training-loader decoding of video/audio: cpu (PyAV workers), dali (NVDEC on the "
                          "GPU; not yet run on a GPU: README, Status), auto (dali when a GPU and DALI are present)",
                          choices=("auto", "cpu", "dali"), section="data", key="backend")
    finish: str = option("auto", "cpu backend: where each view is resized, colour-converted and turned into a "
                         "log-mel: in the decoding workers (CPU), or on the training device, batched (the workers "
                         "only decode: at 224 px / 16 frames / 10 s audio they ship 1.5x the clips a second; same "
                         "views to the bit, log-mels to float rounding; on a CPU it is slow, about 100 ms a view: for "
                         "checks); auto: device when training on a GPU (not yet run on a GPU: README, Status)",
                         choices=("auto", "workers", "device"), section="data", key="finish")
    num_workers: int = option(1, "decoding processes", flag="--workers", section="data", key="workers")
    bad_samples: str = option("skip", "a training sample that fails to decode: skip (another sample of its batch "
                              "takes its place, so every rank runs the planned batches; each is named in a warning "
                              "and counted in metrics.jsonl, results.json and report.md) or error (stop, naming shard "
                              "and sample). cpu backend; dali, image and vector sets stop at one. Evaluation always "
                              "stops", choices=BAD_SAMPLE_POLICIES, section="data", key="bad_samples")
    bad_samples_limit: int = option(16, "with skip: stop after this many damaged samples in a row (the data is "
                                    "plainly broken)", section="data", key="bad_samples_limit")
    view_seed: int | None = option(None, "seed of the augmented views (default: --seed, or the cache's)",
                                   section="data", key="view_seed")
    num_views: int | None = option(None, "train on views 0..V-1 only (default: fresh views each epoch, or the "
                                   "cache's V)", section="data", key="num_views")
    view: ViewSpec = option(ViewSpec(), "the view spec (its flags: one per field)", flag="", section="data",
                            key="view")
    test_clips: int = option(1, "test protocol: T temporal windows per sample, evenly spaced from the clip's start "
                             "to its end (audio windows aligned), logits averaged over T x C views (Kinetics "
                             "literature: 10 x 3; default one centre view)", section="data", key="test_clips")
    test_crops: int = option(1, "test protocol: C spatial crops per window, along the frame's long side (3: "
                             "left/centre/right; 1: centre)", section="data", key="test_crops")
    modalities: tuple[str, ...] = option(("video", "audio"), "modality to use, repeatable (default: video and "
                                         "audio)", flag="--modality", metavar="MODALITY", section="model",
                                         key="modalities")
    width: int = option(16, "ResNet-18 base width; features are 8x this (64 gives the paper's 512-d)",
                        section="model", key="width")
    fusion: str | None = option(None, f"fusion head (default: the method's; linear but {_OWN_HEADS}): linear or mlp "
                                "on the concatenated features (linear: the paper's; mlp can read paired cues), sum of "
                                "per-modality linear heads' logits, or shared: one linear head for every modality, "
                                "their logits weighted per sample by exp(-entropy) (MLA's; needs equal feature dims)",
                                choices=("linear", "mlp", "sum", "shared"), section="model", key="fusion")
    optimizer: str | None = option(None, f"optimiser (default: the one of the method's official code: sgd for "
                                   f"{_SGD}; adamw for the others)", choices=("adamw", "sgd"), flag="--optim",
                                   section="optim", key="name")
    epochs: int = option(10, "training epochs", section="optim", key="epochs")
    batch_size: int = option(64, "per process (evaluation always; training unless --global-batch is set)",
                             section="optim", key="batch_size")
    global_batch: int | None = option(None, "training samples per micro-batch over all processes, each taking "
                                      "global / processes: the run can then resume on another number of processes",
                                      section="optim", key="global_batch")
    grad_accum: int = option(1, "micro-batches per optimiser step (windows stay inside an epoch; the effective batch "
                             "is batch size x grad accum x processes)", section="optim", key="grad_accum")
    max_steps: int | None = option(None, "stop after this many optimiser steps (each of --grad-accum "
                                   "micro-batches)", section="optim", key="max_steps")
    precision: str = option("auto", "mixed precision (auto: bf16 on GPU, fp32 on CPU)",
                            choices=("auto", "no", "bf16", "fp16"), section="optim", key="precision")
    # each optimiser's own, in its block of `optim` (engine/config_files.py OPTIMISERS)
    lr: float | None = option(None, f"peak learning rate, cosine decay (default: AdamW {ADAMW_LR:g}; SGD "
                              f"{SGD_LR_PER_64:g} per 64 samples of an optimiser step's batch, the linear scaling "
                              "rule's 0.1 per 256, the batch being the global batch (batch size x processes without "
                              "--global-batch) times --grad-accum; every method alike, as the authors' own rates — "
                              f"{authors_rates()} — come with 70-800 epochs of step decay and barely train in a few "
                              "epochs)", section="optim")
    weight_decay: float = option(1e-4, "weight decay (AdamW's decoupled, SGD's L2)", section="optim")
    momentum: float = option(0.9, "SGD momentum (the official OGM-GE, MMPareto, PMR and MLA use 0.9)",
                             section="optim")
    nesterov: bool = option(False, "SGD with Nesterov momentum", section="optim")
    seed: int = option(0, "seed of the model's initialisation and the data's order", section="run", key="seed")
    log_every: int = option(10, "optimiser steps between loss records", section="run", key="log_every")
    checkpoint_every: int = option(0, "optimiser steps between training-state checkpoints in "
                                   "OUT/checkpoints/last.pt (default: end of each epoch)", section="run",
                                   key="checkpoint_every")
    resume: str | None = option(None, "continue a killed run: 'latest' resumes OUT's last checkpoint (and starts "
                                "fresh if there is none); the configuration must be the same", metavar="latest|PATH",
                                section="run", key="resume")
    select: str = option("last", "final model: the last epoch's, or the epoch with the best validation top-1 (early "
                         "stopping without stopping; every method alike)", choices=("last", "best_val"),
                         section="run", key="select")
    probe: bool = option(True, "linear probes of each encoder at the end (test split); --no-probe skips them",
                         section="run", key="probe")
    probe_every: int = option(0, "also probe each encoder on the validation split every N epochs (costs one pass "
                              "over the training split)", section="run", key="probe_every")
    log_with: str = option("tensorboard", "Accelerate tracker that also receives the metrics (default tensorboard, "
                           "in OUT/tensorboard; metrics.jsonl is always written; others need their package "
                           "installed)", choices=("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml",
                                                  "dvclive", "none"), section="run", key="log_with")

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


SHARED_SETTINGS: tuple[Setting, ...] = tuple(settings("", SharedConfig))
# The allowed values of every choice setting (the CLI's choices come from here).
CHOICES: dict[str, tuple[str, ...]] = {s.attr: s.choices for s in (*SHARED_SETTINGS, *SETTINGS) if s.choices}
METHOD_CHOICES = ("fusion", "optimizer")  # None: the method's choice (engine/methods `resolved`)

TrainConfig = dataclasses.make_dataclass(
    "TrainConfig", [(s.attr, s.type, s.new_field()) for s in SETTINGS], bases=(SharedConfig,),
    namespace={"__doc__": "A run's configuration: the shared settings and every method's own (engine/options.py)."})
TrainConfig.__module__ = __name__
