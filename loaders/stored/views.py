"""Views: which part of a clip a model sees.

A view is fully determined by (seed, sample row, view index) and the clip's geometry
(docs/design.md, Invariants). The cache builder and the trainer both call `make_view`, so a student trains on
exactly the view whose teacher feature was cached. The draws are counter-based hashes (`draw`),
computed for many rows at once.

A view record is (t0, y0, x0, h, w, flip, audio_offset): the first frame, a box in stored-frame
pixels that the loaders resize to crop x crop (bilinear, area-aware when shrinking), the
horizontal flip and the first audio sample. The box comes from the spec's `crop_mode`:

- `resized` (default): a training view is a random-resized crop, as torchvision / MMAction2
  `RandomResizedCrop` (area share in [min_area, max_area] of the frame, aspect ratio log-uniform in
  [min_aspect, max_aspect], 10 tries, else the centred square of the short side); an evaluation
  view is a square of the short side (the short side scaled to the crop, as PySlowFast tests).
- `jitter`: a training view is PySlowFast's short-side scale jitter then a random crop: the short
  side scaled to a uniform size in [min_short, max_short] x crop (default 8/7-10/7: 256-320 for a
  224 crop), then a crop x crop crop, i.e. a square box of short side / that factor; evaluation
  views as `resized`.
- `cut`: the box is crop x crop (no resizing): the crop is cut from the stored frame.

View indices >= 0 are training views. Negative indices are deterministic evaluation views
(`eval_view`): clip i of T uniformly spaced temporal windows (audio windows aligned with them) and
spatial crop j of C spaced along the frame's long side. `CENTRE` (-1) is the one-view protocol:
the middle window and the centred box.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numba
import numpy as np

from ..errors import UserError

CENTRE = -1
VIEW_FIELDS = ("t0", "y0", "x0", "h", "w", "flip", "audio_offset")
CROP_MODES = ("resized", "cut", "jitter")
MAX_TEST_CLIPS, MAX_TEST_CROPS = 64, 8   # what an evaluation view index can encode
_CROP_CODES = MAX_TEST_CROPS ** 2
ATTEMPTS = 10                            # random-resized crop tries before its fallback (torchvision's)


@dataclass(frozen=True)
class ViewSpec:
    """What a model's input is cut to: T frames at a stride, a crop x crop box, an audio window."""

    frames: int = 8
    stride: int = 1
    crop: int = 32
    audio_seconds: float = 1.0
    mel_bins: int = 40
    flip: bool = True
    crop_mode: str = "resized"
    min_area: float = 0.08            # random-resized crop: share of the frame's area (MMAction2, torchvision)
    max_area: float = 1.0
    min_aspect: float = 3 / 4         # and its width / height range
    max_aspect: float = 4 / 3
    min_short: float = 8 / 7          # jitter: the short side scaled to this x crop ... (PySlowFast: 256 / 224)
    max_short: float = 10 / 7         # ... up to this x crop (320 / 224)

    def __post_init__(self) -> None:
        if self.crop_mode not in CROP_MODES:
            raise UserError(f"view crop mode must be one of {', '.join(CROP_MODES)}, got {self.crop_mode!r}")
        if not (0 < self.min_area <= self.max_area <= 1 and 0 < self.min_aspect <= self.max_aspect
                and 0 < self.min_short <= self.max_short):
            raise UserError(f"view: need 0 < min_area <= max_area <= 1, 0 < min_aspect <= max_aspect and 0 < "
                            f"min_short <= max_short, got area [{self.min_area}, {self.max_area}], aspect "
                            f"[{self.min_aspect}, {self.max_aspect}], short [{self.min_short}, {self.max_short}]")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def of(cls, saved: dict) -> "ViewSpec":
        """A spec saved in a checkpoint or cache; one saved before crop modes existed was a cut crop."""
        return cls(**{"crop_mode": "cut", **saved})


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
    h: int
    w: int
    flip: bool
    audio_offset: int

    def as_tuple(self) -> tuple[int, ...]:
        return (self.t0, self.y0, self.x0, self.h, self.w, int(self.flip), self.audio_offset)

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(y0, x0, h, w) in stored-frame pixels."""
        return (self.y0, self.x0, self.h, self.w)


def eval_view(clip: int, clips: int, crop: int, crops: int) -> int:
    """The evaluation view index of temporal clip `clip` of `clips` and spatial crop `crop` of `crops`
    (eval_view(0, 1, 0, 1) == CENTRE): the index encodes the protocol, so a view stays a function of it."""
    if not (0 <= clip < clips <= MAX_TEST_CLIPS and 0 <= crop < crops <= MAX_TEST_CROPS):
        raise UserError(f"test views: need 1 <= clips <= {MAX_TEST_CLIPS} and 1 <= crops <= {MAX_TEST_CROPS}, "
                        f"got clip {clip} of {clips}, crop {crop} of {crops}")
    return -1 - ((clip * MAX_TEST_CLIPS + clips - 1) * _CROP_CODES + crop * MAX_TEST_CROPS + crops - 1)


def eval_views(clips: int, crops: int) -> list[int]:
    """The clips x crops evaluation view indices of a multi-view test (clip-major)."""
    return [eval_view(i, clips, j, crops) for i in range(clips) for j in range(crops)]


def _spans(spec: ViewSpec, geom: Geometry) -> tuple[int, int]:
    """How far the temporal start and the audio offset can move; a clip too small for the spec is an error."""
    span = (spec.frames - 1) * spec.stride + 1
    slack = (geom.frames - span, geom.audio_samples - audio_window(spec, geom.sample_rate))
    cut = spec.crop_mode == "cut" and min(geom.height, geom.width) < spec.crop
    if min(slack) < 0 or cut:
        raise ValueError(f"clip {geom} is smaller than the view {spec}")
    return slack


def audio_window(spec: ViewSpec, sample_rate: int) -> int:
    return int(round(spec.audio_seconds * sample_rate))


# ------------------------------------------------------------------ counter-based view draws
# A view's numbers are splitmix64 hashes of (seed, row, view, field): uint64 arithmetic that wraps,
# compiled once by numba (cached on disk) and called both from Python and from ffcv's compiled
# pipeline, so no hot path builds a random generator per row.

_GAMMA, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_T0, _Y0, _X0, _AUDIO, _FLIP, _INDEX = (np.uint64(k) for k in range(1, 7))  # one stream per drawn number
_AREA, _ASPECT = 16, 32   # + attempt: the random-resized crop's tries (_AREA: also the jitter's scale)
_CUT, _RESIZED, _JITTER = (CROP_MODES.index(m) for m in ("cut", "resized", "jitter"))


@numba.njit(cache=True, nogil=True)
def _mix(x: np.uint64) -> np.uint64:
    """splitmix64's finaliser: a bijection of uint64 that scatters every input bit."""
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@numba.njit(cache=True, nogil=True)
def _draw(seed: int, a: int, b: int, field: int) -> np.uint64:
    """A uniform uint64 for (seed, a, b, field)."""
    return _mix(_mix(_mix(np.uint64(seed) * _GAMMA + np.uint64(field)) ^ np.uint64(a)) + np.uint64(b) * _GAMMA)


