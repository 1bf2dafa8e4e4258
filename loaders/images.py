"""Image modality through ffcv: the loader of a `.beton` image set (`umt-data pack-images`).

ffcv decodes the JPEGs (numba-compiled, `num_workers` threads), then an ffcv operation cuts each
sample's view. ffcv passes an operation the batch's sample indices (`with_indices`), and a sample's
index in its `.beton` is its row, so the view is `image_view(seed, row, view)`, which is
`views.make_view`, the function the cache builder uses (DESIGN.md §3). make_view draws from numpy's
PCG64, which numba cannot run, so the operation is a non-jitted ffcv stage: it looks the parameters
up in a per-epoch table and hands the pixels to a numba kernel.

ffcv is imported only when a pack or a loader needs it: importing it takes about 4 s.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numba
import numpy as np
import torch

from .errors import UserError
from .shards import MANIFEST, DataError, load_manifest, split_shards
from .views import CENTRE, Geometry, View, ViewSpec, make_view, train_view_index

CONTAINER = "beton"   # manifest["container"]: one ffcv file per split, listed as the split's only shard


def ffcv_ready() -> None:
    """Import ffcv (about 4 s, once), keeping this thread's torch and numba thread counts, which
    ffcv's import sets to 1."""
    try:
        with _keep_threads():
            import ffcv  # noqa: F401
    except ImportError as err:
        raise UserError("the image modality needs ffcv: apt-get install -y pkg-config libturbojpeg0-dev "
                        "libopencv-dev, then pip install -r requirements-images.txt") from err


@contextmanager
def _keep_threads() -> Iterator[None]:
    """ffcv sets torch's and numba's thread counts (its import to 1, a Loader to its worker count);
    the trainer keeps its own."""
    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        numba.set_num_threads(numba_threads)


def load_image_manifest(data_dir: str | Path) -> dict:
    """The manifest of an image set (local only: ffcv memory-maps its files)."""
    manifest = load_manifest(data_dir)
    if manifest.get("container") != CONTAINER:
        raise DataError(f"{Path(data_dir) / MANIFEST} is a shard set, not an ffcv image set")
    return manifest


# ----------------------------------------------------------------------------------------- views

def image_view(seed: int, row: int, view: int, size: int, crop: int, flip: bool = True) -> View:
    """The crop box and flip of (seed, row, view) on a stored size x size image.

    It is views.make_view on a one-frame clip without audio, so t0 and audio_offset are 0.
    """
    spec = ViewSpec(frames=1, stride=1, crop=crop, audio_seconds=0.0, flip=flip)
    return make_view(seed, row, view, spec, Geometry(frames=1, height=size, width=size, audio_samples=0,
                                                     sample_rate=1))


