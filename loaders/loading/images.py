"""Image modality through ffcv: the loader of a `.beton` image set (`umt-data pack-images`).

ffcv decodes the JPEGs (numba-compiled, `num_workers` threads), then an ffcv operation cuts each
sample's view. ffcv passes an operation the batch's sample indices (`with_indices`), and a sample's
index in its `.beton` is its row, so the operation computes each row's view index and parameters
with the numba build of views' counter-based draws (the maths of `views.make_view`, which the cache
builder uses) and crops, all inside ffcv's compiled pipeline (jit_mode). Rows are read in the epoch
plan's order (one shard: a (seed, epoch) permutation of the split), whatever the batch size.

ffcv's JPEG decoder ignores errors: a damaged image decodes silently to wrong pixels. So before its
first epoch a loader runs an integrity pass (`damaged_images`): the file's sha256 against the
manifest, and only when that differs, a strict decode of every stored image, which names the rows
that do not decode; `--bad-samples` then replaces or stops at them as every backend does
(loaders/loading/bad.py), and ffcv never reads them.

ffcv is imported only when a pack or a loader needs it: importing it takes about 4 s.
"""
from __future__ import annotations

import functools
import io
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Sequence

import numba
import numpy as np
import torch

from ..errors import UserError
from .bad import BadSamples, Skipped, Streak, filled
from .plan import EpochPlan, PlannedLoader
from ..stored.shards import MANIFEST, DataError, is_image_set, load_manifest, sha256_file, split_shards
from ..stored.views import (CENTRE, Geometry, ViewPolicy, ViewSpec, make_views, spec_params, view_indices,
                            view_params)


def ffcv_ready() -> None:
    """Import ffcv (about 4 s, once), keeping this thread's torch and numba thread counts, which
    ffcv's import sets to 1. ffcv's compiled code runs in numba's thread pool; numba would pick its TBB
    layer when a libtbb is installed (OpenCV's Debian package brings one), and that layer deadlocks at
    interpreter exit in a process pinned to one CPU, so OpenMP (or numba's own workqueue) goes first."""
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]  # read when the pool first starts
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
    if not is_image_set(manifest):
        raise DataError(f"{Path(data_dir) / MANIFEST} is a shard set, not an ffcv image set")
    return manifest


def image_geometry(size: int) -> Geometry:
    """A stored size x size image as the views module sees it: a one-frame clip without audio."""
    return Geometry(frames=1, height=size, width=size, audio_samples=0, sample_rate=1)


def image_spec(crop: int, flip: bool) -> ViewSpec:
    """Images are cut, not resized (the `cut` crop mode): ffcv's operation copies the box."""
    return ViewSpec(frames=1, stride=1, crop=crop, audio_seconds=0.0, flip=flip, crop_mode="cut")


@numba.njit(cache=True, nogil=True)
def _crop_flip(images: np.ndarray, params: np.ndarray, out: np.ndarray) -> None:
    """out[i] = the crop of images[i] at (params[i, 1], params[i, 2]), mirrored if params[i, 5]."""
    crop = out.shape[1]
    for i in range(out.shape[0]):
        y0, x0, flip = params[i, 1], params[i, 2], params[i, 5]
        for y in range(crop):
            for x in range(crop):
                src = x0 + (crop - 1 - x if flip else x)
                for c in range(3):
                    out[i, y, x, c] = images[i, y0 + y, src, c]


@functools.cache
def _view_crop_class() -> type:
    """The ffcv Operation class, defined on first use so that importing this module does not import ffcv."""
    ffcv_ready()
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.operation import Operation

    class ViewCrop(Operation):
        """Cuts each decoded image to its row's view, in ffcv's compiled code."""

        def __init__(self, policy: ViewPolicy, size: int, crop: int, flip: bool):
            super().__init__()
            self.policy, self.size, self.crop, self.flip = policy, size, crop, flip

        def generate_code(self):
            p = self.policy
            seed, epoch = p.seed, p.epoch
            args = spec_params(image_spec(self.crop, self.flip), image_geometry(self.size))
            fixed = p.view if p.view is not None else CENTRE if not p.train else -2  # -2: drawn per row
            num_views = p.num_views or 0

            def view_crop(images, out, rows):
                views = view_indices(seed, epoch, rows, num_views) if fixed == -2 else \
                    np.zeros(len(rows), np.int64) + fixed
                _crop_flip(images, view_params(seed, rows, views, *args), out[:len(rows)])
                return out[:len(rows)]

            view_crop.with_indices = True
            return view_crop

        def declare_state_and_memory(self, previous_state):
            shape = (self.crop, self.crop, 3)
            return replace(previous_state, jit_mode=True, shape=shape), AllocationQuery(shape, np.dtype("uint8"))

    return ViewCrop


# ----------------------------------------------------------------------------------------- integrity

@functools.lru_cache(maxsize=None)
def damaged_images(beton: str, sha256: str, views: tuple[str, ...]) -> dict[int, str]:
    """Rows of an image set whose stored image in one of `views` does not decode, each with its reason; {}
    without decoding when the file's sha256 is the manifest's. Once per process and file."""
    if sha256_file(Path(beton)) == sha256:
        return {}
    from PIL import Image
    ffcv_ready()
    from ffcv.reader import Reader

    reader, data = Reader(beton), np.memmap(beton, np.uint8, mode="r")
    by_ptr = np.argsort(reader.alloc_table["ptr"])
    ptrs, sizes = reader.alloc_table["ptr"][by_ptr], reader.alloc_table["size"][by_ptr]
    damaged = {}
    for view in views:
        meta = reader.metadata[f"f{reader.field_names.index(view)}"]
        for row in range(reader.num_samples):
            ptr = int(meta["data_ptr"][row])
            size = int(sizes[np.searchsorted(ptrs, ptr)])
            try:
                with Image.open(io.BytesIO(data[ptr:ptr + size].tobytes())) as image:
                    image.load()
                    shape = image.size
            except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for undecodable data
                damaged.setdefault(row, f"{view} image does not decode ({err})")
                continue
            if shape != (int(meta["width"][row]), int(meta["height"][row])):
                damaged.setdefault(row, f"{view} image decodes to {shape}, the file says "
                                        f"{(int(meta['width'][row]), int(meta['height'][row]))}")
    return damaged


