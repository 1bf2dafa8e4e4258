"""Image modality through ffcv: a multi-view image table → one `.beton` per split, and its loader.

Packing. Each image is cut to the centred square on its short side and resized to `size` x `size`,
so every stored image has one geometry and a view depends on nothing but (seed, row, view index).
It is stored as JPEG in an ffcv RGBImageField. A sample with a missing or unreadable image in any
view is dropped whole and listed in the manifest with the reason. A pool of processes decodes and
resizes into a temporary uint8 array in OUT (N x views x size x size x 3 bytes, removed at the end);
ffcv's writer then runs with one process, because with several its page order (so the file's bytes)
depends on scheduling. The same inputs give byte-identical files, whatever the number of workers.

Loading. ffcv decodes the JPEGs (numba-compiled, `num_workers` threads), then an ffcv operation
cuts each sample's view. ffcv passes an operation the batch's sample indices (`with_indices`), and
a sample's index in its `.beton` is its row, so the view is `image_view(seed, row, view)`, which is
`views.make_view`, the function the cache builder uses (DESIGN.md §3). make_view draws from numpy's
PCG64, which numba cannot run, so the operation is a non-jitted ffcv stage: it looks the parameters
up in a per-epoch table and hands the pixels to a numba kernel.

ffcv is imported only when a pack or a loader needs it: importing it takes about 4 s.
"""
from __future__ import annotations

import argparse
import csv
import functools
import multiprocessing
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numba
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from .errors import UserError
from .inputs import SPLIT_ALIASES
from .shards import FORMAT, MANIFEST, DataError, load_manifest, sha256_file, split_shards, write_manifest
from .views import CENTRE, Geometry, View, ViewSpec, make_view, train_view_index

CONTAINER = "beton"   # manifest["container"]: one ffcv file per split, listed as the split's only shard
RESERVED = ("label", "row")
MAX_NAME = 16  # ffcv keeps a field's name in 16 bytes
PIXELS = ".pixels.tmp.npy"


def _ffcv() -> None:
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


# ----------------------------------------------------------------------------------------- input table

def read_image_table(csv_path: str | Path) -> tuple[dict[str, list[str]], list[int | str], list[str]]:
    """`label,split,<view>,...` rows → (view → image paths, labels, splits); paths relative to the CSV.

    Labels that are all integers come back as ints (so class "10" sorts after "9").
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise UserError(f"image table {csv_path} does not exist")
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = [c.strip() for c in next(reader, [])]
        if len(header) < 3 or header[:2] != ["label", "split"]:
            raise UserError(f"{csv_path}:1: the header must be label,split,<view>[,<view>...], got {','.join(header)!r}")
        names = header[2:]
        check_view_names(names, f"{csv_path}:1")
        views, labels, splits = {n: [] for n in names}, [], []
        for row in reader:
            if any(c.strip() for c in row):
                label, split, paths = _table_row(row, len(header), f"{csv_path}:{reader.line_num}")
                labels.append(label)
                splits.append(split)
                for name, path in zip(names, paths):
                    views[name].append(str(csv_path.parent / path))
    if not labels:
        raise UserError(f"{csv_path} lists no samples")
    if all(label.lstrip("-").isdigit() for label in labels):
        labels = [int(label) for label in labels]
    return views, labels, splits


def _table_row(row: list[str], width: int, where: str) -> tuple[str, str, list[str]]:
    if len(row) != width:
        raise UserError(f"{where}: {len(row)} columns, the header has {width}")
    label, split, *paths = (c.strip() for c in row)
    if not label:
        raise UserError(f"{where}: empty label")
    if split.lower() not in SPLIT_ALIASES:
        raise UserError(f"{where}: unknown split {split!r} (expected train, val or test)")
    if not all(paths):
        raise UserError(f"{where}: empty image path")
    return label, SPLIT_ALIASES[split.lower()], paths


def check_view_names(names: Sequence[str], where: str) -> None:
    """View names become ffcv field names: short ASCII identifiers, unique, not `label` or `row`."""
    if len(set(names)) != len(names):
        raise UserError(f"{where}: view names repeat: {list(names)}")
    for name in names:
        if name in RESERVED or not (name.isascii() and name.isidentifier()) or len(name) > MAX_NAME:
            raise UserError(f"{where}: view name {name!r} must be an ASCII identifier of at most {MAX_NAME} "
                            f"characters other than {' or '.join(RESERVED)}")


# ----------------------------------------------------------------------------------------- packing

def load_image(path: str, size: int) -> np.ndarray:
    """An image file → RGB uint8 [size, size, 3]: the centred square on its short side, resized."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = (left, top, left + side, top + side)
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC, box=square))


