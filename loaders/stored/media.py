"""Encode and decode the two stored media formats (H.264 video, FLAC audio) in memory with PyAV.

PyAV bundles its own FFmpeg, so this works on any machine without system libraries. Encoders use
bit-exact flags and one thread so that the same frames always give the same bytes.
"""
from __future__ import annotations

import io
from fractions import Fraction
from typing import Iterator, Sequence

import av
import numpy as np

from ..errors import UserError

BITEXACT = {"fflags": "+bitexact"}
FULL_SCALE = 32768.0  # 16-bit samples / FULL_SCALE: float32 audio in [-1, 1)


class MediaError(UserError):
    """A stored clip could not be decoded."""


def encode_h264(frames: np.ndarray, fps: int, gop: int, crf: int = 18) -> bytes:
    """Encode uint8 RGB frames [T, H, W, 3] (H, W even) as an H.264 mp4 with a fixed GOP."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4", options=BITEXACT) as container:
        mux_rgb(container, add_h264(container, fps, frames.shape[1:3], crf, gop), frames, fps)
    return buf.getvalue()


def add_h264(container: av.container.OutputContainer, fps: int, size: tuple[int, int], crf: int,
             gop: int | None = None) -> av.video.stream.VideoStream:
    """A new H.264 stream of `container` for frames of `size` (H, W) whose bitstream is reproducible: one thread,
    and no lookahead-driven rate control (mbtree, weightp), which gave run-to-run differences on the same frames
    when other codecs ran in the process. `gop`: a fixed GOP (no scene-cut keyframes); None: x264's own."""
    stream = container.add_stream("libx264", rate=fps)
    stream.height, stream.width = size
    stream.pix_fmt = "yuv420p"
    stream.codec_context.thread_count = 1
    fixed = {"g": str(gop), "keyint_min": str(gop)} if gop else {}
    stream.options = {"crf": str(crf), **fixed, "bf": "0", "threads": "1", "preset": "veryfast",
                      **({"sc_threshold": "0"} if gop else {}),
                      "x264-params": "threads=1:lookahead-threads=1:sliced-threads=0:weightp=0:mbtree=0:rc-lookahead=0"}
    return stream


def mux_rgb(container: av.container.OutputContainer, stream: av.video.stream.VideoStream, frames: np.ndarray,
            fps: int) -> None:
    """Encode uint8 RGB frames [T, H, W, 3] into `stream`, frame i at time i / fps, and flush it."""
    for index, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = index
        frame.time_base = Fraction(1, fps)
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def h264_frames(data: bytes, start: int, stop: int, threads: bool = False) -> Iterator[av.VideoFrame]:
    """FFmpeg's frames [start, stop) of a constant-frame-rate mp4, unconverted, from the keyframe at or before
    `start` (so a clip costs at most GOP - 1 extra frames wherever it sits); `threads`: FFmpeg's frame threading
    (small frames: one thread decodes faster)."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "AUTO" if threads else "NONE"
        if not threads:
            stream.codec_context.thread_count = 1
        rate = stream.average_rate or stream.guessed_rate
        if start > 0:
            container.seek(int(start / rate / stream.time_base), stream=stream, backward=True)
        num, den = (stream.time_base * rate).as_integer_ratio()  # pts → frame index in ints (Fractions: 0.4 ms a clip)
        found = 0
        for frame in container.decode(stream):
            index = round(frame.pts * num / den) if frame.pts is not None else start + found
            if index < start:
                continue
            yield frame
            found += 1
            if found == stop - start:
                return


Planes = tuple[np.ndarray, np.ndarray, np.ndarray]


def h264_stream(data: bytes, indices: Sequence[int],
                size: tuple[int, int] | None = None) -> Iterator[tuple[int, Planes]]:
    """Frames `indices` of a constant-frame-rate mp4, in order as they decode, each as (index, (Y, U, V)): yuv420p
    arrays [H, W], [H/2, W/2] (x2) over FFmpeg's own frame memory, valid until the next frame is asked for unless
    kept (each array keeps its frame alive). Frames between the wanted ones are dropped as they decode. A frame
    used and let go returns its buffer to FFmpeg's pool: at 256 x 456, holding a clip's 16 frames instead (fresh
    buffers, page faults) cost 1.8 ms a clip against 10 ms for the decode. `size` (height, width): what the
    clip's metadata says; frames of another size are an error."""
    start, stop, wanted, found = min(indices), max(indices) + 1, set(indices), 0
    try:
        for index, frame in enumerate(h264_frames(data, start, stop), start):
            if index not in wanted:
                continue
            if size is not None and (frame.height, frame.width) != size:
                raise MediaError(f"decodes to {frame.width}x{frame.height} frames, the json says {size[1]}x{size[0]}")
            if frame.format.name != "yuv420p":
                frame = frame.reformat(format="yuv420p")
            found += 1
            yield index, tuple(np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, :p.width]
                               for p in frame.planes)
    except (av.FFmpegError, IndexError, ZeroDivisionError) as err:
        raise MediaError(f"undecodable video: {err}") from err
    if found < len(wanted):
        raise MediaError(f"video ended after {start + found} frames, the view needs frames {start}-{stop - 1}")