class ViewTable:
    """Each row's view index and parameters in one epoch, computed on first use.

    ffcv's thread fills rows as it crops them; the consumer reads them back for the batch. Values are a
    pure function of the row, so two threads filling the same row write the same numbers.
    """

    def __init__(self, count: int, seed: int, epoch: int, train: bool, num_views: int | None, size: int,
                 crop: int, flip: bool, fixed: int | None = None):
        self.seed, self.epoch, self.train, self.num_views, self.fixed = seed, epoch, train, num_views, fixed
        self.size, self.crop, self.flip = size, crop, flip
        self.index = np.full(count, CENTRE, np.int64)
        self.params = np.zeros((count, 5), np.int32)
        self.filled = np.zeros(count, bool)

    def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(view index int64 [B], View.as_tuple() int32 [B, 5]) of these rows."""
        for row in rows[~self.filled[rows]]:
            view = (self.fixed if self.fixed is not None else
                    train_view_index(self.seed, self.epoch, int(row), self.num_views) if self.train else CENTRE)
            self.index[row] = view
            self.params[row] = image_view(self.seed, int(row), view, self.size, self.crop, self.flip).as_tuple()
            self.filled[row] = True
        return self.index[rows], self.params[rows]


@numba.njit(cache=True, nogil=True)
def _crop_flip(images: np.ndarray, params: np.ndarray, out: np.ndarray) -> None:
    """out[i] = the crop of images[i] at (params[i, 1], params[i, 2]), mirrored if params[i, 3]."""
    crop = out.shape[1]
    for i in range(out.shape[0]):
        y0, x0, flip = params[i, 1], params[i, 2], params[i, 3]
        for y in range(crop):
            for x in range(crop):
                src = x0 + (crop - 1 - x if flip else x)
                for c in range(3):
                    out[i, y, x, c] = images[i, y0 + y, src, c]


@functools.cache
def _view_crop_class() -> type:
    """The ffcv Operation class, defined on first use so that importing this module does not import ffcv."""
    ffcv_ready()
    from ffcv.pipeline.operation import Operation

    class ViewCrop(Operation):
        """Cuts each decoded image to its row's view; returns fresh arrays that outlive ffcv's buffers."""

        def __init__(self, table: ViewTable):
            super().__init__()
            self.table = table

        def generate_code(self):
            table = self.table

            def view_crop(images, _memory, rows):
                out = np.empty((len(rows), table.crop, table.crop, 3), np.uint8)
                _crop_flip(images, table(rows)[1], out)
                return out

            view_crop.with_indices = True
            return view_crop

        def declare_state_and_memory(self, previous_state):
            shape = (self.table.crop, self.table.crop, 3)
            return replace(previous_state, jit_mode=False, shape=shape), None

    return ViewCrop


# ----------------------------------------------------------------------------------------- loading

def rank_rows(count: int, seed: int, epoch: int, rank: int, world: int, train: bool, batch_size: int) -> np.ndarray:
    """The rows one rank reads in an epoch, in reading order.

    Training: a (seed, epoch) permutation of all rows dealt round-robin, each rank cut to the same
    whole number of batches. Evaluation: rows rank, rank + world, ... in order.
    """
    if not train:
        return np.arange(rank, count, world)
    mine = np.random.default_rng([seed, epoch]).permutation(count)[rank::world]
    return mine[:count // world // batch_size * batch_size]


@dataclass(frozen=True)
class ImageEpoch:
    """One epoch of one rank's image batches. The ffcv Loader is built, and compiled, when iterated.

    Every yielded tensor owns its memory (ffcv reuses its buffers a few batches later).
    """

    beton: Path
    order: np.ndarray       # the rows to read, in order
    views: tuple[str, ...]  # the views to decode; the file's other views are skipped
    stored: tuple[str, ...]
    table: ViewTable
    batch_size: int
    num_workers: int
    train: bool

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def _loader(self):
        from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
        from ffcv.loader import Loader, OrderOption

        crop = _view_crop_class()
        pipelines = {name: None for name in self.stored}
        pipelines.update({v: [SimpleRGBImageDecoder(), crop(self.table)] for v in self.views})
        pipelines.update(label=[IntDecoder()], row=[IntDecoder()])
        return Loader(str(self.beton), batch_size=self.batch_size, num_workers=self.num_workers,
                      order=OrderOption.SEQUENTIAL, indices=self.order, pipelines=pipelines, drop_last=self.train)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if not len(self.order):
            return
        ffcv_ready()
        with _keep_threads():
            loader = self._loader()
            names = list(loader.pipeline_specs)  # ffcv's output order
            batches = iter(loader)
        for values in batches:
            yield self._batch(dict(zip(names, values)))

    def _batch(self, values: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        rows = values["row"][:, 0].astype(np.int64)  # astype copies out of ffcv's buffer
        view, params = self.table(rows)
        batch = {v: torch.from_numpy(values[v]) for v in self.views}
        batch.update(label=torch.from_numpy(values["label"][:, 0].astype(np.int64)), row=torch.from_numpy(rows),
                     view=torch.from_numpy(view), params=torch.from_numpy(params))
        return batch


def make_image_loader(data_dir: str | Path, split: str, modalities: Sequence[str], seed: int, epoch: int,
                      train: bool, batch_size: int, crop: int, rank: int = 0, world: int = 1, skip: int = 0,
                      num_workers: int = 1, num_views: int | None = None, flip: bool = True,
                      view: int | None = None) -> ImageEpoch:
    """This rank's batches of one epoch of an image set, after the first `skip` (a mid-epoch resume).

    Training: rows in a (seed, epoch) order, equal batch counts on every rank, last partial batch
    dropped, view index from views.train_view_index (num_views: the cache's V, or None for a fresh
    view each epoch). Evaluation: rows in order, the centre view (-1) without flip, or view index
    `view` for every row (the cache builder's pass over one view).
    """
    manifest = load_image_manifest(data_dir)
    info = split_shards(manifest, split)[0]
    stored = tuple(manifest["modalities"])
    if not modalities or not set(modalities) <= set(stored):
        raise DataError(f"{data_dir}: asked for views {list(modalities)}, it has {list(stored)}")
    size = manifest["modalities"][modalities[0]]["size"]
    if not 0 < crop <= size:
        raise UserError(f"crop {crop} does not fit the stored {size} x {size} images of {data_dir}")
    order = rank_rows(info["count"], seed, epoch, rank, world, train, batch_size)
    if train and not len(order):
        raise DataError(f"{data_dir}: {split} has {info['count']} samples, too few for {world} x {batch_size}")
    table = ViewTable(info["count"], seed, epoch, train, num_views, size, crop, flip, view)
    threads = max(1, min(num_workers, numba.config.NUMBA_NUM_THREADS))  # ffcv fails above numba's limit
    return ImageEpoch(Path(data_dir) / info["name"], order[skip * batch_size:], tuple(modalities), stored, table,
                      batch_size, threads, train)
