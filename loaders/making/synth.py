"""`umt-data synth`: a procedural audio-visual dataset that models the paper's assumptions.

Every clip carries two symbols in [0, K): a video symbol (the hue of a small moving square in a
noisy frame) and an audio symbol (the pitch of a tone in noise). On a share `paired` of samples the
label is (video symbol + audio symbol) mod K with both symbols uniform, so neither modality alone
says anything about the label there: that is the paired cue, readable only from both together. On
the other samples each symbol equals the label with probability `video_cue` / `audio_cue` and is
uniform otherwise: the uni-modal cues, of strengths the user sets.
The same config and seed give byte-identical shards.
"""
from __future__ import annotations

import colorsys
import json
from dataclasses import asdict, dataclass
from pathlib import Path

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
    video_noise: float = 0.15
    audio_noise: float = 1.0
    shard_size: int = 250
    seed: int = 0

    def validate(self) -> None:
        for name in ("video_cue", "audio_cue", "paired"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"--{name.replace('_', '-')} must lie in [0, 1]")
        if self.classes < 2 or self.size % 2 or self.size < 8 or self.frames < 1:
            raise UserError("need >= 2 classes, an even frame size >= 8 and >= 1 frame")
        if min(self.train, self.val, self.test, self.shard_size) < 1:
            raise UserError("every split and the shard size need at least one sample")


def draw_symbols(cfg: SynthConfig, rng: np.random.Generator) -> tuple[int, int, int, bool]:
    """(label, video symbol, audio symbol, paired) of one sample."""
    k = cfg.classes
    label = int(rng.integers(k))
    if rng.random() < cfg.paired:
        video = int(rng.integers(k))
        return label, video, (label - video) % k, True
    video = label if rng.random() < cfg.video_cue else int(rng.integers(k))
    audio = label if rng.random() < cfg.audio_cue else int(rng.integers(k))
    return label, video, audio, False


def render_video(cfg: SynthConfig, symbol: int, rng: np.random.Generator) -> np.ndarray:
    """A square of the symbol's hue moving and bouncing over a noisy grey background."""
    size, side = cfg.size, max(2, cfg.size // 5)
    rgb = np.array(colorsys.hsv_to_rgb(symbol / cfg.classes, 0.85, 0.9)) * 255.0
    frames = np.full((cfg.frames, size, size, 3), rng.uniform(60, 140), dtype=np.float32)
    pos = rng.uniform(0, size - side, 2)
    vel = rng.uniform(-2.0, 2.0, 2)
    for t in range(cfg.frames):
        y, x = pos.astype(int)
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


def render_audio(cfg: SynthConfig, symbol: int, rng: np.random.Generator) -> np.ndarray:
    """A tone of the symbol's pitch in white noise, mono int16."""
    n = int(round(cfg.audio_seconds * cfg.sample_rate))
    t = np.arange(n) / cfg.sample_rate
    tone = np.sin(2 * np.pi * tone_frequency(cfg, symbol) * t + rng.uniform(0, 2 * np.pi))
    wave = 0.2 * tone + 0.2 * cfg.audio_noise * rng.standard_normal(n)
    return np.clip(wave * 32767, -32768, 32767).astype(np.int16)


def make_sample(cfg: SynthConfig, split: str, row: int) -> tuple[str, dict[str, bytes]]:
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), row])
    label, video_symbol, audio_symbol, paired = draw_symbols(cfg, rng)
    audio = render_audio(cfg, audio_symbol, rng)
    key = f"{split}_{row:07d}"
    meta = {"key": key, "row": row, "split": split, "label": label, "class": class_name(label),
            "frames": cfg.frames, "height": cfg.size, "width": cfg.size, "fps": cfg.fps,
            "audio_samples": len(audio), "sample_rate": cfg.sample_rate,
            "video_symbol": video_symbol, "audio_symbol": audio_symbol, "paired": paired}
    members = {"mp4": encode_h264(render_video(cfg, video_symbol, rng), cfg.fps, cfg.gop),
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
