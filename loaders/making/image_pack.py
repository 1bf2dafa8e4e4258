"""`umt-data pack-images`: a multi-view image table → one ffcv `.beton` per split + manifest.json.

Each image is cut to the centred square on its short side and resized to `size` x `size`, so every
stored image has one geometry and a view depends on nothing but (seed, row, view index). It is
stored as JPEG in an ffcv RGBImageField. A sample with a missing or unreadable image in any view is
dropped whole and listed in the manifest with the reason. A pool of processes decodes and resizes
into a temporary uint8 array in OUT (N x views x size x size x 3 bytes, removed at the end); ffcv's
writer then runs with one process, because with several its page order (so the file's bytes)
depends on scheduling. The same inputs give byte-identical files, whatever the number of workers.
"""
from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from ..errors import UserError
from ..loading.images import ffcv_ready
from ..stored.shards import (FORMAT, IMAGE_SET, PACK_SEED, class_order, sha256_file, split_name, write_manifest,
                             written_order)

RESERVED = ("label", "row")
MAX_NAME = 16  # ffcv keeps a field's name in 16 bytes
PIXELS = ".pixels.tmp.npy"


# ----------------------------------------------------------------------------------------- input table

def read_image_table(csv_path: str | Path) -> tuple[dict[str, list[str]], list[int | str], list[str]]:
    """`label,split,<view>,...` rows → (view → image paths, labels, splits); paths relative to the CSV."""
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
    return views, labels, splits


def _table_row(row: list[str], width: int, where: str) -> tuple[str, str, list[str]]:
    if len(row) != width:
        raise UserError(f"{where}: {len(row)} columns, the header has {width}")
    label, split, *paths = (c.strip() for c in row)
    if not label:
        raise UserError(f"{where}: empty label")
    split = split_name(split, where)
    if not all(paths):
        raise UserError(f"{where}: empty image path")
    return label, split, paths


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
    ffcv_ready()
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
    if size < 1 or not 1 <= quality <= 100:
        raise UserError(f"pack_images: size must be >= 1 and JPEG quality in 1..100, got {size} and {quality}")


def pack_images(views: dict[str, list[str]], labels: list[int | str], splits: list[str], out: str | Path,
                size: int = 64, workers: int = 1, quality: int = 90, progress: bool = True,
                seed: int = PACK_SEED) -> dict:
    """Aligned image lists (view → paths) with a label and split per sample → `<split>.beton` files and
    manifest.json in `out`; returns the manifest. Each split's accepted samples are written in a
    `seed`ed random order (shards.written_order); a sample's row is its place in that order."""
    _check_inputs(views, labels, splits, size, quality)
    names, out = list(views), Path(out)
    labels = [str(label) for label in labels]
    classes = class_order(labels)
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
            keep = [keep[j] for j in written_order(len(keep), seed)]
            if keep:
                samples = _SplitSamples(pixels_path, keep, [label_of[labels[i]] for i in keep])
                entries[split] = _write_split(out, split, names, samples, size, quality)
    finally:
        pixels_path.unlink(missing_ok=True)
    manifest = {"format": FORMAT, "container": IMAGE_SET, "classes": classes,
                "modalities": {n: {"kind": "image", "size": size, "jpeg_quality": quality} for n in names},
                "splits": {s: {"num_samples": e["count"], "shards": [e]} for s, e in entries.items()},
                "source": {"generator": "umt-data pack-images", "size": size, "jpeg_quality": quality, "seed": seed},
                "flags": {}, "rejected": [rejected[i] for i in sorted(rejected)]}
    write_manifest(out, manifest)
    return manifest


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
    p.add_argument("--seed", type=int, default=PACK_SEED,
                   help=f"seed of the order in which each split's samples are written (default {PACK_SEED})")


def pack_images_command(args: argparse.Namespace) -> dict:
    views, labels, splits = read_image_table(args.table)
    manifest = pack_images(views, labels, splits, args.out, args.size, args.workers, args.quality, seed=args.seed)
    print(f"umt-data: packed {', '.join(manifest['modalities'])} images into {args.out}")
    return manifest
