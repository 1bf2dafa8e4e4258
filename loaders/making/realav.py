"""`umt-data realav`: a real audio-visual benchmark set from Tux Paint's stamps (Debian tuxpaint-stamps-default).

Three classes of stamps (CLASSES): birds, mammals and man-made objects. A clip's
video is a real photograph of a stamp of its class (cut out by Tux Paint on a transparent background,
here laid on a plain grey card) filmed by a moving camera: a pan and a zoom over FRAMES frames. Its audio
is a real recording of a stamp of its class (the stamp's sound effect: a call, a moo, a kettle on the
boil), at a random offset, in a babble of real human voices (Tux Paint's spoken stamp descriptions, of
stamps outside every class, in a dozen languages) at a random SNR. The photo and the recording are drawn
independently within the class, so both modalities carry the label and neither names the other's source.

Every source (photo, recording, voice) belongs to one split, assigned per class by a seeded permutation,
so no test clip shows a photo or plays a recording that any training clip used. The generator writes
ordinary files, as a user's videos: `clips/<split>/<name>.mkv` (H.264 + FLAC), `realav.csv`
(`path,label,split`, for `umt-data pack --format generic`), `sources.csv` (every source with its class,
role and split) and `provenance.csv` (each clip's sources and SNR). The same settings give the same bytes.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import UserError
from ..stored.media import BITEXACT, FULL_SCALE, add_h264, mux_rgb
from ..stored.shards import SPLITS

DEBIAN_PACKAGE = "tuxpaint-stamps-default"
STAMPS = "/usr/share/tuxpaint/stamps"

# Stamp paths (relative to the stamps folder, without extension) of each class: a folder, or one stamp.
CLASSES: dict[str, tuple[str, ...]] = {
    "bird": ("animals/birds",),
    "mammal": (*(f"animals/mammals/{n}" for n in (
        "bovines", "equines", "deer", "camel", "pig", "pig_golden", "pig_golden2", "wildboar", "giraffe",
        "hippopotamus", "rhino_black", "apes", "aquatic", "bears", "cats", "dogs", "rodents", "badger", "echidna",
        "elephant", "ferret", "hedgehog", "rabbit_little")), "animals/marsupials"),
    "object": ("household", "hobbies/music", "vehicles"),
}
EXCLUDED_FOLDERS = {"cartoon", "toys"}    # Tux Paint's drawings and toy animals
NOT_NOISE = ("symbols",)                  # letters, digits and money: never in the babble
# Seen in the data: stamps that repeat another's source (a mirrored photo; one recording, or a part of it,
# under another name; the second half of one pair of scissors), dropped so that no source is in two splits.
DUPLICATES = {"household/tools/measuring_tape_mirror.png", "vehicles/construction/dumper_mirror.png",
              "animals/mammals/bovines/mountaingoat.ogg", "animals/mammals/bovines/ram.ogg",   # = goat.ogg
              "animals/mammals/rodents/beaver.ogg",                                            # = badger.ogg
              "animals/mammals/camel/dromedary.ogg",                                           # in camel.ogg
              "household/arttools/scissors_small_closed.ogg"}                # scissors_small_open.ogg's scissors
SILENT_PEAK = 1e-3  # a recording whose peak (full scale 1) stays below this is silent (some stamps ship one)
MIN_COLOURS = 200   # opaque colours (5 bits a channel) below which a PNG stamp is a drawing, not a photo
GREY = 128          # the card the cut-out photo lies on


@dataclass(frozen=True)
class RealAVConfig:
    train: int = 2400
    val: int = 600
    test: int = 600
    size: int = 64            # frame height and width
    frames: int = 8
    fps: int = 4
    sample_rate: int = 16000
    scale_min: float = 0.5    # the photo's long side as a share of the frame side, at the first frame
    scale_max: float = 0.9
    zoom: float = 1.3         # the camera's zoom over the clip: a factor in [1/zoom, zoom]
    pan: float = 0.15         # the photo centre's largest offset from the frame centre, as a share of the side
    snr_min: float = 0.0      # dB, the recording against the babble
    snr_max: float = 10.0
    talkers: int = 3          # voices in the babble
    val_share: float = 0.2    # of each class's sources
    test_share: float = 0.2
    crf: int = 12             # x264 quality of the written clips (umt-data pack re-encodes them)
    seed: int = 0

    @property
    def seconds(self) -> float:
        return self.frames / self.fps

    def validate(self) -> None:
        if self.size % 2 or self.size < 16:
            raise UserError(f"--size must be even and at least 16, got {self.size}")
        if min(self.train, self.val, self.test) < 0 or self.frames < 2 or self.fps < 1 or self.talkers < 1:
            raise UserError("--train/--val/--test must be >= 0, --frames >= 2, --fps >= 1, --talkers >= 1")
        if not 0 < self.scale_min <= self.scale_max or self.zoom < 1 or self.pan < 0 or self.snr_min > self.snr_max:
            raise UserError("need 0 < --scale-min <= --scale-max, --zoom >= 1, --pan >= 0, --snr-min <= --snr-max")
        if not (0 < self.val_share and 0 < self.test_share and self.val_share + self.test_share < 1):
            raise UserError("--val-share and --test-share must be positive and sum to less than 1")


@dataclass(frozen=True)
class Source:
    path: str      # relative to the stamps folder
    label: str     # a class, or "" for a babble voice
    role: str      # photo, recording or voice
    split: str


def _class_of(stem: str) -> str | None:
    for label, prefixes in CLASSES.items():
        if any(stem == p or stem.startswith(p + "/") for p in prefixes):
            return label
    return None


def _is_photo(path: Path) -> bool:
    rgba = np.asarray(Image.open(path).convert("RGBA"))
    opaque = rgba[..., :3][rgba[..., 3] > 128].astype(np.int32) // 8
    return len(np.unique(opaque[:, 0] * 1024 + opaque[:, 1] * 32 + opaque[:, 2])) >= MIN_COLOURS


def _audible(path: Path) -> bool:
    return float(np.max(np.abs(_recording(str(path), 16000)))) >= SILENT_PEAK


def find_sources(stamps: str | Path, cfg: RealAVConfig) -> list[Source]:
    """Every photo, recording and voice the set draws from, each with its split."""
    root = Path(stamps)
    if not root.is_dir():
        raise UserError(f"{root} does not exist: the real audio-visual set is made from Tux Paint's stamps; "
                        f"install them with `apt-get install {DEBIAN_PACKAGE}` (or give --stamps DIR)")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    stamps_ = {f.rsplit(".", 1)[0] for f in files if f.endswith((".png", ".svg"))}
    found: dict[tuple[str, str], list[str]] = {}
    for f in files:
        stem, _, ext = f.rpartition(".")
        label = _class_of(stem)
        if EXCLUDED_FOLDERS & set(stem.split("/")[:-1]) or f in DUPLICATES:
            continue
        if label and ext == "png" and _is_photo(root / f):
            found.setdefault((label, "photo"), []).append(f)
        elif label and ext in ("ogg", "wav") and stem in stamps_ and _audible(root / f):
            found.setdefault((label, "recording"), []).append(f)
        elif label is None and ext == "ogg" and "_desc" in stem.rsplit("/", 1)[-1] and not f.startswith(NOT_NOISE):
            found.setdefault(("", "voice"), []).append(f)
    for label in CLASSES:
        for role in ("photo", "recording"):
            if len(found.get((label, role), [])) < 3:
                raise UserError(f"{root}: class {label} has fewer than 3 {role}s; is {DEBIAN_PACKAGE} complete?")
    if not found.get(("", "voice")):
        raise UserError(f"{root}: no spoken descriptions (*_desc*.ogg) outside the classes for the babble")
    sources = []
    for n, ((label, role), paths) in enumerate(sorted(found.items())):
        order = np.random.default_rng([cfg.seed, n]).permutation(len(paths))
        n_val = max(1, round(cfg.val_share * len(paths)))
        n_test = max(1, round(cfg.test_share * len(paths)))
        for rank, i in enumerate(order):
            split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            sources.append(Source(paths[i], label, role, split))
    return sorted(sources, key=lambda s: (s.role, s.label, s.path))


@lru_cache(maxsize=None)
def _stamp(path: str, size: int) -> np.ndarray:
    """The photo as premultiplied float RGBA, its long side resized (Lanczos) to the frame side."""
    image = Image.open(path).convert("RGBA")
    k = size / max(image.size)
    image = image.resize((max(1, round(image.width * k)), max(1, round(image.height * k))), Image.LANCZOS)
    rgba = np.asarray(image, dtype=np.float32) / 255.0
    rgba[..., :3] *= rgba[..., 3:]
    return rgba


def _sample_bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """img[y, x] by bilinear interpolation, zero outside."""
    h, w = img.shape[:2]
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    out = np.zeros(x.shape + img.shape[2:], np.float32)
    for dy, dx, wgt in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        out += np.where(inside[..., None], img[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)], 0) * wgt
    return out


def render_video(photo: str, cfg: RealAVConfig, rng: np.random.Generator) -> np.ndarray:
    """uint8 [frames, size, size, 3]: a camera panning and zooming over the photo on a grey card."""
    rgba, s = _stamp(photo, cfg.size), cfg.size
    scale0 = rng.uniform(cfg.scale_min, cfg.scale_max)
    scale1 = scale0 * np.exp(rng.uniform(-np.log(cfg.zoom), np.log(cfg.zoom)))
    centre0, centre1 = rng.uniform(-cfg.pan, cfg.pan, 2) * s, rng.uniform(-cfg.pan, cfg.pan, 2) * s
    v, u = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    frames = []
    for t in np.linspace(0.0, 1.0, cfg.frames):
        scale = scale0 * (scale1 / scale0) ** t              # the photo's long side / the frame side
        cx, cy = centre0 + (centre1 - centre0) * t
        k = 1.0 / scale                                      # stamp pixels per frame pixel
        x = (u - s / 2 - cx) * k + rgba.shape[1] / 2 - 0.5
        y = (v - s / 2 - cy) * k + rgba.shape[0] / 2 - 0.5
        seen = _sample_bilinear(rgba, x, y)
        rgb = seen[..., :3] * 255.0 + GREY * (1.0 - seen[..., 3:])
        frames.append(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    return np.stack(frames)


@lru_cache(maxsize=None)
def _recording(path: str, sample_rate: int) -> np.ndarray:
    """A recording as mono float32 at sample_rate."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks = []
    with av.open(path) as container:
        for frame in container.decode(audio=0):
            chunks += [f.to_ndarray()[0] for f in resampler.resample(frame)]
    chunks += [f.to_ndarray()[0] for f in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(1, np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) + 1e-9


def _place(sound: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """The sound in a window of `length` samples: a shorter one at a random offset, a longer one cut at a
    random window among those at least half as loud as its loudest (no silent stretch of a long take)."""
    if len(sound) <= length:
        out = np.zeros(length, np.float32)
        start = rng.integers(0, length - len(sound) + 1)
        out[start:start + len(sound)] = sound
        return out
    hop = max(1, length // 10)
    starts = np.arange(0, len(sound) - length + 1, hop)
    loud = np.array([_rms(sound[a:a + length]) for a in starts])
    start = int(rng.choice(starts[loud >= 0.5 * loud.max()]))
    return sound[start:start + length].copy()


def _voice(paths: list[str], length: int, cfg: RealAVConfig, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """One talker: spoken descriptions one after another, with short pauses, from a random point."""
    used, parts, total = [], [], 0
    while total < 2 * length:
        path = paths[rng.integers(len(paths))]
        speech = _recording(path, cfg.sample_rate)
        if np.max(np.abs(speech)) < SILENT_PEAK:
            continue
        speech = speech / _rms(speech)
        pause = np.zeros(int(rng.uniform(0.05, 0.4) * cfg.sample_rate), np.float32)
        parts += [speech, pause]
        used.append(path)
        total += len(speech) + len(pause)
    stream = np.concatenate(parts)
    start = rng.integers(0, len(stream) - length + 1)
    return stream[start:start + length], used


def render_audio(recording: str, voices: list[str], cfg: RealAVConfig,
                 rng: np.random.Generator) -> tuple[np.ndarray, list[str], float]:
    """int16 mono: the recording in a babble of voices at a random SNR; also the voices used and the SNR."""
    length = int(round(cfg.seconds * cfg.sample_rate))
    signal = _place(_recording(recording, cfg.sample_rate), length, rng)
    babble, used = np.zeros(length, np.float32), []
    for _ in range(cfg.talkers):
        talker, paths = _voice(voices, length, cfg, rng)
        babble += talker
        used += paths
    snr = float(rng.uniform(cfg.snr_min, cfg.snr_max))
    active = signal[np.abs(signal) > 1e-4]
    level = _rms(active) if len(active) else _rms(signal)
    mix = signal + babble * (level / _rms(babble) / 10 ** (snr / 20))
    mix *= 0.1 * 10 ** (rng.uniform(-6, 6) / 20) / _rms(mix)   # a recording level that says nothing
    return np.clip(np.rint(mix * FULL_SCALE), -32768, 32767).astype(np.int16), used, snr


def write_clip(path: Path, frames: np.ndarray, audio: np.ndarray, cfg: RealAVConfig) -> None:
    """An ordinary Matroska file (H.264 video, FLAC audio), written whole or not at all."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska", options=BITEXACT) as container:
        video = add_h264(container, cfg.fps, frames.shape[1:3], cfg.crf)
        sound = container.add_stream("flac", rate=cfg.sample_rate, layout="mono")
        sound.format = "s16"
        mux_rgb(container, video, frames, cfg.fps)
        chunk = av.AudioFrame.from_ndarray(audio[None, :], format="s16", layout="mono")
        chunk.sample_rate, chunk.pts = cfg.sample_rate, 0
        container.mux(sound.encode(chunk))
        container.mux(sound.encode())
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def write_realav(out: str | Path, cfg: RealAVConfig, stamps: str | Path = STAMPS, progress: bool = True) -> Path:
    """Write the clips and their CSVs under `out`; clips already written are kept (an interrupted run resumes)."""
    cfg.validate()
    out, stamps = Path(out), Path(stamps)
    sources = find_sources(stamps, cfg)
    pool: dict[tuple[str, str, str], list[str]] = {}
    for s in sources:
        pool.setdefault((s.role, s.label, s.split), []).append(str(stamps / s.path))
    labels = list(CLASSES)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sources.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "role", "split", "package", "licence"])
        writer.writerows([s.path, s.label, s.role, s.split, DEBIAN_PACKAGE, "GPL-2+"] for s in sources)
    rows, provenance = [], []
    total = cfg.train + cfg.val + cfg.test
    with tqdm(total=total, desc="realav", unit="clip", disable=not progress) as bar:
        for split_index, (split, count) in enumerate(zip(SPLITS, (cfg.train, cfg.val, cfg.test))):
            (out / "clips" / split).mkdir(parents=True, exist_ok=True)
            for row in range(count):
                rng = np.random.default_rng([cfg.seed, split_index, row])
                label = labels[row % len(labels)]
                photos, recordings = pool[("photo", label, split)], pool[("recording", label, split)]
                photo = photos[rng.integers(len(photos))]
                recording = recordings[rng.integers(len(recordings))]
                frames = render_video(photo, cfg, rng)
                audio, voices, snr = render_audio(recording, pool[("voice", "", split)], cfg, rng)
                name = f"clips/{split}/{split}_{row:05d}.mkv"
                if not (out / name).is_file():
                    write_clip(out / name, frames, audio, cfg)
                rows.append([name, label, split])
                provenance.append([name, label, split, Path(photo).relative_to(stamps).as_posix(),
                                   Path(recording).relative_to(stamps).as_posix(),
                                   " ".join(Path(v).relative_to(stamps).as_posix() for v in voices), f"{snr:.2f}"])
                bar.update()
    with open(out / "provenance.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split", "photo", "recording", "voices", "snr_db"])
        writer.writerows(provenance)
    with open(out / "settings.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([[k, v] for k, v in asdict(cfg).items()])
    table = out / "realav.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    return table
