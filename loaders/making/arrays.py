"""`umt-data pack-arrays`: vector views (pre-extracted features, tabular views) → shards.

Each input view is one `.npy` ([N, D] numbers) or `.csv` file (N rows of D numbers; a first line
holding any non-number is a header) aligned row by row with a labels file. Samples go into the same
WebDataset shard format as video (members `<key>.<view>.npy` float32 and `<key>.json`), so the
loader, the cache builder, distributed training and resume work unchanged. Features are stored
standardised with the training split's mean and std (kept in the manifest, to apply to new data),
because vector views such as pixel sums and Zernike moments differ in scale by orders of magnitude.
Each split's rows are written in a seeded random order (`--seed`), so shards mix classes.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..stored.shards import FORMAT, SPLITS, ShardWriter, class_order, split_name, with_offsets, write_manifest, \
    written_order


def read_view(path: str | Path) -> np.ndarray:
    """One view's [N, D] float64 matrix from .npy or .csv, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"view file {path} does not exist")
    try:
        if path.suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        else:
            with open(path, newline="", encoding="utf-8") as handle:
                rows = [r for r in csv.reader(handle) if r]
            if rows and not all(_is_number(c) for c in rows[0]):
                rows = rows[1:]
            data = np.array([[float(c) for c in r] for r in rows])
    except ValueError as err:
        raise UserError(f"{path}: not a numeric matrix ({err})") from err
    data = np.asarray(data, dtype=np.float64)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2 or len(data) == 0:
        raise UserError(f"{path}: expected an [N, D] matrix, got shape {data.shape}")
    return data


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_labels(path: str | Path) -> tuple[list[str], list[str] | None]:
    """Labels (and splits, when the file has a `split` column) from a CSV with a header `label[,split]`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"labels file {path} does not exist")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.reader(handle) if r and any(c.strip() for c in r)]
    header = [c.strip().lower() for c in rows[0]] if rows else []
    if "label" not in header:
        raise UserError(f"{path}: the first line must be a header naming a `label` column (and optionally `split`)")
    col, split_col = header.index("label"), header.index("split") if "split" in header else None
    labels, splits = [], [] if split_col is not None else None
    for n, row in enumerate(rows[1:], start=2):
        try:
            labels.append(row[col].strip())
            if splits is not None:
                splits.append(split_name(row[split_col], f"{path}:{n}"))
        except IndexError:
            raise UserError(f"{path}:{n}: row {row!r} has no {'split' if labels else 'label'} column") from None
    if not labels:
        raise UserError(f"{path} lists no labels")
    return labels, splits


def stratified_splits(labels: list[str], fractions: tuple[float, float, float], seed: int) -> list[str]:
    """Each class's samples dealt to train/val/test in the given proportions, by a seeded shuffle."""
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0) or fractions[0] == 0:
        raise UserError(f"split fractions must be three non-negative numbers summing to 1 with train > 0, got {fractions}")
    splits = [""] * len(labels)
    rng = np.random.default_rng(seed)
    for name in sorted(set(labels)):
        members = rng.permutation([i for i, label in enumerate(labels) if label == name])
        cuts = np.round(np.cumsum(fractions)[:2] * len(members)).astype(int)
        for part, split in zip(np.split(members, cuts), SPLITS):
            for i in part:
                splits[i] = split
    return splits


def pack_arrays(views: dict[str, str | Path], labels_path: str | Path, out: str | Path, shard_size: int = 4096,
                fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0,
                standardise: bool = True) -> dict:
    """Pack aligned vector views + labels into a shard set; returns the manifest."""
    if not views:
        raise UserError("pack-arrays needs at least one --view NAME=FILE")
    reserved = {"video", "audio", "json", "label", "row", "view", "params"} & set(views)
    if reserved:
        raise UserError(f"view names {sorted(reserved)} are reserved; choose other names")
    labels, splits = read_labels(labels_path)
    data = {name: read_view(path) for name, path in views.items()}
    for name, matrix in data.items():
        if len(matrix) != len(labels):
            raise UserError(f"{views[name]}: {len(matrix)} rows, but {labels_path} has {len(labels)} labels")
    if splits is None:
        splits = stratified_splits(labels, fractions, seed)
    finite = np.all([np.isfinite(m).all(axis=1) for m in data.values()], axis=0)
    rejected = [{"source": f"row {i}", "reason": "non-finite values in " + ", ".join(
        n for n, m in data.items() if not np.isfinite(m[i]).all())} for i in np.flatnonzero(~finite)]
    train = np.array([s == "train" for s in splits]) & finite
    if not train.any():
        raise UserError(f"{labels_path}: no usable training samples")
    stats = {n: _moments(m[train]) if standardise else (np.zeros(m.shape[1]), np.ones(m.shape[1]))
             for n, m in data.items()}
    classes = class_order(labels)
    label_of = {name: k for k, name in enumerate(classes)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_splits = {}
    for split in SPLITS:
        indices = [i for i, s in enumerate(splits) if s == split and finite[i]]
        indices = [indices[j] for j in written_order(len(indices), seed)]
        if indices:
            shards = _write_split(out, split, indices, data, stats, labels, label_of, shard_size)
            manifest_splits[split] = {"num_samples": len(indices), "shards": with_offsets(shards)}
    manifest = {"format": FORMAT, "classes": classes,
                "modalities": {n: {"kind": "vector", "dim": int(m.shape[1]), "source": str(views[n]),
                                   "mean": stats[n][0].tolist(), "std": stats[n][1].tolist()}
                               for n, m in data.items()},
                "splits": manifest_splits,
                "source": {"generator": "umt-data pack-arrays", "labels": str(labels_path), "seed": seed,
                           "split_fractions": list(fractions), "standardised": standardise,
                           "shard_size": shard_size},
                "flags": {}, "rejected": rejected}
    write_manifest(out, manifest)
    return manifest


def _moments(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    std = matrix.std(axis=0)
    return matrix.mean(axis=0), np.where(std > 1e-12, std, 1.0)


def _write_split(out: Path, split: str, indices: list[int], data: dict[str, np.ndarray], stats: dict,
                 labels: list[str], label_of: dict[str, int], shard_size: int) -> list[dict]:
    shards = []
    for first in range(0, len(indices), shard_size):
        writer = ShardWriter(out / f"{split}-{len(shards):06d}.tar")
        for row in range(first, min(first + shard_size, len(indices))):
            source = indices[row]
            key = f"{split}_{row:07d}"
            members = {f"{n}.npy": _npy_bytes(((m[source] - stats[n][0]) / stats[n][1]).astype(np.float32))
                       for n, m in data.items()}
            meta = {"key": key, "row": row, "split": split, "label": label_of[labels[source]],
                    "class": labels[source], "source": source}
            writer.write(key, {**members, "json": json.dumps(meta, sort_keys=True).encode()})
        shards.append(writer.close())
    return shards


def _npy_bytes(vector: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, vector, allow_pickle=False)
    return buffer.getvalue()

