"""Zarr v3 layout of a teacher-feature cache, and the checks that guard its use.

    CACHE.zarr/
      attrs             format, split, num_samples N, num_views V, seed, view spec, data
                        fingerprint (manifest hash), per-modality teacher fingerprint and feature
                        dim, the data shards it mirrors; `build`: versions, start time, processes
      features/<m>      float16 [N, V, D]   teacher feature of (row, view)
      logits/<m>        float16 [N, V, C]   teacher classifier's logits on that feature
      views             int32   [N, V, 7]   the view records (t0, y0, x0, h, w, flip, audio offset)
      keys              str     [N]         sample keys, to trace a row back to its clip
      done              uint8   [S]         completion marker per data shard

Rows are the split's rows in manifest order. One Zarr shard holds exactly one data shard's rows,
so writers that own whole data shards never share a Zarr shard (Zarr has no locks).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

from umt.loaders.errors import UserError
from umt.loaders.stored.views import VIEW_FIELDS

FORMAT = "umt-cache/4"   # /4: a view's box (y0, x0, h, w) is resized to the crop (crop modes); 7 view fields
# /3 (teacher logits beside the features) and /2 (counter-based view draws) hold 5-field views cut
# without resizing, whatever their view spec: their features belong to other crops, so they are refused
READABLE = (FORMAT,)
KINDS = ("features", "logits")  # what a cache holds per teacher, each an array kind/<modality>


class CacheError(UserError):
    """A cache is missing, incomplete, or does not belong to the given data or teachers."""


def _identity(attrs: dict[str, Any]) -> dict[str, Any]:
    """What makes a cache this cache: its attributes less where the data and the teachers lay (their
    fingerprints stay), so that a build resumed from another node's copies of them continues it."""
    teachers = {m: {k: v for k, v in t.items() if k != "checkpoint"} for m, t in (attrs.get("teachers") or {}).items()}
    return {**{k: v for k, v in attrs.items() if k != "data_dir"}, "teachers": teachers}


def create(path: str | Path, attrs: dict[str, Any], dims: dict[str, int], shards: list[dict],
           build_info: dict[str, Any], classes: int | None = None) -> zarr.Group:
    """Create an empty cache, or reopen one whose identity attributes equal `attrs` (a resume);
    with `classes`, it holds the teachers' logits too.

    `attrs` identify the cache (data and teachers by fingerprint, views); `build_info` only describes the build
    (versions, start time, processes) and may differ between a build and its resumption.
    """
    rows = shards[0]["count"]
    misaligned = [s["name"] for s in shards[:-1] if s["count"] != rows]
    if misaligned:
        raise CacheError(f"data shards {misaligned} hold a different number of samples than the first "
                         f"({rows}); the cache needs equal-size shards (the last may be smaller)")
    if Path(path).exists():
        group = open_group(path)
        if _identity({k: group.attrs.get(k) for k in attrs}) != _identity(attrs):
            raise CacheError(f"{path} exists and was built with other settings, data or teachers; "
                             "remove it or choose another --out")
    else:
        group = zarr.open_group(str(path), mode="w", attributes={**attrs, "build": build_info})
    n, v = attrs["num_samples"], attrs["num_views"]
    chunk = max(d for d in range(1, min(rows, 64) + 1) if rows % d == 0)  # inner chunks tile a shard
    arrays = {f"features/{m}": ((n, v, dim), "float16", np.nan) for m, dim in dims.items()}
    arrays.update({f"logits/{m}": ((n, v, classes), "float16", np.nan) for m in dims if classes})
    arrays["views"] = ((n, v, len(VIEW_FIELDS)), "int32", -1)
    arrays["keys"] = ((n,), str, "")
    for name, (shape, dtype, fill) in arrays.items():
        if name not in group:  # a build killed while creating arrays resumes here
            group.create_array(name, shape=shape, dtype=dtype, fill_value=fill,
                               chunks=(chunk, *shape[1:]), shards=(rows, *shape[1:]))
    if "done" not in group:
        group.create_array("done", shape=(len(shards),), dtype="uint8", chunks=(1,), fill_value=0)
    return group