@numba.njit(cache=True, nogil=True)
def _below(x: np.uint64, bound: int) -> int:
    """x (uniform uint64) as an int in [0, bound)."""
    return np.int64(x % np.uint64(bound))


@numba.njit(cache=True, nogil=True)
def _unit(x: np.uint64) -> float:
    """x (uniform uint64) as a float in [0, 1) (its top 53 bits)."""
    return np.float64(x >> _S11) * 2.0 ** -53


@numba.njit(cache=True, nogil=True)
def _spaced(i: int, n: int, slack: int) -> int:
    """Position i of n spaced evenly over [0, slack] (n == 1: the middle), as PySlowFast's test clips."""
    return slack // 2 if n == 1 else i * slack // (n - 1)


@numba.njit(cache=True, nogil=True)
def view_params(seed, rows, views, t_slack, a_slack, height, width, crop, mode,
                min_area, max_area, min_aspect, max_aspect, min_short, max_short, flip):
    """int64 [n, 7] View.as_tuple() of each (row, view). rows, views: int64 [n].

    Training views (index >= 0): offsets uniform within each slack, a coin for the flip (if `flip`),
    the box by crop mode (an index of CROP_MODES). Evaluation views (< 0, `eval_view`): spaced
    windows and crops, no flip."""
    out = np.empty((len(rows), 7), np.int64)
    short = min(height, width)
    for n in range(len(rows)):
        row, view = rows[n], views[n]
        if view < 0:
            code = -1 - view
            crops, crop_i = code % MAX_TEST_CROPS + 1, code // MAX_TEST_CROPS % MAX_TEST_CROPS
            clips, clip_i = code // _CROP_CODES % MAX_TEST_CLIPS + 1, code // (_CROP_CODES * MAX_TEST_CLIPS)
            h = w = crop if mode == _CUT else short
            along_y = crops > 1 and height > width   # test crops run along the long side
            y = _spaced(crop_i, crops, height - h) if along_y else (height - h) // 2
            x = (width - w) // 2 if along_y else _spaced(crop_i, crops, width - w)
            out[n] = (_spaced(clip_i, clips, t_slack), y, x, h, w, 0, _spaced(clip_i, clips, a_slack))
            continue
        h = w = crop
        drawn = True
        if mode == _JITTER:
            scale = min_short + (max_short - min_short) * _unit(_draw(seed, row, view, _AREA))
            h = w = max(1, min(short, int(np.floor(short / scale + 0.5))))
        elif mode == _RESIZED:
            h = w = short
            drawn = False
            for attempt in range(ATTEMPTS):
                area = height * width * (min_area + (max_area - min_area) * _unit(_draw(seed, row, view, _AREA + attempt)))
                log_aspect = np.log(min_aspect) + (np.log(max_aspect) - np.log(min_aspect)) * \
                    _unit(_draw(seed, row, view, _ASPECT + attempt))
                ww = int(np.floor(np.sqrt(area * np.exp(log_aspect)) + 0.5))
                hh = int(np.floor(np.sqrt(area / np.exp(log_aspect)) + 0.5))
                if 1 <= ww <= width and 1 <= hh <= height:
                    h, w, drawn = hh, ww, True
                    break
        y = _below(_draw(seed, row, view, _Y0), height - h + 1) if drawn else (height - h) // 2
        x = _below(_draw(seed, row, view, _X0), width - w + 1) if drawn else (width - w) // 2
        coin = np.int64(_draw(seed, row, view, _FLIP) & np.uint64(1)) if flip else 0
        out[n] = (_below(_draw(seed, row, view, _T0), t_slack + 1), y, x, h, w, coin,
                  _below(_draw(seed, row, view, _AUDIO), a_slack + 1))
    return out


