"""`umt-data synth`: a procedural audio-visual dataset that models the paper's assumptions.

Every clip shows a video symbol (the hue of a small moving square in a noisy frame) and an audio
symbol (the pitch of a tone in noise). Two label models (`label_model`):

- `cues` (the default): both symbols in [0, K). On a share `paired` of samples the label is
  (video symbol + audio symbol) mod K with both symbols uniform, so neither modality alone says
  anything about the label there (the paired cue); on the others each symbol equals the label with
  probability `video_cue` / `audio_cue` and is uniform otherwise (the uni-modal cues).
- `presence` (issue 15): the paper's picture of samples that carry only some features. On a share
  `paired` of samples each modality shows one bit and the label is their XOR (class 0 or 1): an
  interaction a fusion head learns easily, and invisible to either modality alone. On the others
  the label is uniform and each modality's uni-modal feature (a symbol equal to the label) is
  present with probability `video_present` / `audio_present`, independently; an absent feature
  leaves that modality with noise only (no square, no tone) — no class evidence, rather than a
  random symbol that would contradict the other modality. Each sample's group (GROUPS) is recorded.

The same config and seed give byte-identical shards.
"""
from __future__ import annotations

import colorsys
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from ..errors import UserError
from ..stored.media import encode_flac, encode_h264
from ..stored.shards import FORMAT, SPLITS, ShardWriter, with_offsets, write_manifest


@dataclass(frozen=True)
class SynthConfig:
    classes: int = 10
    train: int = 1000
    val: int = 200
    test: int = 400
    frames: int = 12
    size: int = 40
    fps: int = 8
    gop: int = 4
    audio_seconds: float = 1.5
    sample_rate: int = 16000
    video_cue: float = 0.8
    audio_cue: float = 0.9
    paired: float = 0.25
    label_model: str = "cues"
    video_present: float = 1.0
    audio_present: float = 1.0
    video_noise: float = 0.15
    audio_noise: float = 1.0
    shard_size: int = 250
    seed: int = 0

    def validate(self) -> None:
        validate_label_model(self)
        if self.label_model == "presence" and self.sample_rate < 2 * PAIR_FREQUENCIES[1] + 1000:
            raise UserError(f"the presence model's paired tones need --sample-rate >= {2 * PAIR_FREQUENCIES[1] + 1000:.0f}")
        if self.classes < 2 or self.size % 2 or self.size < 8 or self.frames < 1:
            raise UserError("need >= 2 classes, an even frame size >= 8 and >= 1 frame")
        if min(self.train, self.val, self.test, self.shard_size) < 1:
            raise UserError("every split and the shard size need at least one sample")


LABEL_MODELS = ("cues", "presence")
GROUPS = ("both", "video_only", "audio_only", "paired", "neither")  # presence model; the cues model: "cues", "paired"
PAIR_GREYS = (20.0, 235.0)          # presence model, paired samples: the video bit is a black or a white square
PAIR_FREQUENCIES = (120.0, 7000.0)  # ... and the audio bit a tone below or above the symbols' 200 Hz - 6 kHz


class Symbols(NamedTuple):
    """What one sample shows. A symbol of None: that modality's uni-modal feature is absent (noise only)."""

    label: int
    video: int | None
    audio: int | None
    group: str
    bits: tuple[int, int] | None = None  # presence model, paired samples: (video bit, audio bit)


