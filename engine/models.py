"""ResNet-18-style encoders and late-fusion classifiers, in plain torch.

Every model is a `LateFusionNet`: one encoder per modality (each returns one pooled feature
vector) and a head on their concatenated features. A uni-modal model is the one-modality case, so a
teacher's encoder is interchangeable with a student's.
"""
from __future__ import annotations

import functools

from dataclasses import asdict, dataclass, field

import torch
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

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.permute(0, 3, 1, 2).float().contiguous()  # NCHW, as DDP's buckets expect
        mean, std = _pixel_stats(pixels.device)
        return self.net((pixels - mean) / std)


@functools.lru_cache(maxsize=8)
def _pixel_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalisation's mean and std of 0-255 pixels [1, 3, 1, 1] on `device`: constants, not buffers, so that a
    model built on the meta device holds nothing its checkpoint does not fill (checkpoint.load_model)."""
    return tuple((torch.tensor(stats).view(1, 3, 1, 1) * 255).to(device) for stats in (VIDEO_MEAN, VIDEO_STD))


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


class ModelPart:
    """What one method adds to the late-fusion model, switched on by a ModelConfig field: the method's module
    registers it in PARTS under that field, so its checkpoints are rebuilt alike wherever they are loaded."""

    fusion: str | None = None  # the fusion head it works on (None: any)

    def head(self, net: LateFusionNet, dim: int) -> nn.Module | None:
        """The fusion head in place of the plain one (None: the plain one)."""
        return None

    def build(self, net: LateFusionNet) -> None:
        """Add the part's modules and parameters to `net`, after its heads."""

    def features(self, net: LateFusionNet, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The features the fusion head reads."""
        return feats

    def fuse(self, net: LateFusionNet, feats: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The fused logits in place of the head's (None: the head's)."""
        return None

    def scored(self, net: LateFusionNet, logits: torch.Tensor) -> torch.Tensor:
        """The model's prediction from the fused logits."""
        return logits


PARTS: dict[str, ModelPart] = {}  # ModelConfig field → the part it switches on (filled by engine/methods modules)


def _parts(cfg: ModelConfig) -> list[ModelPart]:
    """The parts `cfg` switches on."""
    from . import methods  # noqa: F401  (importing the methods registers their parts)
    on = {name: part for name, part in PARTS.items() if getattr(cfg, name)}
    for name, part in on.items():
        if part.fusion not in (None, cfg.fusion):
            raise ValueError(f"{name} needs fusion {part.fusion!r}, got {cfg.fusion!r}")
    return list(on.values())


class LateFusionNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoders = nn.ModuleDict({m: cfg.encoder(m) for m in cfg.modalities})
        dim = sum(enc.out_dim for enc in self.encoders.values())
        self.parts = _parts(cfg)
        if cfg.fusion == "shared":
            dims = {m: enc.out_dim for m, enc in self.encoders.items()}
            if len(set(dims.values())) != 1:
                raise ValueError(f"fusion 'shared' needs equal feature dims, got {dims}")
            dim = next(iter(dims.values()))
        own = [head for part in self.parts if (head := part.head(self, dim)) is not None]
        if own:
            self.head = own[0]
        elif cfg.fusion in ("linear", "shared"):
            self.head = nn.Linear(dim, cfg.num_classes)
        elif cfg.fusion == "mlp":
            self.head = nn.Sequential(nn.Linear(dim, cfg.hidden), nn.ReLU(inplace=True),
                                      nn.Linear(cfg.hidden, cfg.num_classes))
        elif cfg.fusion == "sum":
            self.head = nn.ModuleDict({m: nn.Linear(enc.out_dim, cfg.num_classes) for m, enc in self.encoders.items()})
        else:
            raise ValueError(f"fusion must be 'linear', 'mlp', 'sum' or 'shared', got {cfg.fusion!r}")
        self.aux_heads = nn.ModuleDict({m: nn.Linear(enc.out_dim, cfg.num_classes) for m, enc in self.encoders.items()}
                                       if cfg.aux_heads else {})
        self.projectors = nn.ModuleDict({m: nn.Linear(self.encoders[m].out_dim, self.encoders[m].out_dim)
                                         for m in cfg.projector})
        for part in self.parts:
            part.build(self)

    def features(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: enc(batch[m]) for m, enc in self.encoders.items()}

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The model's prediction (the fused logits, or what a method's part makes of them) and each modality's
        pooled feature (the UMT distillation point)."""
        feats = self.features(batch)
        logits = self.fuse(feats)
        for part in self.parts:
            logits = part.scored(self, logits)
        return logits, feats

    def fuse(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """The fusion head's logits from each modality's feature (a uni-modal model: its classifier's logits;
        methods that change features before fusion, e.g. modality dropout, call it on their own), through the
        parts of the method's model (Greedy's MMTM rescales the features first, MMCosine's head replaces the
        logits)."""
        for part in self.parts:
            feats = part.features(self, feats)
        for part in self.parts:
            if (logits := part.fuse(self, feats)) is not None:
                return logits
        if self.cfg.fusion == "sum":
            return sum(self.head[m](feats[m]) for m in self.cfg.modalities)
        if self.cfg.fusion == "shared":
            logits = torch.stack([self.head(feats[m]) for m in self.cfg.modalities])  # [M, B, C]
            return (entropy_weights(logits)[..., None] * logits).sum(0)
        return self.head(torch.cat([feats[m] for m in self.cfg.modalities], dim=1))

    def modality_logits(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each modality's additive share of the fused logits, W_m f_m + b/M (linear or sum fusion only): what
        OGM-GE, OPM, LFM, AMCo and MBSD weigh the modalities by."""
        mods = self.cfg.modalities
        if self.cfg.fusion == "sum":
            return {m: self.head[m](feats[m]) for m in mods}
        if self.cfg.fusion != "linear":
            raise ValueError("modality logits need fusion 'linear' or 'sum', whose logits split by modality")
        out, start = {}, 0
        for m in mods:
            dim = feats[m].shape[1]
            out[m] = feats[m] @ self.head.weight[:, start:start + dim].T + self.head.bias / len(mods)
            start += dim
        return out

    def distilled(self, modality: str, feature: torch.Tensor) -> torch.Tensor:
        """What UMT compares with the teacher's feature: the feature itself, or its projection."""
        return self.projectors[modality](feature) if modality in self.projectors else feature