def size_text(nbytes: int) -> str:
    """Bytes as KiB, MiB or GiB with one decimal (a tiny cache is not '0.0 MiB')."""
    for unit in ("KiB", "MiB", "GiB"):
        nbytes /= 1024
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.1f} {unit}"


def payload_bytes(num_samples: int, num_views: int, widths: list[int]) -> int:
    """Uncompressed bytes of the float16 features and logits ([N, V, width] each): what `build` announces
    and `info` reports beside the (compressed) size on disk."""
    return num_samples * num_views * sum(widths) * 2


def open_group(path: str | Path) -> zarr.Group:
    path = Path(path)
    if not path.exists():
        raise CacheError(f"cache {path} does not exist (build it with `umt-cache build`)")
    try:
        group = zarr.open_group(str(path), mode="r+")
    except Exception as err:  # zarr raises several types for a non-group path
        raise CacheError(f"{path} is not a Zarr cache: {err}") from err
    found = group.attrs.get("format")
    if found not in READABLE:
        if str(found).startswith("umt-cache/"):
            raise CacheError(f"cache {path} has format {found}, this umt reads {' and '.join(READABLE)}: its "
                             "views were drawn or cut another way (before /4, crops were never resized), so its "
                             "features belong to other crops; rebuild it with `umt-cache build`")
        raise CacheError(f"{path} is not a umt cache (format {found!r})")
    return group


def missing_shards(group: zarr.Group) -> list[str]:
    done = group["done"][:]
    return [name for name, ok in zip(group.attrs["shards"], done) if not ok]


def check(group: zarr.Group, path: str | Path, data_fingerprint: str | None = None,
          teacher_fingerprints: dict[str, str] | None = None) -> None:
    """Fail with a message naming the problem and the fix when a cache must not be used."""
    attrs = group.attrs
    if data_fingerprint is not None and attrs["data_fingerprint"] != data_fingerprint:
        raise CacheError(f"cache {path} was built from other data (manifest fingerprint "
                         f"{attrs['data_fingerprint'][:19]}…, this data has {data_fingerprint[:19]}…); "
                         "rebuild it with `umt-cache build` on this data")
    for m, fp in (teacher_fingerprints or {}).items():
        cached = attrs["teachers"].get(m, {}).get("fingerprint")
        if cached != fp:
            raise CacheError(f"cache {path} holds {m} features of other teachers (fingerprint "
                             f"{str(cached)[:19]}…, the given {m} teacher has {fp[:19]}…); "
                             "rebuild it with `umt-cache build` from these teachers")
    missing = missing_shards(group)
    if missing:
        raise CacheError(f"cache {path} is incomplete: {len(missing)} shard(s) unfinished "
                         f"({', '.join(missing[:3])}{'…' if len(missing) > 3 else ''}); "
                         "rerun `umt-cache build` with the same arguments to finish it")


def summary(group: zarr.Group, path: str | Path) -> str:
    """Human-readable description for `umt-cache info`."""
    a = group.attrs
    done = group["done"][:]
    lines = [f"cache          {path}",
             f"format         {a['format']}",
             f"split          {a['split']}  ({a['num_samples']} samples x {a['num_views']} views, seed {a['seed']})",
             f"shards         {int(done.sum())}/{len(done)} complete",
             f"data           {a['data_dir']}  {a['data_fingerprint']}",
             f"view spec      {a['view_spec']}"]
    for m, t in a["teachers"].items():
        arr = group[f"features/{m}"]
        lines.append(f"features/{m:<6} {arr.dtype} {arr.shape}  teacher {t['checkpoint']}  {t['fingerprint']}")
        if f"logits/{m}" in group:
            lines.append(f"logits/{m:<8} {group[f'logits/{m}'].dtype} {group[f'logits/{m}'].shape}")
    widths = [group[f"{kind}/{m}"].shape[-1] for kind in KINDS for m in a["teachers"] if f"{kind}/{m}" in group]
    raw = payload_bytes(a["num_samples"], a["num_views"], widths)
    disk = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    lines.append(f"size           {size_text(raw)} of float16 features and logits uncompressed, "
                 f"{size_text(disk)} on disk (every array, compressed)")
    return "\n".join(lines)
