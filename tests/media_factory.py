"""Real-world-like video files for the packer's tests, written with PyAV: several containers and
codecs, and each broken case the packer must survive."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_video(path: Path, container: str, vcodec: str | None, acodec: str | None, seconds: float = 1.0,
                fps: int = 12, size: tuple[int, int] = (48, 32), silent: bool = False, hue: int = 0) -> Path:
    """A moving gradient (video) and a tone (audio), in the given container and codecs."""
    width, height = size
    with av.open(str(path), "w", format=container) as out:
        vs = out.add_stream(vcodec, rate=fps) if vcodec else None
        if vs is not None:
            vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        rate = 48000 if acodec in ("libopus", "opus") else 22050 if acodec == "libmp3lame" else 44100
        as_ = out.add_stream(acodec, rate=rate) if acodec else None
        n_frames = int(seconds * fps)
        if vs is not None:
            y, x = np.mgrid[0:height, 0:width]
            for t in range(n_frames):
                img = np.stack([(x * 4 + t * 8 + hue) % 256, (y * 6) % 256, np.full_like(x, 128 + hue % 100)], -1)
                frame = av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")
                out.mux(vs.encode(frame))
            out.mux(vs.encode())
        if as_ is not None:  # PyAV resamples these float frames to each encoder's format and frame size
            total = int(seconds * rate)
            tone = np.zeros(total) if silent else 0.3 * np.sin(2 * np.pi * 440 * np.arange(total) / rate)
            for start in range(0, total, 1024):
                piece = np.repeat(tone[None, start:start + 1024], 2, 0).astype(np.float32)
                frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="stereo")
                frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
                out.mux(as_.encode(frame))
            out.mux(as_.encode())
    return path


def real_world_folder(root: Path) -> dict[str, str]:
    """Files of every kind the packer meets; returns file name → what it is."""
    root.mkdir(parents=True, exist_ok=True)
    kinds = {}

    def add(name: str, what: str, *args, **kw) -> None:
        write_video(root / name, *args, **kw)
        kinds[name] = what

    add("h264_aac.mp4", "ok", "mp4", "libx264", "aac", hue=0)
    add("vp9_opus.webm", "ok", "webm", "libvpx-vp9", "libopus", hue=40)
    add("mpeg4_mp3.avi", "ok", "avi", "mpeg4", "libmp3lame", hue=80)
    add("vp8_ac3.mkv", "ok", "matroska", "libvpx", "ac3", hue=120)
    add("odd name ü (1).mp4", "ok", "mp4", "libx264", "aac", hue=160)
    add("no_audio.mp4", "audio_missing", "mp4", "libx264", None)
    add("silent.mp4", "audio_silent", "mp4", "libx264", "aac", silent=True)
    add("audio_only.m4a", "rejected", "mp4", None, "aac")
    # a download cut short: Matroska streams, so the first two thirds still demux and decode
    full = write_video(root / "long.mkv", "matroska", "libx264", "aac", seconds=2.0, hue=200).read_bytes()
    (root / "truncated.mkv").write_bytes(full[: len(full) * 2 // 3])
    kinds["truncated.mkv"] = "truncated"
    (root / "long.mkv").unlink()
    (root / "empty.mp4").write_bytes(b"")
    kinds["empty.mp4"] = "rejected"
    (root / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    kinds["garbage.mp4"] = "rejected"
    return kinds


def write_flow(path: Path, frames: int, fps: int = 12, size: tuple[int, int] = (48, 32),
               x_flow: int = 200, y_flow: int = 100) -> Path:
    """A constant optical-flow video as flow is usually stored: x-flow in red, y-flow in green."""
    width, height = size
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = x_flow, y_flow, 128
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode())
    return path
