"""`umt-cache verify`: is this cache complete, finite, and what these teachers give on this data?

Checks, each reported on its own line: every shard marked done; the data fingerprint; the teacher
fingerprints (against the checkpoints recorded in the cache, or the ones given); no NaN or Inf in any
feature or logit (read shard by shard); and, with --recompute K, K random (row, view) pairs recomputed
online (features, and logits where the cache holds them), compared within float16 rounding. The last line is `max_abs_diff=<float>` when recomputing.
"""
from __future__ import annotations

import json
from typing import Iterator

import numpy as np
import torch
import webdataset as wds

from umt.engine.checkpoint import load_teacher_models
from umt.loaders.errors import UserError
from umt.loaders.loading.loader import make_loader
from umt.loaders.loading.pipeline import decode_views
from umt.loaders.stored.shards import is_image_set, load_manifest, locate, manifest_fingerprint
from umt.loaders.stored.views import ViewPolicy, ViewSpec

from umt.loaders.stored import cache_store as store


def verify(path: str, data_dir: str, recompute: int = 0, teachers: dict[str, str] | None = None,
           seed: int = 0) -> tuple[bool, list[str]]:
    """(all checks passed, report lines)."""
    group = store.open_group(path)
    attrs = group.attrs
    lines: list[str] = []

    def report(ok: bool, what: str) -> bool:
        lines.append(f"{'ok  ' if ok else 'FAIL'} {what}")
        return ok

    missing = store.missing_shards(group)
    ok = report(not missing, f"completeness: {len(attrs['shards']) - len(missing)}/{len(attrs['shards'])} shards done"
                + (f", unfinished: {', '.join(missing[:5])}" if missing else ""))
    data_fp = manifest_fingerprint(data_dir)
    ok &= report(data_fp == attrs["data_fingerprint"], f"data fingerprint {data_fp[:23]}…"
                 + ("" if data_fp == attrs["data_fingerprint"] else f" ≠ cache's {attrs['data_fingerprint'][:23]}…"))
    paths = teachers or {m: t["checkpoint"] for m, t in attrs["teachers"].items()}
    try:
        models, prints, _ = load_teacher_models(paths, torch.device("cpu"))
    except UserError as err:
        report(False, f"teachers: {err}")
        return False, lines
    for m, t in attrs["teachers"].items():
        same = prints.get(m) == t["fingerprint"]
        ok &= report(same, f"teacher {m}: {paths.get(m)} " + ("matches" if same else "is not the teacher this cache was built from"))
    ok &= _scan_finite(group, report)
    if recompute:
        diff, within = _recompute(group, data_dir, models, recompute, seed)
        ok &= report(within, f"recomputed {recompute} (row, view) pairs online: "
                     + ("equal within float16 rounding" if within else "DIFFER from the cache"))
        lines.append(f"max_abs_diff={diff:.6g}")
    return bool(ok), lines


def _scan_finite(group, report) -> bool:
    bad = {}
    for name in _arrays(group):
        arr = group[name]
        for lo in range(0, arr.shape[0], arr.shards[0]):
            rows = ~np.isfinite(arr[lo:lo + arr.shards[0]]).all(axis=(1, 2))
            if rows.any():
                bad.setdefault(name, []).extend((lo + np.flatnonzero(rows)).tolist())
    return report(not bad, "finite: no NaN or Inf" if not bad else
                  "finite: NaN/Inf in " + "; ".join(f"{m} rows {r[:5]}{'…' if len(r) > 5 else ''} ({len(r)})" for m, r in bad.items()))


def _arrays(group) -> list[str]:
    """The cache's kind/modality arrays."""
    return [f"{kind}/{m}" for kind in store.KINDS for m in group.attrs["teachers"]]


def _recompute(group, data_dir: str, models: dict, k: int, seed: int) -> tuple[float, bool]:
    """Recompute k random (row, view) pairs; (largest |cached − online|, all within rounding)."""
    attrs = group.attrs
    rng = np.random.default_rng(seed)
    rows = rng.choice(attrs["num_samples"], size=min(k, attrs["num_samples"]), replace=False)
    views = rng.integers(0, attrs["num_views"], size=len(rows))
    wanted = dict(zip(rows.tolist(), views.tolist()))
    worst, within = 0.0, True
    with torch.no_grad():
        for item_row, view, item in _views_of(group, data_dir, sorted(models), wanted):
            online = {}
            for m, model in models.items():
                online[f"features/{m}"] = model.encoders[m](item[m][None])
                online[f"logits/{m}"] = model.fuse({m: online[f"features/{m}"]})
            for name in _arrays(group):
                cached = torch.from_numpy(group[name][item_row, view].astype(np.float32))
                diff = (cached - online[name][0].float()).abs()
                worst = max(worst, float(diff.max())) if torch.isfinite(diff).all() else float("nan")
                within &= bool((diff <= online[name][0].abs() * 2 ** -11 + 1e-3).all())
    return worst, within


def _views_of(group, data_dir: str, modalities: list[str], wanted: dict[int, int]) -> Iterator[tuple[int, int, dict]]:
    """(row, view, decoded inputs) of each wanted row's view, read the way the builder read it."""
    attrs = group.attrs
    spec = ViewSpec.of(attrs["view_spec"])
    if is_image_set(load_manifest(data_dir)):
        for view in sorted(set(wanted.values())):
            for batch in make_loader(data_dir, attrs["split"], spec=spec, modalities=modalities,
                                     policy=ViewPolicy(attrs["seed"], view=view), batch_size=64):
                for i, row in enumerate(batch["row"].tolist()):
                    if wanted.get(row) == view:
                        yield row, view, {m: batch[m][i] for m in modalities}
        return
    shard_rows = group["views"].shards[0]
    urls = [locate(data_dir, attrs["shards"][s]) for s in sorted({r // shard_rows for r in wanted})]
    for sample in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()):
        row = json.loads(sample["json"])["row"]
        if row in wanted:
            yield row, wanted[row], decode_views(sample, spec, modalities, attrs["seed"], [wanted[row]])[0]