# ----------------------------------------------------------------------------------------- loading

class ImageLoader(PlannedLoader):
    """One epoch of one rank's image batches. The ffcv Loader is built, and compiled, when iterated.

    Every yielded tensor owns its memory (ffcv reuses its buffers a few batches later).
    """

    def __init__(self, beton: Path, sha256: str, plan: EpochPlan, policy: ViewPolicy, views: Sequence[str],
                 stored: Sequence[str], size: int, crop: int, flip: bool, num_workers: int,
                 bad: BadSamples = BadSamples()):
        super().__init__(plan, policy)
        self.beton, self.sha256, self.views, self.stored = beton, sha256, tuple(views), tuple(stored)
        self.size, self.crop, self.flip, self.num_workers, self.bad = size, crop, flip, num_workers, bad

    def _replaced(self) -> tuple[np.ndarray, list[list[str]]]:
        """The rows ffcv reads (the plan's, damaged ones replaced by the rule of bad.py) and each batch's skipped."""
        damaged = damaged_images(str(self.beton), self.sha256, self.views)
        if not damaged:
            return self.plan.rows, [[] for _ in range(len(self.plan))]
        rows, skipped, streak = [], [], Streak(self.bad)
        for batch in self.plan.batches():
            names = []
            for row in batch.tolist():
                if row in damaged:
                    names.append(Skipped(str(self.beton), f"row {row}", damaged[row]))
                    if not self.bad.skip:
                        raise DataError(f"{self.beton} row {row}: {damaged[row]}")
                    streak.damaged(names[-1])
                else:
                    streak.good()
            rows += filled([r for r in batch.tolist() if r not in damaged], names)
            skipped.append(names)
        return np.array(rows, np.int64), skipped

    def _loader(self, rows: np.ndarray):
        from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
        from ffcv.loader import Loader, OrderOption

        crop = _view_crop_class()
        pipelines = {name: None for name in self.stored}
        pipelines.update({v: [SimpleRGBImageDecoder(), crop(self.policy, self.size, self.crop, self.flip)]
                          for v in self.views})
        pipelines.update(label=[IntDecoder()], row=[IntDecoder()])
        return Loader(str(self.beton), batch_size=self.plan.batch_size, num_workers=self.num_workers,
                      order=OrderOption.SEQUENTIAL, indices=rows, pipelines=pipelines, drop_last=False)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if not len(self.plan):
            return
        ffcv_ready()
        rows, skipped = self._replaced()
        with _keep_threads():
            loader = self._loader(rows)
            names = list(loader.pipeline_specs)  # ffcv's output order
            batches = iter(loader)
        for values, bad in zip(_while_alive(batches, self.beton), skipped):
            yield {**self._batch(dict(zip(names, values))), **({"bad_samples": bad} if self.bad.skip else {})}

    def _batch(self, values: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        rows = values["row"][:, 0].astype(np.int64)  # astype copies out of ffcv's buffer
        view = self.policy.indices(rows)
        params = make_views(self.policy.seed, rows, view, image_spec(self.crop, self.flip), image_geometry(self.size))
        batch = {v: torch.from_numpy(np.array(values[v])) for v in self.views}
        batch.update(label=torch.from_numpy(values["label"][:, 0].astype(np.int64)), row=torch.from_numpy(rows),
                     view=torch.from_numpy(view), params=torch.from_numpy(params.astype(np.int32)))
        return batch


def _while_alive(batches, beton: Path) -> Iterator:
    """ffcv's batches, failing when its decoding thread dies: an error there (a damaged page, a failing
    operation) ends that thread, and ffcv's own iterator would then wait for the next batch forever."""
    queue = batches.output_queue
    while True:
        with queue.not_empty:  # holds the queue's lock (so _qsize); one consumer: a batch seen here stays for next()
            while not queue._qsize() and batches.is_alive():
                queue.not_empty.wait(0.5)
            stopped = not queue._qsize() and not batches.is_alive()
        if stopped:
            raise DataError(f"{beton}: ffcv's decoding thread stopped with an error (its traceback is above)")
        try:
            yield next(batches)
        except StopIteration:
            return


def make_image_loader(data_dir: str | Path, manifest: dict, split: str, modalities: Sequence[str],
                      plan: EpochPlan, policy: ViewPolicy, crop: int, flip: bool, num_workers: int,
                      bad: BadSamples = BadSamples()) -> ImageLoader:
    """This rank's batches of an image set as `plan` says, each image cut to the view `policy` gives."""
    info = split_shards(manifest, split)[0]
    stored = tuple(manifest["modalities"])
    size = manifest["modalities"][modalities[0]]["size"]
    if not 0 < crop <= size:
        raise UserError(f"crop {crop} does not fit the stored {size} x {size} images of {data_dir}")
    threads = max(1, min(num_workers, numba.config.NUMBA_NUM_THREADS))  # ffcv fails above numba's limit
    return ImageLoader(Path(data_dir) / info["name"], info["sha256"], plan, policy, modalities, stored, size, crop,
                       flip, threads, bad)