@numba.njit(cache=True, nogil=True)
def view_indices(seed, epoch, rows, num_views):
    """int64 [n]: a training view of each row for the epoch, one of num_views (0: the epoch itself)."""
    out = np.empty(len(rows), np.int64)
    for n in range(len(rows)):
        out[n] = epoch if num_views == 0 else _below(_draw(seed, rows[n], epoch, _INDEX), num_views)
    return out


def train_view_indices(seed: int, epoch: int, rows: np.ndarray, num_views: int | None) -> np.ndarray:
    """Which view each row is trained on in an epoch: a fresh one each epoch (num_views None), or one
    of the cache's V, drawn per (row, epoch) so that its teacher feature exists."""
    return view_indices(seed, epoch, np.asarray(rows, np.int64), num_views or 0)


def spec_params(spec: ViewSpec, geom: Geometry) -> tuple:
    """view_params' arguments after (seed, rows, views) for clips of `geom`."""
    t_slack, a_slack = _spans(spec, geom)
    return (t_slack, a_slack, geom.height, geom.width, spec.crop, CROP_MODES.index(spec.crop_mode),
            spec.min_area, spec.max_area, spec.min_aspect, spec.max_aspect, spec.min_short, spec.max_short, spec.flip)


def make_views(seed: int, rows: np.ndarray, views: np.ndarray, spec: ViewSpec, geom: Geometry) -> np.ndarray:
    """int64 [n, 7] view parameters of rows sharing one geometry (an image set, a single clip)."""
    rows, views = np.asarray(rows, np.int64), np.asarray(views, np.int64)
    code = -1 - views[views < 0]
    crops, clips = code % _CROP_CODES, code // _CROP_CODES
    if np.any(crops // MAX_TEST_CROPS > crops % MAX_TEST_CROPS) or np.any(clips // MAX_TEST_CLIPS > clips % MAX_TEST_CLIPS):
        raise ValueError(f"view index {int(views[views < 0][0])} is no training view (>= 0) nor a eval_view")
    return view_params(seed, rows, views, *spec_params(spec, geom))


def make_view(seed: int, row: int, view: int, spec: ViewSpec, geom: Geometry) -> View:
    """The view parameters of (seed, row, view): a pure function, identical in every process."""
    t0, y0, x0, h, w, flip, audio_offset = make_views(seed, np.array([row]), np.array([view]), spec, geom)[0].tolist()
    return View(t0, y0, x0, h, w, bool(flip), audio_offset)


@dataclass(frozen=True)
class ViewPolicy:
    """How each sample's view index is chosen: the centre (evaluation), per epoch (training), or one
    fixed view for every row (`view`: the cache builder's pass over view `view`, or one view of a
    multi-view test, `eval_view`)."""

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
