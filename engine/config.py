"""Training run configuration: one dataclass, saved resolved as config.yaml in every run."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from umt.loaders.errors import UserError
from umt.loaders.stored.views import ViewSpec

METHODS = ("unimodal", "joint", "umt", "ume", "ogm-ge", "gblend")


class ConfigError(UserError):
    """A run configuration is inconsistent."""


@dataclass
class TrainConfig:
    data: str
    out: str
    method: str = "joint"
    modalities: tuple[str, ...] = ("video", "audio")
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    width: int = 16
    fusion: str = "linear"
    seed: int = 0
    view_seed: int | None = None     # None: `seed`, or the cache's seed when a cache is used
    num_views: int | None = None     # training views per sample; None: a fresh view every epoch
    view: ViewSpec = field(default_factory=ViewSpec)
    backend: str = "auto"            # video/audio decoding: "cpu" (PyAV), "dali" (NVDEC), "auto" (dali with a GPU and DALI)
    num_workers: int = 1
    shuffle_buffer: int = 256
    distill_weight: float = 10.0     # UMT's λ (BalanceMM uses 10 with mean-reduced MSE)
    distill: tuple[str, ...] = ()    # UMT: modalities distilled (empty: every modality with a teacher)
    projector: bool = False          # UMT: distil through a learned linear projector (FitNets)
    ogm_alpha: float = 0.1           # OGM-GE's α (OGM-GE repo: 0.1 VGGSound, 0.8 CREMA-D)
    ogm_start: int = 0               # OGM-GE: first epoch of modulation
    ogm_end: int | None = None       # OGM-GE: epoch at which modulation stops (None: never)
    ogm_ge: bool = True              # OGM-GE: add the generalisation-enhancement noise
    ume_combine: str = "logits"      # UME: average "logits" or "probs"
    ume_fit_weights: bool = False    # UME: fit per-member weights on the validation split
    cache: str | None = None         # UMT targets from `umt-cache build`
    cache_budget_gb: float = 8.0     # hold the cache whole in memory up to this size, else stream shards
    teachers: dict[str, str] = field(default_factory=dict)  # modality → uni-modal checkpoint
    members: dict[str, str] = field(default_factory=dict)   # UME: modality → uni-modal checkpoint
    max_steps: int | None = None     # stop early (smoke tests)
    grad_accum: int = 1              # micro-batches per optimiser step
    precision: str = "auto"          # "auto" (bf16 on GPU, fp32 on CPU), "no", "bf16" or "fp16"
    checkpoint_every: int = 0        # steps between training-state checkpoints (0: end of each epoch only)
    resume: str | None = None        # "latest" (this run directory's last checkpoint) or a checkpoint path
    log_every: int = 10
    probe: bool = True               # linear probes of each encoder at the end (test split)
    select: str = "last"             # final model: "last" epoch, or "best_val" (the epoch of best validation top-1)
    probe_every: int = 0             # also probe on the validation split every N epochs (0: never)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.method == "unimodal" and len(self.modalities) != 1:
            raise ConfigError(f"unimodal trains one modality, got {list(self.modalities)}")
        if self.method in ("joint", "umt", "ogm-ge", "gblend") and len(self.modalities) < 2:
            raise ConfigError(f"{self.method} needs two or more modalities, got {list(self.modalities)}")
        if self.method == "umt" and not (self.cache or self.teachers):
            raise ConfigError("umt needs teacher targets: --cache CACHE or --teacher MODALITY=CKPT")
        if self.method == "umt" and not self.cache and set(self.teachers) != set(self.modalities):
            raise ConfigError(f"online umt needs a teacher for each of {list(self.modalities)}, "
                              f"got {sorted(self.teachers)}")
        if self.method == "ume" and len(self.members) < 2:
            raise ConfigError("ume combines two or more uni-modal checkpoints: --member MODALITY=CKPT")
        if self.method == "ogm-ge" and self.fusion not in ("linear", "sum"):
            raise ConfigError("ogm-ge needs --fusion linear or sum (its logits must split by modality)")
        if self.select not in ("last", "best_val"):
            raise ConfigError(f"select must be last or best_val, got {self.select!r}")
        if self.backend not in ("auto", "cpu", "dali"):
            raise ConfigError(f"backend must be auto, cpu or dali, got {self.backend!r}")
        if self.precision not in ("auto", "no", "bf16", "fp16"):
            raise ConfigError(f"precision must be auto, no, bf16 or fp16, got {self.precision!r}")
        if self.grad_accum < 1 or (self.method == "ogm-ge" and self.grad_accum > 1):
            raise ConfigError("grad_accum must be >= 1 (and 1 for ogm-ge, which modulates each step's gradients)")
        if self.fusion not in ("linear", "mlp", "sum"):
            raise ConfigError(f"fusion must be linear, mlp or sum, got {self.fusion!r}")
        if set(self.distill) - set(self.modalities):
            raise ConfigError(f"distilled modalities {list(self.distill)} are not all among {list(self.modalities)}")
        if self.ume_combine not in ("logits", "probs"):
            raise ConfigError(f"ume_combine must be logits or probs, got {self.ume_combine!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch size must be >= 1")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["modalities"] = list(self.modalities)
        data["distill"] = list(self.distill)
        return data
