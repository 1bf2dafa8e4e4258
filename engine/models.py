"""ResNet-18-style encoders and late-fusion classifiers, in plain torch.

Every model is a `LateFusionNet`: one encoder per modality (each returns one pooled feature
vector) and a head on their concatenated features. A uni-modal model is the one-modality case, so a
teacher's encoder is interchangeable with a student's.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

VIDEO_MEAN = (0.45, 0.45, 0.45)
VIDEO_STD = (0.225, 0.225, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    modalities: tuple[str, ...]
    num_classes: int
    width: int = 64          # ResNet-18 proper is 64 → 512-d features; small widths for CPU runs
    fusion: str = "linear"   # "linear" on concatenated features (the paper's), "mlp" (can read paired
                             # cues), "sum" (sum of per-modality linear heads' logits), or "shared" (one
                             # linear head for every modality, logits fused by prediction entropy; MLA's)
    hidden: int = 256
    projector: tuple[str, ...] = ()  # UMT: modalities distilled through a learned linear map, MSE(P·f, f_teacher)
    aux_heads: bool = False  # G-Blending: one auxiliary linear classifier per modality
    cosine_scale: float = 0.0  # MMCosine: > 0 makes the linear head a bias-free cosine classifier per modality
    logit_map: bool = False  # AMCo: a learned C×C linear map after the fusion head (its `linear_star`)
    logit_map_scored: bool = True  # AMCo: the prediction is the map's output (False: the fused logits before it)
    boost_rate: float = 0.0  # ReconBoost: > 0 makes fusion "shared" give ρ·Σ_m head(f_m), ρ learned from this
    shared_mlp: bool = False  # ReconBoost: the shared head an MLP D → D/2 → C (the authors' 512 → 256 → C)
    mmtm: bool = False       # Greedy: a multimodal transfer module rescales the pooled features before the head
    inputs: dict = field(default_factory=dict)  # modality → {"kind", "dim"}; absent: kind = name (video, audio)

    def to_dict(self) -> dict:
        return {**asdict(self), "modalities": list(self.modalities), "projector": list(self.projector)}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        return cls(**{**data, "modalities": tuple(data["modalities"]), "projector": tuple(data.get("projector", ()))})

    def encoder(self, modality: str) -> nn.Module:
        spec = self.inputs.get(modality, {})
        kind = spec.get("kind", modality)
        if kind not in ENCODERS:
            raise ValueError(f"modality {modality!r} has unknown kind {kind!r}; known: {sorted(ENCODERS)}")
        return ENCODERS[kind](self.width, **({"in_dim": spec["dim"]} if kind == "vector" else {}))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """Four stages of two basic blocks (widths w, 2w, 4w, 8w), global average pooled to 8w.

    The stem is one stride-2 3x3 convolution (ResNet-18's 7x7/2 + max-pool downsamples 4x, too
    much for the small inputs umt trains on CPU); at width 64 the stages match ResNet-18's.
    """

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        layers, c_in = [], width
        for stage, stride in enumerate((1, 2, 2, 2)):
            c_out = width * 2 ** stage
            layers += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.out_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x)).mean(dim=(2, 3))


class ImageEncoder(nn.Module):
    """uint8 images [B, H, W, 3] → normalised → 2-D ResNet → [B, D]."""

    def __init__(self, width: int):
        super().__init__()
        self.net = ResNet18(3, width)
        self.out_dim = self.net.out_dim
        self.register_buffer("mean", torch.tensor(VIDEO_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(VIDEO_STD).view(1, 3, 1, 1) * 255, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.permute(0, 3, 1, 2).float().contiguous()  # NCHW, as DDP's buckets expect
        return self.net((pixels - self.mean) / self.std)


class VideoEncoder(ImageEncoder):
    """uint8 clips [B, T, H, W, 3] → the image encoder on every frame → mean over time → [B, D]."""

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        b, t = clips.shape[:2]
        return super().forward(clips.flatten(0, 1)).view(b, t, -1).mean(dim=1)


class AudioEncoder(nn.Module):
    """Log-mel [B, 1, mels, frames] → 2-D ResNet → [B, D]."""

    def __init__(self, width: int):
        super().__init__()
        self.net = ResNet18(1, width)
        self.out_dim = self.net.out_dim

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return self.net(spec)


class VectorEncoder(nn.Module):
    """Standardised feature vectors [B, in_dim] → two-layer MLP → [B, 8·width] (512-d at width 64)."""

    def __init__(self, width: int, in_dim: int):
        super().__init__()
        self.out_dim = 8 * width
        self.net = nn.Sequential(nn.Linear(in_dim, self.out_dim), nn.ReLU(inplace=True),
                                 nn.Linear(self.out_dim, self.out_dim), nn.ReLU(inplace=True))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.net(vectors.float())


ENCODERS = {"video": VideoEncoder, "audio": AudioEncoder, "image": ImageEncoder, "vector": VectorEncoder}


def entropy_weights(logits: torch.Tensor) -> torch.Tensor:
    """[M, B, C] per-modality logits → [M, B] fusion weights exp(−H_m) / Σ_k exp(−H_k), H_m the entropy of
    modality m's prediction for the sample: the more certain modality counts more (MLA, Zhang et al.,
    CVPR 2024). Per sample, as the paper writes it (the official code's `calculate_gating_weights` takes
    one entropy over a whole batch, so a sample's score would depend on its batch-mates). Detached: a
    test-time gate, not something training should learn to game."""
    log_p = torch.log_softmax(logits.detach().float(), dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return torch.softmax(-entropy, dim=0)


class MMTM(nn.Module):
    """Multimodal transfer module (Joze et al., CVPR 2020) on pooled features: each modality's feature is
    rescaled unit by unit by a sigmoid gate computed from every modality's feature,
        h = ReLU(W_s [f_1, ..., f_M] + b_s),   g_m = σ(W_m h + b_m),   f'_m = g_m ⊙ f_m,
    with h of 2·Σ_m D_m / ratio units. The gates are how one modality's information reaches another's
    branch (Greedy's "bypass"). While training with `caring` set to a modality, that modality's gate is
    the running mean of its past gates instead (one constant vector for every sample), which cuts the
    other modalities out of its branch; evaluation always uses the computed gates. The running means
    (buffers, so they are checkpointed with the model) are updated by the method that trains the
    module (Greedy, engine/methods/greedy.py), from the gates of all ranks.
    """

    def __init__(self, dims: dict[str, int], ratio: int = 4):
        super().__init__()
        self.dims = dict(dims)
        total = sum(dims.values())
        self.squeeze = nn.Linear(total, int(2 * total / ratio))
        self.excite = nn.ModuleDict({m: nn.Linear(self.squeeze.out_features, d) for m, d in dims.items()})
        self.register_buffer("running", torch.zeros(total))     # per modality, concatenated in `dims` order
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))  # micro-batches averaged into it
        self.caring: str | None = None

    def gates(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """g_m for each modality, [B, D_m]."""
        hidden = torch.relu(self.squeeze(torch.cat([feats[m] for m in self.dims], dim=1)))
        return {m: torch.sigmoid(excite(hidden)) for m, excite in self.excite.items()}

    def running_gates(self) -> dict[str, torch.Tensor]:
        """The running mean of each modality's gate, [D_m]."""
        return dict(zip(self.dims, self.running.split(list(self.dims.values()))))

    @torch.no_grad()
    def remember(self, mean_gates: torch.Tensor) -> None:
        """Fold one micro-batch's mean gates (concatenated in `dims` order) into the running means."""
        self.running.copy_((mean_gates + self.running * self.seen) / (self.seen + 1))
        self.seen += 1

    def forward(self, feats: dict[str, torch.Tensor],
                gates: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The rescaled features; `gates`: this batch's `gates(feats)` when the caller has them already."""
        gates = dict(self.gates(feats) if gates is None else gates)
        if self.training and self.caring is not None:
            # a copy: the buffer is updated in place after this forward, before its backward pass; plus 0 × the
            # computed gate, so its parameters take part in the backward pass (DDP expects every parameter's
            # gradient; Greedy drops these zeros before the optimiser step, as the branch's gate was never used)
            computed = gates[self.caring]
            gates[self.caring] = self.running_gates()[self.caring].clone().expand_as(computed) + 0 * computed
        return {m: feats[m] * gates[m] for m in self.dims}


class LateFusionNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoders = nn.ModuleDict({m: cfg.encoder(m) for m in cfg.modalities})
        dim = sum(enc.out_dim for enc in self.encoders.values())
        if cfg.cosine_scale and cfg.fusion != "linear":
            raise ValueError(f"a cosine head (cosine_scale) needs fusion 'linear', got {cfg.fusion!r}")
        if cfg.boost_rate and cfg.fusion != "shared":
            raise ValueError(f"a boosted sum (boost_rate) needs fusion 'shared', got {cfg.fusion!r}")
        if cfg.fusion == "linear":
            self.head = nn.Linear(dim, cfg.num_classes, bias=not cfg.cosine_scale)
        elif cfg.fusion == "mlp":
            self.head = nn.Sequential(nn.Linear(dim, cfg.hidden), nn.ReLU(inplace=True),
                                      nn.Linear(cfg.hidden, cfg.num_classes))
        elif cfg.fusion == "sum":
            self.head = nn.ModuleDict({m: nn.Linear(enc.out_dim, cfg.num_classes) for m, enc in self.encoders.items()})
        elif cfg.fusion == "shared":
            dims = {m: enc.out_dim for m, enc in self.encoders.items()}
            if len(set(dims.values())) != 1:
                raise ValueError(f"fusion 'shared' needs equal feature dims, got {dims}")
            dim = next(iter(dims.values()))
            self.head = nn.Sequential(nn.Linear(dim, dim // 2), nn.ReLU(inplace=True),
                                      nn.Linear(dim // 2, cfg.num_classes)) if cfg.shared_mlp else \
                nn.Linear(dim, cfg.num_classes)
        else:
            raise ValueError(f"fusion must be 'linear', 'mlp', 'sum' or 'shared', got {cfg.fusion!r}")
        self.aux_heads = nn.ModuleDict({m: nn.Linear(enc.out_dim, cfg.num_classes) for m, enc in self.encoders.items()}
                                       if cfg.aux_heads else {})
        self.projectors = nn.ModuleDict({m: nn.Linear(self.encoders[m].out_dim, self.encoders[m].out_dim)
                                         for m in cfg.projector})
        self.logit_map = nn.Linear(cfg.num_classes, cfg.num_classes) if cfg.logit_map else None
        self.rate = nn.Parameter(torch.tensor(float(cfg.boost_rate))) if cfg.boost_rate else None
        self.mmtm = MMTM({m: enc.out_dim for m, enc in self.encoders.items()}) if cfg.mmtm else None

    def features(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: enc(batch[m]) for m, enc in self.encoders.items()}

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Fused logits and each modality's pooled feature (the UMT distillation point)."""
        feats = self.features(batch)
        logits = self.fuse(feats)
        return (self.logit_map(logits) if self.logit_map is not None and self.cfg.logit_map_scored else logits), feats

    def fuse(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """The fusion head's logits from each modality's feature (a uni-modal model: its classifier's logits;
        methods that change features before fusion, e.g. modality dropout, call it on their own). With an
        MMTM (Greedy), the features are rescaled by it first."""
        if self.mmtm is not None:
            feats = self.mmtm(feats)
        if self.cfg.cosine_scale:
            return sum(self.cosine_logits(feats).values())
        if self.cfg.fusion == "sum":
            return sum(self.head[m](feats[m]) for m in self.cfg.modalities)
        if self.rate is not None:
            return self.rate * sum(self.head(feats[m]) for m in self.cfg.modalities)
        if self.cfg.fusion == "shared":
            logits = torch.stack([self.head(feats[m]) for m in self.cfg.modalities])  # [M, B, C]
            return (entropy_weights(logits)[..., None] * logits).sum(0)
        return self.head(torch.cat([feats[m] for m in self.cfg.modalities], dim=1))

    def cosine_logits(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """MMCosine's per-modality logits s·cos(f_m, W_m,c): the feature and each class's row of the head's
        block for modality m, both L2-normalised, so no modality wins by the norm of its features or weights."""
        out, start = {}, 0
        for m in self.cfg.modalities:
            dim = feats[m].shape[1]
            weight = F.normalize(self.head.weight[:, start:start + dim], dim=1)
            out[m] = self.cfg.cosine_scale * F.normalize(feats[m], dim=1) @ weight.T
            start += dim
        return out

    def distilled(self, modality: str, feature: torch.Tensor) -> torch.Tensor:
        """What UMT compares with the teacher's feature: the feature itself, or its projection."""
        return self.projectors[modality](feature) if modality in self.projectors else feature