def _reason(err: Exception) -> str:
    if isinstance(err, FileNotFoundError):
        return "missing file"
    if isinstance(err, UnidentifiedImageError):
        return "not an image"
    return f"unreadable image: {type(err).__name__}: {err}"


def _load_sample(job: tuple[int, list[str], int]) -> tuple[int, np.ndarray | tuple[int, str]]:
    """(index, [V, size, size, 3]) or (index, (failing view, reason)); never raises."""
    index, paths, size = job
    images = []
    for view, path in enumerate(paths):
        try:
            images.append(load_image(path, size))
        except Exception as err:  # one broken file must not end the pack
            return index, (view, _reason(err))
    return index, np.stack(images)


def _decode_all(views: dict[str, list[str]], splits: list[str], size: int, workers: int, pixels: np.ndarray,
                progress: bool) -> dict[int, dict]:
    """Fill `pixels` with every sample's views; returns the rejected samples by index."""
    names = list(views)
    jobs = [(i, [views[n][i] for n in names], size) for i in range(len(splits))]
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    results = pool.imap(_load_sample, jobs, chunksize=8) if pool else map(_load_sample, jobs)
    rejected = {}
    try:
        for index, result in tqdm(results, total=len(jobs), unit="sample", desc="pack-images", disable=not progress):
            if isinstance(result, tuple):
                view, reason = result
                rejected[index] = {"path": views[names[view]][index], "view": names[view],
                                   "split": splits[index], "reason": reason}
            else:
                pixels[index] = result
    finally:
        if pool:
            pool.terminate()
    return rejected


class _SplitSamples:
    """ffcv's indexed dataset for one split: sample `row` is (view images..., label, row)."""

    def __init__(self, pixels_path: Path, keep: list[int], labels: list[int]):
        self.pixels_path, self.keep, self.labels = pixels_path, keep, labels
        self._pixels = None  # opened in ffcv's writer process

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, row: int) -> tuple:
        if self._pixels is None:
            self._pixels = np.load(self.pixels_path, mmap_mode="r")
        return (*np.array(self._pixels[self.keep[row]]), self.labels[row], row)


def _page_size(raw: int) -> int:
    """ffcv keeps a sample's images in one page and pads the file to whole pages: the smallest power
    of two from 2 MiB that holds twice a sample's raw pixels (its JPEGs are smaller) keeps small sets small."""
    return max(1 << 21, 1 << (2 * raw - 1).bit_length())


def _write_split(out: Path, split: str, names: list[str], samples: _SplitSamples, size: int, quality: int) -> dict:
    """One split's `.beton`, written under a temporary name; returns its manifest entry."""
    _ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    fields = {n: RGBImageField(write_mode="jpg", jpeg_quality=quality) for n in names}
    fields.update(label=IntField(), row=IntField())
    final = out / f"{split}.beton"
    tmp = final.with_name(final.name + ".tmp")
    writer = DatasetWriter(str(tmp), fields, page_size=_page_size(len(names) * size * size * 3), num_workers=1)
    writer.from_indexed_dataset(samples, chunksize=256)
    os.replace(tmp, final)
    return {"name": final.name, "count": len(samples), "offset": 0, "bytes": final.stat().st_size,
            "sha256": sha256_file(final)}


