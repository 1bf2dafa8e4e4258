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
minutes on a CPU, which the clip generator cannot.

Label model `presence` (`draw_symbols`): an absent uni-modal feature renders as noise only (the
clean part is zero), and each modality gets `pair_dim` more coordinates for the paired cue's bit:
the bit's fixed random prototype plus noise `pair_noise` on paired samples, noise only on the
others — easy to read in both modalities, so that joint training can learn their XOR.

Output: `vfeat.npy`, `afeat.npy` and `labels.csv` (label,split,group; `pack-arrays` reads label and
split), the input of `umt-data pack-arrays`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..stored.shards import SPLITS
from .synth import draw_symbols, validate_label_model

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
    label_model: str = "cues"
    video_present: float = 1.0
    audio_present: float = 1.0
    video_noise: float = 1.0
    audio_noise: float = 2.0
    video_encoding: str = "prototype"
    audio_encoding: str = "prototype"
    pair_dim: int = 8
    pair_noise: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        validate_label_model(self)
        if self.classes < 2 or self.dim < 1 or self.pair_dim < 1 or min(self.train, self.val, self.test) < 1:
            raise UserError("need >= 2 classes, dim >= 1, pair-dim >= 1 and at least one sample per split")
        if min(self.video_noise, self.audio_noise, self.pair_noise) < 0:
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


def pair_prototypes(cfg: VectorSynthConfig) -> np.ndarray:
    """[2, 2, pair_dim] fixed random prototypes of the paired cue's bits (coordinates N(0, 1)), per modality."""
    return np.random.default_rng([cfg.seed, 0xB175]).standard_normal((2, 2, cfg.pair_dim))


def render(encoding: str, prototype: np.ndarray | None, noise: float, rng: np.random.Generator,
           dim: int = 0) -> np.ndarray:
    """One symbol's feature vector under an encoding (module docstring); prototype None: `dim` noise only."""
    if prototype is None:
        return noise * rng.standard_normal(dim)
    if encoding == "prototype":
        clean = prototype
    else:
        half = len(prototype) // 2
        u = rng.standard_normal(half)
        clean = np.concatenate([u, u * np.sign(prototype[:half])])
    return clean + noise * rng.standard_normal(len(prototype))


def generate(cfg: VectorSynthConfig) -> tuple[dict[str, np.ndarray], list[int], list[str], list[str]]:
    """(view → [N, D] float32, labels, splits, groups) for train, val and test in that order.

    D is `dim`, plus `pair_dim` under the presence model.
    """
    cfg.validate()
    protos, noise = prototypes(cfg), (cfg.video_noise, cfg.audio_noise)
    pairs, presence = pair_prototypes(cfg), cfg.label_model == "presence"
    encodings = (cfg.video_encoding, cfg.audio_encoding)
    rows: dict[str, list[np.ndarray]] = {v: [] for v in VIEWS}
    labels, splits, groups = [], [], []
    for index, split in enumerate(SPLITS):
        rng = np.random.default_rng([cfg.seed, index])
        for _ in range(getattr(cfg, split)):
            s = draw_symbols(cfg, rng)
            for m, (view, symbol) in enumerate(zip(VIEWS, (s.video, s.audio))):
                vector = render(encodings[m], None if symbol is None else protos[m, symbol], noise[m], rng, cfg.dim)
                if presence:
                    pair = None if s.bits is None else pairs[m, s.bits[m]]
                    vector = np.concatenate([vector, render("prototype", pair, cfg.pair_noise, rng, cfg.pair_dim)])
                rows[view].append(vector)
            labels.append(s.label)
            splits.append(split)
            groups.append(s.group)
    return {v: np.stack(r).astype(np.float32) for v, r in rows.items()}, labels, splits, groups


def write_raw(out: str | Path, cfg: VectorSynthConfig) -> dict[str, Path]:
    """Write the views and labels.csv into `out`; returns {view: path, "labels": path}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    views, labels, splits, groups = generate(cfg)
    paths = {v: out / f"{v}.npy" for v in VIEWS}
    for view, path in paths.items():
        np.save(path, views[view])
    paths["labels"] = out / "labels.csv"
    paths["labels"].write_text("label,split,group\n" + "".join(f"{y},{s},{g}\n" for y, s, g in zip(labels, splits, groups)))
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1) + "\n")
    return paths
