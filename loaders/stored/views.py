"""Views: which part of a clip a model sees.

A view is fully determined by (seed, sample row, view index) and the clip's geometry
(DESIGN.md §3). The cache builder and the trainer both call `make_view`, so a student trains on
exactly the view whose teacher feature was cached. View index -1 is the deterministic centre
view used for evaluation. The draws are counter-based hashes (`draw`), computed for many rows at once.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numba
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


# ------------------------------------------------------------------ counter-based view draws
# A view's numbers are splitmix64 hashes of (seed, row, view, field): uint64 arithmetic that wraps,
# written once and run both by numpy (arrays of rows) and by numba (`view_params_jit`, inside ffcv's
# compiled pipeline), so no hot path builds a random generator per row.

_GAMMA, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_T0, _Y0, _X0, _AUDIO, _FLIP, _INDEX = (np.uint64(k) for k in range(1, 7))  # one stream per drawn number


def _view_maths(compile):
    """The hash and the view draw, built twice from this one text: plain (numpy on arrays of rows)
    and under numba.njit (called from compiled loaders). Inputs are arrays, so uint64 products wrap
    silently in both."""

    @compile
    def mix(x):
        """splitmix64's finaliser: a bijection of uint64 that scatters every input bit."""
        x = (x ^ (x >> _S30)) * _M1
        x = (x ^ (x >> _S27)) * _M2
        return x ^ (x >> _S31)

    @compile
    def draw(seed, a, b, field):
        """A uniform uint64 per element for (seed, a, b, field): uint64 arrays of one shape."""
        return mix(mix(mix(seed * _GAMMA + field) ^ a) + b * _GAMMA)

    @compile
    def view_params(seed, rows, views, t_slack, y_slack, x_slack, a_slack, flip):
        """int64 [n, 5] View.as_tuple() of each (row, view): offsets uniform within each slack, a coin
        for the flip (if `flip`), the centre without flip for view CENTRE. rows, views: int64 [n]."""
        zero = np.zeros(len(rows), np.uint64)
        s, r, v = zero + np.uint64(seed), rows.astype(np.uint64), np.maximum(views, 0).astype(np.uint64)
        c = (views == CENTRE).astype(np.int64)
        out = np.empty((len(rows), 5), np.int64)
        out[:, 0] = (draw(s, r, v, zero + _T0) % np.uint64(t_slack + 1)).astype(np.int64) * (1 - c) + t_slack // 2 * c
        out[:, 1] = (draw(s, r, v, zero + _Y0) % np.uint64(y_slack + 1)).astype(np.int64) * (1 - c) + y_slack // 2 * c
        out[:, 2] = (draw(s, r, v, zero + _X0) % np.uint64(x_slack + 1)).astype(np.int64) * (1 - c) + x_slack // 2 * c
        out[:, 4] = (draw(s, r, v, zero + _AUDIO) % np.uint64(a_slack + 1)).astype(np.int64) * (1 - c) + a_slack // 2 * c
        out[:, 3] = (draw(s, r, v, zero + _FLIP) & np.uint64(1)).astype(np.int64) * (1 - c) * (1 if flip else 0)
        return out

    @compile
    def view_indices(seed, epoch, rows, num_views):
        """int64 [n]: a training view of each row for the epoch, one of num_views (0: the epoch itself)."""
        if num_views == 0:
            return np.zeros(len(rows), np.int64) + epoch
        zero = np.zeros(len(rows), np.uint64)
        return (draw(zero + np.uint64(seed), rows.astype(np.uint64), zero + np.uint64(epoch), zero + _INDEX)
                % np.uint64(num_views)).astype(np.int64)

    return draw, view_params, view_indices


draw, view_params, _view_indices = _view_maths(lambda f: f)
_, view_params_jit, view_indices_jit = _view_maths(numba.njit(nogil=True))


def train_view_indices(seed: int, epoch: int, rows: np.ndarray, num_views: int | None) -> np.ndarray:
    """Which view each row is trained on in an epoch: a fresh one each epoch (num_views None), or one
    of the cache's V, drawn per (row, epoch) so that its teacher feature exists."""
    return _view_indices(seed, epoch, np.asarray(rows, np.int64), num_views or 0)


def make_views(seed: int, rows: np.ndarray, views: np.ndarray, spec: ViewSpec, geom: Geometry) -> np.ndarray:
    """int64 [n, 5] view parameters of rows sharing one geometry (an image set, a single clip)."""
    if np.any(views < CENTRE):
        raise ValueError(f"view index must be >= 0 or {CENTRE}, got {int(views.min())}")
    return view_params(seed, np.asarray(rows, np.int64), np.asarray(views, np.int64), *_slack(spec, geom), spec.flip)


def make_view(seed: int, row: int, view: int, spec: ViewSpec, geom: Geometry) -> View:
    """The view parameters of (seed, row, view): a pure function, identical in every process."""
    t0, y0, x0, flip, audio_offset = make_views(seed, np.array([row]), np.array([view]), spec, geom)[0].tolist()
    return View(t0, y0, x0, bool(flip), audio_offset)


@dataclass(frozen=True)
class ViewPolicy:
    """How each sample's view index is chosen: the centre (evaluation), per epoch (training), or one
    fixed view for every row (`view`: the cache builder's pass over view `view`)."""

    seed: int
    epoch: int = 0
    train: bool = False
    num_views: int | None = None
    view: int | None = None

    def indices(self, rows: np.ndarray) -> np.ndarray:
        """int64 view index of each row."""
        rows = np.asarray(rows, np.int64)
        if self.view is not None or not self.train:
            return np.full(len(rows), CENTRE if self.view is None else self.view, np.int64)
        return train_view_indices(self.seed, self.epoch, rows, self.num_views)

    def index(self, row: int) -> int:
        return int(self.indices(np.array([row]))[0])