def h264_planes(data: bytes, indices: Sequence[int], size: tuple[int, int] | None = None) -> dict[int, Planes]:
    """Frames `indices` as h264_stream gives them, all kept: index → (Y, U, V) over FFmpeg's frame memory (nothing is
    copied; the view kernel reads only the pixels it crops)."""
    return dict(h264_stream(data, indices, size))


def decode_h264(data: bytes, start: int, stop: int) -> np.ndarray:
    """Frames [start, stop) as yuv420p planes [n, 3H/2, W], packed as FFmpeg's `to_ndarray` packs them (whole-clip
    checks and tests; the loader reads `h264_planes` in place)."""
    frames = h264_planes(data, range(start, stop))
    return np.stack([np.concatenate([plane.ravel() for plane in frames[i]]).reshape(-1, frames[i][0].shape[1])
                     for i in range(start, stop)])


def encode_flac(samples: np.ndarray, sample_rate: int) -> bytes:
    """Encode mono int16 samples as FLAC."""
    if samples.ndim != 1 or samples.dtype != np.int16:
        raise ValueError(f"expected mono int16 samples, got {samples.dtype} {samples.shape}")
    buf = io.BytesIO()
    with av.open(buf, "w", format="flac", options=BITEXACT) as container:
        stream = container.add_stream("flac", rate=sample_rate, layout="mono")
        stream.format = "s16"
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate = sample_rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buf.getvalue()


def decode_flac(data: bytes) -> np.ndarray:
    """Decode a mono 16-bit FLAC into float32 samples in [-1, 1)."""
    try:
        with av.open(io.BytesIO(data)) as container:
            chunks = [frame.to_ndarray() for frame in container.decode(audio=0)]
    except (av.FFmpegError, IndexError) as err:
        raise MediaError(f"undecodable audio: {err}") from err
    if not chunks:
        raise MediaError("audio stream holds no samples")
    return np.concatenate(chunks, axis=1)[0].astype(np.float32) / FULL_SCALE


def decode_flac_span(data: bytes, start: int, stop: int) -> tuple[np.ndarray, int | None]:
    """Samples [start, stop) of a mono 16-bit FLAC as stored (int16: `/ FULL_SCALE` gives decode_flac's floats),
    and the track's length from its header (None when the header does not say).

    Seeks to the FLAC frame holding `start` and decodes only up to `stop`: a training view's second of a
    ten-second track costs a tenth of the whole decode, and FLAC is lossless, so the samples equal the
    same slice of `decode_flac`.
    """
    chunks, end = [], start
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.audio[0]
            total = stream.duration or None  # STREAMINFO's sample count (time base 1 / sample rate)
            if start > 0:
                container.seek(start, stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.format.name != "s16" or len(frame.layout.channels) != 1:
                    raise MediaError(f"audio is {frame.format.name} {frame.layout.name}, umt-data pack writes "
                                     "16-bit mono")
                samples = np.frombuffer(frame.planes[0], np.int16)[:frame.samples]  # to_ndarray: 0.3 ms more a clip
                first = frame.pts if frame.pts is not None else end
                if first + len(samples) <= start:
                    continue
                chunks.append(samples[max(start - first, 0):stop - first])
                end = first + len(samples)
                if end >= stop:
                    break
    except (av.FFmpegError, IndexError) as err:
        raise MediaError(f"undecodable audio: {err}") from err
    wave = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    if len(wave) < stop - start:
        raise MediaError(f"audio ended after {start + len(wave)} samples, the view needs samples {start}-{stop - 1}")
    return wave, total