def validate_label_model(cfg) -> None:
    """The label-model settings both generators share (`draw_symbols` reads them)."""
    for name in ("video_cue", "audio_cue", "paired", "video_present", "audio_present"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise UserError(f"--{name.replace('_', '-')} must lie in [0, 1]")
    if cfg.label_model not in LABEL_MODELS:
        raise UserError(f"--label-model must be one of {LABEL_MODELS}, got {cfg.label_model!r}")


def draw_symbols(cfg, rng: np.random.Generator) -> Symbols:
    """One sample's label and symbols under the config's label model (module docstring)."""
    k = cfg.classes
    if cfg.label_model == "presence":
        if rng.random() < cfg.paired:
            bits = (int(rng.integers(2)), int(rng.integers(2)))
            return Symbols(bits[0] ^ bits[1], None, None, "paired", bits)
        label = int(rng.integers(k))
        video = label if rng.random() < cfg.video_present else None
        audio = label if rng.random() < cfg.audio_present else None
        group = {(True, True): "both", (True, False): "video_only", (False, True): "audio_only",
                 (False, False): "neither"}[video is not None, audio is not None]
        return Symbols(label, video, audio, group)
    label = int(rng.integers(k))
    if rng.random() < cfg.paired:
        video = int(rng.integers(k))
        return Symbols(label, video, (label - video) % k, "paired")
    video = label if rng.random() < cfg.video_cue else int(rng.integers(k))
    audio = label if rng.random() < cfg.audio_cue else int(rng.integers(k))
    return Symbols(label, video, audio, "cues")


def square_colour(cfg: SynthConfig, symbols: Symbols) -> np.ndarray | None:
    """RGB of the moving square: the symbol's hue, a paired bit's grey, or None (no square)."""
    if symbols.bits is not None:
        return np.full(3, PAIR_GREYS[symbols.bits[0]])
    if symbols.video is None:
        return None
    return np.array(colorsys.hsv_to_rgb(symbols.video / cfg.classes, 0.85, 0.9)) * 255.0


def tone(cfg: SynthConfig, symbols: Symbols) -> float | None:
    """Frequency of the tone: the symbol's pitch, a paired bit's pitch, or None (noise only)."""
    if symbols.bits is not None:
        return PAIR_FREQUENCIES[symbols.bits[1]]
    return None if symbols.audio is None else tone_frequency(cfg, symbols.audio)


def render_video(cfg: SynthConfig, rgb: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """A square of colour `rgb` (none when None) moving and bouncing over a noisy grey background."""
    size, side = cfg.size, max(2, cfg.size // 5)
    frames = np.full((cfg.frames, size, size, 3), rng.uniform(60, 140), dtype=np.float32)
    pos = rng.uniform(0, size - side, 2)
    vel = rng.uniform(-2.0, 2.0, 2)
    for t in range(cfg.frames):
        y, x = pos.astype(int)
        if rgb is not None:
            frames[t, y:y + side, x:x + side] = rgb
        pos += vel
        for axis in range(2):
            if not 0 <= pos[axis] <= size - side:
                vel[axis] = -vel[axis]
                pos[axis] = np.clip(pos[axis], 0, size - side)
    frames += rng.normal(0.0, cfg.video_noise * 255.0, frames.shape).astype(np.float32)
    return np.clip(frames, 0, 255).astype(np.uint8)


def tone_frequency(cfg: SynthConfig, symbol: int) -> float:
    """Symbols are log-spaced pitches from 200 Hz to 6 kHz."""
    return 200.0 * 30.0 ** (symbol / (cfg.classes - 1))


def render_audio(cfg: SynthConfig, frequency: float | None, rng: np.random.Generator) -> np.ndarray:
    """A tone of the given frequency (none when None) in white noise, mono int16."""
    n = int(round(cfg.audio_seconds * cfg.sample_rate))
    t = np.arange(n) / cfg.sample_rate
    phase = rng.uniform(0, 2 * np.pi)
    wave = 0.2 * cfg.audio_noise * rng.standard_normal(n)
    if frequency is not None:
        wave = 0.2 * np.sin(2 * np.pi * frequency * t + phase) + wave
    return np.clip(wave * 32767, -32768, 32767).astype(np.int16)


def make_sample(cfg: SynthConfig, split: str, row: int) -> tuple[str, dict[str, bytes]]:
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), row])
    symbols = draw_symbols(cfg, rng)
    audio = render_audio(cfg, tone(cfg, symbols), rng)
    key = f"{split}_{row:07d}"
    meta = {"key": key, "row": row, "split": split, "label": symbols.label, "class": class_name(symbols.label),
            "frames": cfg.frames, "height": cfg.size, "width": cfg.size, "fps": cfg.fps,
            "audio_samples": len(audio), "sample_rate": cfg.sample_rate,
            "video_symbol": symbols.video, "audio_symbol": symbols.audio, "paired": symbols.group == "paired",
            "group": symbols.group, "bits": symbols.bits}
    members = {"mp4": encode_h264(render_video(cfg, square_colour(cfg, symbols), rng), cfg.fps, cfg.gop),
               "flac": encode_flac(audio, cfg.sample_rate),
               "json": json.dumps(meta, sort_keys=True).encode()}
    return key, members


def class_name(label: int) -> str:
    return f"class_{label:02d}"


def write_synth(out: str | Path, cfg: SynthConfig, progress: bool = True) -> Path:
    """Write the three splits as shards plus manifest.json into `out`; returns the manifest path."""
    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = {}
    total = cfg.train + cfg.val + cfg.test
    with tqdm(total=total, desc="synth", unit="clip", disable=not progress) as bar:
        for split in SPLITS:
            count, shards = getattr(cfg, split), []
            for first in range(0, count, cfg.shard_size):
                writer = ShardWriter(out / f"{split}-{len(shards):06d}.tar")
                for row in range(first, min(first + cfg.shard_size, count)):
                    writer.write(*make_sample(cfg, split, row))
                    bar.update()
                shards.append(writer.close())
            splits[split] = {"num_samples": count, "shards": with_offsets(shards),
                             "video_hours": round(count * cfg.frames / cfg.fps / 3600, 4)}
    manifest = {
        "format": FORMAT,
        "classes": [class_name(k) for k in range(cfg.classes)],
        "modalities": {"video": {"codec": "h264", "fps": cfg.fps, "gop": cfg.gop},
                       "audio": {"codec": "flac", "sample_rate": cfg.sample_rate}},
        "splits": splits,
        "source": {"generator": "umt-data synth", "config": asdict(cfg)},
        "flags": {},
        "rejected": [],
    }
    return write_manifest(out, manifest)
