"""One source video file → umt's stored form: H.264 at a fixed frame rate and short side, mono FLAC.

Real-world files are messy. Whatever PyAV (FFmpeg) can demux is accepted; corrupt or truncated
packets are skipped and the clip keeps what decoded, flagged `truncated`; a missing audio stream
becomes silence flagged `audio_missing`; an all-but-silent track is flagged `audio_silent`. Only a
file with no decodable video at all is rejected, with the reason.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import av
import numpy as np

from ..stored.media import encode_flac, encode_h264


@dataclass(frozen=True)
class PackOptions:
    short_side: int = 256
    fps: int = 16
    gop: int = 8             # short GOP: a random clip decodes at most gop - 1 frames it does not need
    crf: int = 23
    sample_rate: int = 16000
    max_seconds: float | None = None
    silence_peak: float = 1e-3  # peak amplitude (full scale 1) below which a track counts as silent
    flow: bool = False       # each clip has an optical-flow video to pack as the `flow` modality

    def to_dict(self) -> dict:
        return asdict(self)


class Rejected(Exception):
    """The file yields no usable clip; the message is the reason recorded in the manifest."""


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Scale down so the short side is at most `short_side` (never up); both sides even (H.264 4:2:0)."""
    scale = min(1.0, short_side / min(width, height))
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def transcode(path: str | None, opts: PackOptions, flow_path: str | None = None) -> tuple[dict[str, bytes], dict, list[str]]:
    """(tar members without json, metadata, flags); raises Rejected."""
    if path is None:
        raise Rejected("file not found")
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise Rejected("empty file" if os.path.isfile(path) else "file not found")
    flags: set[str] = set()
    try:
        container = av.open(path)
    except (av.FFmpegError, UnicodeDecodeError) as err:
        raise Rejected(f"unreadable: {err}") from None
    with container:
        if not container.streams.video:
            raise Rejected("no video stream")
        video = container.streams.video[0]
        video.thread_type = "AUTO"
        audio = container.streams.audio[0] if container.streams.audio else None
        declared = container.duration / av.time_base if container.duration else None
        frames = _FrameRateConverter(opts)
        samples: list[np.ndarray] = []
        resampler = av.AudioResampler(format="s16", layout="mono", rate=opts.sample_rate) if audio else None
        try:
            for packet in container.demux([s for s in (video, audio) if s is not None]):
                try:
                    decoded = packet.decode()
                except (av.FFmpegError, ValueError):
                    flags.add("truncated")
                    continue
                for frame in decoded:
                    if packet.stream.type == "video":
                        frames.push(frame)
                    else:
                        samples += [f.to_ndarray()[0] for f in resampler.resample(frame)]
        except (av.FFmpegError, ValueError):
            flags.add("truncated")
        if resampler is not None:
            samples += [f.to_ndarray()[0] for f in resampler.resample(None)]
    rgb = frames.finish()
    if rgb is None:
        raise Rejected("no decodable video frames")
    duration = len(rgb) / opts.fps
    if declared and duration < 0.9 * min(declared, opts.max_seconds or declared):
        flags.add("truncated")  # the file ends before the duration its header declares
    wave = _fit_audio(samples, int(round(duration * opts.sample_rate)), audio is None, flags, opts)
    meta = {"frames": len(rgb), "height": rgb.shape[1], "width": rgb.shape[2], "fps": opts.fps,
            "duration": round(duration, 4), "audio_samples": len(wave), "sample_rate": opts.sample_rate}
    members = {"mp4": encode_h264(rgb, opts.fps, opts.gop, opts.crf), "flac": encode_flac(wave, opts.sample_rate)}
    if opts.flow:
        members["flow.mp4"] = encode_h264(_flow_frames(flow_path, opts, rgb.shape, flags), opts.fps, opts.gop, opts.crf)
    return members, meta, sorted(flags)


def _flow_frames(path: str | None, opts: PackOptions, shape: tuple[int, ...], flags: set[str]) -> np.ndarray:
    """The clip's optical-flow video at its frame rate, size and frame count.

    Flow is stored as given (commonly x-flow in red, y-flow in green, 128 = no motion). A flow
    video has one frame fewer than its clip; a shorter one is padded with its last frame and
    flagged `flow_short`.
    """
    if path is None or not os.path.isfile(path):
        raise Rejected("flow file not found")
    frames = _FrameRateConverter(opts, size=(shape[2], shape[1]))
    try:
        with av.open(path) as container:
            for frame in container.decode(video=0):
                frames.push(frame)
    except (av.FFmpegError, ValueError, IndexError, UnicodeDecodeError) as err:
        if frames.prev is None:
            raise Rejected(f"unreadable flow: {err}") from None
        flags.add("truncated")
    flow = frames.finish()
    if flow is None:
        raise Rejected("no decodable flow frames")
    if len(flow) < shape[0] - 1:
        flags.add("flow_short")
    return np.concatenate([flow, np.repeat(flow[-1:], max(0, shape[0] - len(flow)), axis=0)])[:shape[0]]


def _fit_audio(samples: list[np.ndarray], length: int, missing: bool, flags: set[str], opts: PackOptions) -> np.ndarray:
    """The audio track cut or zero-padded to the video's duration, with its flags."""
    if missing:
        flags.add("audio_missing")
        return np.zeros(length, np.int16)
    wave = np.concatenate(samples).astype(np.int16) if samples else np.zeros(0, np.int16)
    if len(wave) < length:
        if len(wave) < 0.9 * length:
            flags.add("audio_short")
        wave = np.pad(wave, (0, length - len(wave)))
    wave = wave[:length]
    if np.abs(wave.astype(np.int32)).max(initial=0) < opts.silence_peak * 32768:
        flags.add("audio_silent")
    return wave


class _FrameRateConverter:
    """Resamples decoded frames to a fixed rate: output frame k shows the latest frame at or before k/fps."""

    def __init__(self, opts: PackOptions, size: tuple[int, int] | None = None):
        self.opts, self.size = opts, size  # size (width, height): fixed output size instead of short side
        self.out: list[np.ndarray] = []
        self.prev = None          # (time, frame)
        self.prev_rgb = None
        self.first_time = None
        self.count = 0

    def _time(self, frame) -> float:
        t = frame.time if frame.time is not None else self.count / float(self.opts.fps)
        if self.first_time is None:
            self.first_time = t
        return t - self.first_time

    def _rgb(self, frame) -> np.ndarray:
        if self.prev_rgb is None:
            w, h = self.size or output_size(frame.width, frame.height, self.opts.short_side)
            self.prev_rgb = frame.reformat(width=w, height=h, format="rgb24").to_ndarray()
        return self.prev_rgb

    def _emit_until(self, t: float) -> None:
        limit = self.opts.max_seconds
        while len(self.out) / self.opts.fps < t - 1e-6 and (limit is None or len(self.out) < limit * self.opts.fps):
            self.out.append(self._rgb(self.prev[1]))

    def push(self, frame) -> None:
        t = self._time(frame)
        self.count += 1
        if self.prev is not None:
            self._emit_until(t)
        if self.prev is None or t > self.prev[0]:
            self.prev, self.prev_rgb = (t, frame), None

    def finish(self) -> np.ndarray | None:
        if self.prev is None:
            return None
        step = 1.0 / self.opts.fps
        self._emit_until(self.prev[0] + max(step, 1e-6))  # the last frame lasts one output period
        return np.stack(self.out) if self.out else None


def sample_json(meta: dict, **fields) -> bytes:
    return json.dumps({**meta, **fields}, sort_keys=True, ensure_ascii=False).encode()