def _check_inputs(views: dict[str, list[str]], labels: list[int | str], splits: list[str], size: int,
                  quality: int) -> None:
    check_view_names(list(views), "pack_images")
    if not views or not labels:
        raise UserError("pack_images: no views or no samples")
    lengths = {len(labels), len(splits), *(len(paths) for paths in views.values())}
    if len(lengths) != 1:
        raise UserError(f"pack_images: views, labels and splits differ in length ({sorted(lengths)})")
    if len({type(label) for label in labels}) != 1:
        raise UserError("pack_images: labels mix integers and names")
    if size < 1 or not 1 <= quality <= 100:
        raise UserError(f"pack_images: size must be >= 1 and JPEG quality in 1..100, got {size} and {quality}")


def pack_images(views: dict[str, list[str]], labels: list[int | str], splits: list[str], out: str | Path,
                size: int = 64, workers: int = 1, quality: int = 90, progress: bool = True) -> dict:
    """Aligned image lists (view → paths) with a label and split per sample → `<split>.beton` files and
    manifest.json in `out`; returns the manifest. A sample's row is its index in its split after rejects."""
    _check_inputs(views, labels, splits, size, quality)
    names, out = list(views), Path(out)
    classes = sorted(set(labels))
    label_of = {c: i for i, c in enumerate(classes)}
    out.mkdir(parents=True, exist_ok=True)
    pixels_path = out / PIXELS
    try:
        pixels = np.lib.format.open_memmap(pixels_path, "w+", np.uint8, (len(labels), len(names), size, size, 3))
        rejected = _decode_all(views, splits, size, workers, pixels, progress)
        pixels.flush()
        del pixels
        entries = {}
        for split in dict.fromkeys(splits):
            keep = [i for i, s in enumerate(splits) if s == split and i not in rejected]
            if keep:
                samples = _SplitSamples(pixels_path, keep, [label_of[labels[i]] for i in keep])
                entries[split] = _write_split(out, split, names, samples, size, quality)
    finally:
        pixels_path.unlink(missing_ok=True)
    manifest = {"format": FORMAT, "container": CONTAINER, "classes": [str(c) for c in classes],
                "modalities": {n: {"kind": "image", "size": size, "jpeg_quality": quality} for n in names},
                "splits": {s: {"num_samples": e["count"], "shards": [e]} for s, e in entries.items()},
                "source": {"generator": "umt-data pack-images", "size": size, "jpeg_quality": quality},
                "flags": {}, "rejected": [rejected[i] for i in sorted(rejected)]}
    write_manifest(out, manifest)
    return manifest


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
    _ffcv()
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
        _ffcv()
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


# ----------------------------------------------------------------------------------------- CLI

def add_pack_images_parser(subparsers) -> None:
    """`umt-data pack-images TABLE OUT`; handled by pack_images_command."""
    p = subparsers.add_parser("pack-images", help="multi-view image table → ffcv .beton per split",
                              description="Pack a CSV with header label,split,<view>,... (image paths relative to "
                                          "the CSV) into <split>.beton files (ffcv; JPEG, each image cut to its "
                                          "centred square and resized to --size) and manifest.json. A sample with a "
                                          "missing or unreadable image is rejected whole, with the reason. The same "
                                          "inputs give byte-identical files.")
    p.add_argument("table", help="CSV: label,split,<view1>,<view2>,...")
    p.add_argument("out", help="output directory")
    p.add_argument("--size", type=int, default=64, help="stored image side in pixels (default 64)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes")


def pack_images_command(args: argparse.Namespace) -> dict:
    views, labels, splits = read_image_table(args.table)
    manifest = pack_images(views, labels, splits, args.out, args.size, args.workers, args.quality)
    print(f"umt-data: packed {', '.join(manifest['modalities'])} images into {args.out}")
    return manifest
