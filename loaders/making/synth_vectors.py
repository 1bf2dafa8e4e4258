"""`umt-data synth-arrays`: the synthetic generator's model of the data at the feature level.

The same label model as `umt-data synth` (`draw_symbols`): each sample has a video symbol and an
audio symbol in [0, K); on a share `paired` of samples the label is their sum mod K (the paired cue,
readable only from both modalities together); on the others each symbol equals the label with
probability `video_cue` / `audio_cue` (the uni-modal cues). Instead of rendering a clip and a tone,
each symbol is rendered as a D-dimensional vector: a fixed random prototype of the symbol plus
Gaussian noise of standard deviation `video_noise` / `audio_noise` per coordinate (encoding
"prototype": noise makes a modality's features less reliable, not slower to learn). Encoding
"product" hides the symbol in interactions instead: a vector [u, u * c_s] + noise, with u Gaussian
and c_s the symbol's fixed random ±1 code, so that each coordinate alone is independent of the
symbol and only products of coordinate pairs reveal it; an MLP learns such features slowly, which
is the kind of difficulty the paper's laziness argument is about. Sweeps over `paired` run in
minutes on a CPU,
which the clip generator cannot. Output: `vfeat.npy`, `afeat.npy` and `labels.csv` (label,split),
the input of `umt-data pack-arrays`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..stored.shards import SPLITS
from .synth import draw_symbols

VIEWS = ("vfeat", "afeat")   # the video symbol's and the audio symbol's feature vectors
ENCODINGS = ("prototype", "product")


@dataclass(frozen=True)
class VectorSynthConfig:
    classes: int = 10
    dim: int = 32
    train: int = 3000
    val: int = 1000
    test: int = 2000
    video_cue: float = 0.8
    audio_cue: float = 0.8
    paired: float = 0.25
    video_noise: float = 1.0
    audio_noise: float = 2.0
    video_encoding: str = "prototype"
    audio_encoding: str = "prototype"
    seed: int = 0

    def validate(self) -> None:
        for name in ("video_cue", "audio_cue", "paired"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"--{name.replace('_', '-')} must lie in [0, 1]")
        if self.classes < 2 or self.dim < 1 or min(self.train, self.val, self.test) < 1:
            raise UserError("need >= 2 classes, dim >= 1 and at least one sample per split")
        if min(self.video_noise, self.audio_noise) < 0:
            raise UserError("noise levels must be >= 0")
        for name in ("video_encoding", "audio_encoding"):
            if getattr(self, name) not in ENCODINGS:
                raise UserError(f"--{name.replace('_', '-')} must be one of {ENCODINGS}")
        if "product" in (self.video_encoding, self.audio_encoding) and self.dim % 2:
            raise UserError("the product encoding needs an even --dim")


def prototypes(cfg: VectorSynthConfig) -> np.ndarray:
    """[2, K, D] fixed random symbol prototypes (coordinates N(0, 1)), one set per modality.

    The product encoding uses the signs of the first D/2 coordinates as the symbol's ±1 code.
    """
    return np.random.default_rng([cfg.seed, 0xC0DE]).standard_normal((2, cfg.classes, cfg.dim))


def render(encoding: str, prototype: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """One symbol's feature vector under an encoding (module docstring)."""
    if encoding == "prototype":
        clean = prototype
    else:
        half = len(prototype) // 2
        u = rng.standard_normal(half)
        clean = np.concatenate([u, u * np.sign(prototype[:half])])
    return clean + noise * rng.standard_normal(len(prototype))


def generate(cfg: VectorSynthConfig) -> tuple[dict[str, np.ndarray], list[int], list[str]]:
    """(view → [N, D] float32, labels, splits) for train, val and test in that order."""
    cfg.validate()
    protos, noise = prototypes(cfg), (cfg.video_noise, cfg.audio_noise)
    encodings = (cfg.video_encoding, cfg.audio_encoding)
    rows: dict[str, list[np.ndarray]] = {v: [] for v in VIEWS}
    labels, splits = [], []
    for index, split in enumerate(SPLITS):
        rng = np.random.default_rng([cfg.seed, index])
        for _ in range(getattr(cfg, split)):
            label, video, audio, _paired = draw_symbols(cfg, rng)
            for m, (view, symbol) in enumerate(zip(VIEWS, (video, audio))):
                rows[view].append(render(encodings[m], protos[m, symbol], noise[m], rng))
            labels.append(label)
            splits.append(split)
    return {v: np.stack(r).astype(np.float32) for v, r in rows.items()}, labels, splits


def write_raw(out: str | Path, cfg: VectorSynthConfig) -> dict[str, Path]:
    """Write the views and labels.csv into `out`; returns {view: path, "labels": path}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    views, labels, splits = generate(cfg)
    paths = {v: out / f"{v}.npy" for v in VIEWS}
    for view, path in paths.items():
        np.save(path, views[view])
    paths["labels"] = out / "labels.csv"
    paths["labels"].write_text("label,split\n" + "".join(f"{y},{s}\n" for y, s in zip(labels, splits)))
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1) + "\n")
    return paths
