"""Training run configuration: one dataclass, saved resolved as config.yaml in every run."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from umt.loaders.errors import UserError
from umt.loaders.loading.bad import BAD_SAMPLE_POLICIES
from umt.loaders.stored.views import MAX_TEST_CLIPS, MAX_TEST_CROPS, ViewSpec

METHODS = ("unimodal", "joint", "umt", "ume", "ogm-ge", "gblend",
           "mmpareto", "agm", "pmr", "dropout", "mla",
           "mmcosine", "opm", "cml", "mbsd", "relearning", "amco", "lfm",
           "reconboost", "greedy", "valuation")  # ume evaluates, the others train
# The allowed values of every choice setting, declared once (the CLI's choices come from here).
CHOICES: dict[str, tuple[str, ...]] = {
    "method": METHODS,
    "fusion": ("linear", "mlp", "sum", "shared"),
    "optimizer": ("adamw", "sgd"),
    "precision": ("auto", "no", "bf16", "fp16"),
    "backend": ("auto", "cpu", "dali"),
    "finish": ("auto", "workers", "device"),
    "select": ("last", "best_val"),
    "ume_combine": ("logits", "probs"),
    "reconboost_head": ("mlp", "linear"),
    "distill_targets": ("features", "logits", "both"),
    "bad_samples": BAD_SAMPLE_POLICIES,
    "log_with": ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "none"),
}
METHOD_CHOICES = ("fusion", "optimizer")  # None: the method's choice (engine/methods `resolved`)


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
    global_batch: int | None = None  # training samples per micro-batch over all processes (each: global / processes);
                                     # None: batch_size per process. Fixed, it lets a run resume on another process count
    lr: float | None = None          # None: the optimiser's default (engine/methods `default_lr`)
    weight_decay: float = 1e-4
    optimizer: str | None = None     # "adamw" or "sgd"; None: the optimiser of the method's official code
    momentum: float = 0.9            # SGD's momentum (the official OGM-GE, MMPareto, PMR and MLA use 0.9)
    nesterov: bool = False           # SGD: Nesterov momentum
    width: int = 16
    fusion: str | None = None        # None: the method's fusion (MLA: shared; every other method: linear)
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
    distill_weight: float = 10.0     # UMT's λ (BalanceMM uses 10 with mean-reduced MSE)
    distill: tuple[str, ...] = ()    # UMT: modalities distilled (empty: every modality with a teacher)
    projector: bool = False          # UMT: distil through a learned linear projector (FitNets)
    distill_targets: str = "features"  # UMT: distil teacher "features" (the paper's), "logits" or "both"
    logit_temperature: float = 4.0   # UMT logit KL temperature T (Hinton et al. 2015's KD; T² keeps gradients' scale)
    logit_weight: float = 1.0        # UMT: weight of T²·KL(teacher ‖ student) per modality
    ogm_alpha: float = 0.1           # OGM-GE's α (OGM-GE repo: 0.1 VGGSound, 0.8 CREMA-D)
    ogm_start: int = 0               # OGM-GE: first epoch of modulation
    ogm_end: int | None = None       # OGM-GE: epoch at which modulation stops (None: never)
    ogm_ge: bool = True              # OGM-GE: add the generalisation-enhancement noise
    pareto_gamma: float = 1.5        # MMPareto: enlargement of the combined encoder gradient (MMPareto.py: gamma=1.5)
    agm_alpha: float = 0.1           # AGM's α (BalanceBenchmark configs/trainer_config.yaml, AGM: alpha 0.1)
    agm_start: int = 0               # AGM: first epoch of modulation
    agm_end: int | None = None       # AGM: epoch at which modulation stops (None: never)
    pmr_alpha: float = 1.0           # PMR's α, weight of the prototypical loss (main_Prototype_grad.py: --alpha 1.0)
    pmr_momentum: float = 0.2        # PMR: share of the old prototype kept per epoch (--momentum_coef 0.2)
    pmr_start: int = 0               # PMR: first epoch of rebalancing (--modulation_starts 0)
    pmr_end: int | None = None       # PMR: epoch at which rebalancing stops (None: never)
    dropout_p: float = 0.5           # modality dropout: probability that a training sample loses one modality
    mla_projection: bool = False     # MLA: project the shared head's gradient by textbook OWM (the official
                                     # results had no projection: engine/methods/mla.py)
    mmcosine_scale: float = 10.0     # MMCosine's s (the authors' README: --scaling 10; BalanceBenchmark: 15)
    opm_alpha: float = 0.5           # OPM's α (BalanceBenchmark trainer_config.yaml, OPM: alpha 0.5)
    opm_p_exe: float = 0.7           # OPM: probability that a batch is modulated (p_exe 0.7)
    opm_q_base: float = 0.5          # OPM: base drop probability of the dominant modality (the authors'
                                     # scripts/train_opm.sh: 0.5; their config.py and BalanceBenchmark: 0.4)
    opm_start: int = 0               # OPM: first modulated epoch (BalanceBenchmark 0; BML_TPAMI2024 warms up 6)
    cml_lambda: float = 0.1          # CML's λ, weight of the confidence penalty (BalanceBenchmark, CML: lam 0.1)
    cml_batch_clamp: bool = False    # CML: BalanceBenchmark's penalty, the batch sum clamped at 0 without the
                                     # trick-1 mask (default: the authors', clamped per sample and masked)
    relearn_lambda: float = 3.0      # Re-learning's λ in tanh(λ·purity gap) (BalanceBenchmark: move_lambda 3)
    relearn_every: int | None = None  # Re-learning: epochs between re-initialisations; None: the authors' 20 of
                                      # 90 epochs scaled to the run, round(20 · epochs / 90) (BalanceBenchmark: 15)
    relearn_times: int = 3           # Re-learning: how many re-initialisations at most (the authors' reinit_num 3;
                                     # BalanceBenchmark: 2)
    amco_sigma: float = 0.5          # AMCo: softmax-mass share above which a modality counts as depended on (sigma 0.5)
    amco_eps: float = 0.3            # AMCo: ε of the mask ratio's sine ramp (eps 0.3)
    amco_score_sum: bool = False     # AMCo: evaluate the fused logits Σu, as BalanceBenchmark's validation_step
                                     # (default: A(Σu), the prediction the fused loss trains)
    lfm_lr_alpha: float = 1e-4       # LFM: step size of the alignment weight's update (the authors' lr_alpha)
    lfm_alpha: float = 0.95          # LFM: the alignment weight's start (the authors' cls_k [0.05, 0.95];
                                     # BalanceBenchmark: 0.05)
    reconboost_alpha: float = 0.5    # ReconBoost: weight of the (gradient-free) ga term (BalanceBenchmark: alpha 0.5)
    reconboost_w1: float = 5.0       # ReconBoost: weight of the boosted learner's own log-likelihood (weight1 5)
    reconboost_w2: float = 1.0       # ReconBoost: weight of the term against the others' ensemble (weight2 1)
    reconboost_epochs: int | None = None  # ReconBoost: epochs per phase, T; None: the authors' 4 (epochs_per_stage,
                                          # correct_epoch), fewer when the run is shorter than one cycle of
                                          # 4-epoch phases (BalanceBenchmark: T_epochs 1)
    reconboost_rate: float = 1.0     # ReconBoost: the learned rate ρ's start (the authors' boost_rate 1.0; BB: 0.01)
    reconboost_head: str = "mlp"     # ReconBoost: the shared head, "mlp" D→D/2→C (the authors' 512→256→C) or
                                     # "linear" (BalanceBenchmark's)
    greedy_epsilon: float = 0.01     # Greedy: |d_BDR| above which re-balancing steps start (the authors'
                                     # Bias_Mitigation_Strong.epsilon 0.01; BalanceBenchmark's alpha 0.001)
    greedy_window: int = 5           # Greedy: optimiser steps of each re-balancing window (curation_windowsize 5)
    greedy_start: int = 1            # Greedy: first epoch (from 0) that may re-balance (the authors' starting_epoch
                                     # 2, counted from 1)
    valuation_warmup: int = 5        # Modality-valuation: epochs of plain joint training before sample
                                     # valuation starts (the authors' --warmup 5)
    ume_combine: str = "logits"      # UME: average "logits" or "probs"
    ume_fit_weights: bool = False    # UME: fit per-member weights on the validation split
    cache: str | None = None         # UMT targets from `umt-cache build`
    cache_budget_gb: float = 8.0     # hold the cache whole in memory up to this size, else stream shards
    teachers: dict[str, str] = field(default_factory=dict)  # modality → uni-modal checkpoint
    members: dict[str, str] = field(default_factory=dict)   # UME: modality → uni-modal checkpoint
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
