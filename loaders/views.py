"""Views: which part of a clip a model sees.

A view is fully determined by (seed, sample row, view index) and the clip's geometry
(DESIGN.md §3). The cache builder and the trainer both call `make_view`, so a student trains on
exactly the view whose teacher feature was cached. View index -1 is the deterministic centre
view used for evaluation.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

CENTRE = -1
VIEW_FIELDS = ("t0", "y0", "x0", "flip", "audio_offset")


@dataclass(frozen=True)
class ViewSpec:
    """What a model's input is cut to: T frames at a stride, a square crop, an audio window."""

    frames: int = 8
    stride: int = 1
    crop: int = 32
    audio_seconds: float = 1.0
    mel_bins: int = 40
    flip: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Geometry:
    """A stored clip's size, read from its JSON metadata."""

    frames: int
    height: int
    width: int
    audio_samples: int
    sample_rate: int

    @classmethod
    def of(cls, meta: dict) -> "Geometry":
        return cls(meta["frames"], meta["height"], meta["width"], meta["audio_samples"],
                   meta["sample_rate"])


@dataclass(frozen=True)
class View:
    t0: int
    y0: int
    x0: int
    flip: bool
    audio_offset: int

    def as_tuple(self) -> tuple[int, ...]:
        return (self.t0, self.y0, self.x0, int(self.flip), self.audio_offset)


def _slack(spec: ViewSpec, geom: Geometry) -> tuple[int, int, int, int]:
    """How far each view parameter can move; a clip too small for the spec is an error."""
    span = (spec.frames - 1) * spec.stride + 1
    window = audio_window(spec, geom.sample_rate)
    slack = (geom.frames - span, geom.height - spec.crop, geom.width - spec.crop,
             geom.audio_samples - window)
    if min(slack) < 0:
        raise ValueError(f"clip {geom} is smaller than the view {spec}")
    return slack


def audio_window(spec: ViewSpec, sample_rate: int) -> int:
    return int(round(spec.audio_seconds * sample_rate))


def make_view(seed: int, row: int, view: int, spec: ViewSpec, geom: Geometry) -> View:
    """The view parameters of (seed, row, view): a pure function, identical in every process."""
    t_slack, y_slack, x_slack, a_slack = _slack(spec, geom)
    if view == CENTRE:
        return View(t_slack // 2, y_slack // 2, x_slack // 2, False, a_slack // 2)
    if view < 0:
        raise ValueError(f"view index must be >= 0 or {CENTRE}, got {view}")
    rng = np.random.default_rng([seed, row, view])
    t0, y0, x0, audio_offset = (int(rng.integers(0, s + 1)) for s in (t_slack, y_slack, x_slack, a_slack))
    flip = bool(spec.flip and rng.integers(0, 2))
    return View(t0, y0, x0, flip, audio_offset)


def train_view_index(seed: int, epoch: int, row: int, num_views: int | None) -> int:
    """Which view a sample is trained on in an epoch.

    With a cache of V views the index is drawn from [0, V) so that its teacher feature exists;
    without one every epoch gets a fresh view.
    """
    if num_views is None:
        return epoch
    if num_views == 1:  # vector sets and single-view caches: no draw (the loaders call this per row)
        return 0
    return int(np.random.default_rng([seed, epoch, row, 0x5EED]).integers(0, num_views))
