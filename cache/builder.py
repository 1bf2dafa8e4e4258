"""`umt-cache build`: run frozen uni-modal teachers once over every (training row, view), storing
each teacher's feature and its classifier's logits on that feature.

Work is divided by whole data shards: rank r of W owns shards r, r+W, ...; each finished shard is
written in one piece and then marked done, so a rerun computes only unfinished shards. Batches
never straddle two shards, so a shard's features come from the same batches whichever rank builds
it and whether or not the build was interrupted: resumed and multi-process builds equal a plain one
bit for bit. Teachers run in eval mode (BatchNorm running statistics), so a feature (and its
logits) is a pure function of the weights and the view, and the online teacher of `umt-train --method umt
--teacher ...` gives the same value.

Where the teachers run: on a GPU, in the main process, fed by the decoding workers. On a CPU, inside the decoding
workers, one thread each and (by default) one worker a core: each decodes a batch and runs it through the teachers
itself. One single-thread forward a core outpaces one process's multi-thread forward (no barrier between threads), and
the decode no longer takes a core from under a multi-thread forward, stalling its other thread
(benchmarks/RESULTS.md, "The cache build's forward in its workers").
"""
from __future__ import annotations

import functools
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm import tqdm

from umt.engine.checkpoint import load_teacher_models
from umt.engine.models import LateFusionNet
from umt.loaders.loading.loader import make_loader
from umt.loaders.loading.pipeline import collate, decode_views, shard_loader
from umt.loaders.stored.integrity import damaged_shards
from umt.loaders.stored.shards import is_image_set, is_remote, load_manifest, locate, manifest_fingerprint, split_shards
from umt.loaders.stored.views import VIEW_FIELDS, ViewPolicy, ViewSpec

from umt.loaders.stored import cache_store as store


class ShardViews:
    """Picklable map stage: one raw sample → all V of its views, stacked, plus where it came from."""

    def __init__(self, spec: ViewSpec, modalities: list[str], seed: int, num_views: int):
        self.spec, self.modalities, self.seed, self.views = spec, modalities, seed, list(range(num_views))

    def __call__(self, sample: dict) -> dict:
        items = decode_views(sample, self.spec, self.modalities, self.seed, self.views)
        out = {k: torch.stack([it[k] for it in items]) for k in [*self.modalities, "params"]}
        out.update(row=items[0]["row"], key=sample["__key__"], __url__=sample["__url__"])
        return out


class TeacherForward:
    """Picklable batch stage: a batch of every view of its clips → the teachers' float16 features and logits
    ({KIND}/{modality}, store.KINDS) with the rows, keys and view params; the decoded views are dropped."""

    def __init__(self, models: dict[str, LateFusionNet], device: torch.device):
        self.models, self.device = models, device

    def __call__(self, batch: dict) -> dict:
        part = {"row": batch["row"].numpy(), "key": batch["key"], "params": batch["params"].numpy()}
        with torch.no_grad():
            for m, model in self.models.items():
                part.update(zip((f"{kind}/{m}" for kind in store.KINDS),
                                _teacher_outputs(model, m, batch[m].to(self.device))))
        return part


def default_workers(device: torch.device) -> int:
    """`--workers` left out: on a CPU one a core of this process's share of the machine (the teachers run in them),
    on a GPU one decoding worker."""
    if device.type != "cpu":
        return 1
    return max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def batched_by_shard(samples: Iterator[dict], batch_size: int) -> Iterator[dict]:
    """Batches that never mix two shards, so batch composition depends on the shard alone."""
    batch: list[dict] = []
    for sample in samples:
        if batch and (len(batch) == batch_size or sample["__url__"] != batch[0]["__url__"]):
            yield collate(batch)
            batch = []
        batch.append(sample)
    if batch:
        yield collate(batch)


def build(data_dir: str, teachers: dict[str, str], out: str, num_views: int, seed: int = 0,
          split: str = "train", batch_size: int = 32, num_workers: int | None = None, progress: bool = True) -> Path:
    state = PartialState(cpu=not torch.cuda.is_available())
    num_workers = default_workers(state.device) if num_workers is None else num_workers
    manifest = load_manifest(data_dir)
    shards = split_shards(manifest, split)
    models, prints, spec = load_teacher_models(teachers, state.device)
    modalities = sorted(models)
    dims = {m: models[m].encoders[m].out_dim for m in modalities}
    classes = len(manifest["classes"])
    for m, model in models.items():
        if model.cfg.num_classes != classes:
            raise store.CacheError(f"teacher {teachers[m]} classifies {model.cfg.num_classes} classes, "
                                   f"{data_dir} has {classes}: it was not trained on this data")
    attrs = {"format": store.FORMAT, "split": split, "num_samples": sum(s["count"] for s in shards),
             "num_views": num_views, "seed": seed, "view_spec": spec.to_dict(),
             "data_dir": str(data_dir) if is_remote(data_dir) else str(Path(data_dir).resolve()), "data_fingerprint": manifest_fingerprint(data_dir),
             "teachers": {m: {"fingerprint": prints[m], "checkpoint": str(Path(teachers[m]).resolve()),
                              "dim": dims[m]} for m in modalities},
             "shards": [s["name"] for s in shards]}
    if state.is_main_process:
        size = store.payload_bytes(attrs["num_samples"], num_views, [d + classes for d in dims.values()])
        print(f"umt-cache: {attrs['num_samples']} samples x {num_views} views of {modalities} "
              f"→ {store.size_text(size)} of float16 features and logits uncompressed in {out} "
              "(on disk: compressed, plus the views and keys; `umt-cache info` shows both)")
        if not Path(out).exists():
            _check_room(Path(out), size)
        store.create(out, attrs, dims, shards, {"torch": torch.__version__, "processes": state.num_processes,
                                                "device": str(state.device), "started": time.time()}, classes)
    state.wait_for_everyone()
    group = store.open_group(out)
    done = group["done"][:]
    mine = [i for i in range(len(shards)) if i % state.num_processes == state.process_index and not done[i]]
    todo = sum(shards[i]["count"] for i in mine)
    if state.is_main_process:
        print(f"umt-cache: {len(shards) - int(done.sum())} of {len(shards)} shards to compute")
    damaged = gather_object(damaged_shards(data_dir, [shards[i] for i in mine]))  # every rank stops alike
    if damaged:
        raise store.CacheError(f"{data_dir}: damaged shard(s), nothing computed for them: "
                               + "; ".join(map(str, damaged)) + " — restore them from the source (or re-pack) "
                               "and rerun: finished shards are kept")
    offsets = np.array([s["offset"] for s in shards])
    pending: dict[int, list[dict]] = {}
    start = time.perf_counter()
    if is_image_set(manifest):  # one shard per split, one pass per view
        with torch.no_grad(), tqdm(total=todo * num_views, unit="image", desc="cache", disable=not progress) as bar:
            for i in mine:
                parts = _image_set_features(data_dir, split, shards[i], models, classes, spec, seed, num_views, batch_size,
                                            num_workers, state.device, bar)
                _write_shard(group, i, shards[i], [parts], modalities)
        state.wait_for_everyone()
        return Path(out)
    paths = [locate(data_dir, shards[i]["name"]) for i in mine]
    forward = TeacherForward(models, state.device)
    in_workers = state.device.type == "cpu" and num_workers > 0  # the module docstring says why
    loader = shard_loader(paths, ShardViews(spec, modalities, seed, num_views),
                          functools.partial(batched_by_shard, batch_size=batch_size), num_workers,
                          *([forward] if in_workers else [])) if paths else []
    with tqdm(total=todo, unit="clip", desc=f"cache[rank {state.process_index}]", disable=not progress) as bar:
        for batch in loader:  # nothing left for this rank (a finished cache rebuilt, or more ranks than shards)
            part = batch if in_workers else forward(batch)
            shard = int(np.searchsorted(offsets, int(part["row"][0]), side="right") - 1)
            pending.setdefault(shard, []).append(part)
            if sum(len(p["row"]) for p in pending[shard]) == shards[shard]["count"]:
                _write_shard(group, shard, shards[shard], pending.pop(shard), modalities)
            bar.update(len(part["row"]))
    if pending:
        raise store.CacheError(f"shards {[shards[i]['name'] for i in pending]} ended short of their "
                               "manifest counts: the data changed since the manifest was written")
    state.wait_for_everyone()
    if state.is_main_process and todo:
        print(f"umt-cache: rank 0 computed {todo} clips in {time.perf_counter() - start:.1f} s")
    return Path(out)


def _image_set_features(data_dir: str, split: str, shard: dict, models: dict, classes: int, spec: ViewSpec,
                        seed: int, num_views: int, batch_size: int, num_workers: int, device: torch.device,
                        bar) -> dict:
    """Every (row, view) of an image split through the teachers: V in-order passes of its ffcv loader."""
    count, modalities = shard["count"], sorted(models)
    parts = {"row": np.arange(count), "key": np.array([f"{split}_{r:07d}" for r in range(count)]),
             "params": np.zeros((count, num_views, len(VIEW_FIELDS)), np.int32)}
    for m in modalities:
        for kind, width in zip(store.KINDS, (models[m].encoders[m].out_dim, classes)):
            parts[f"{kind}/{m}"] = np.zeros((count, num_views, width), np.float16)
    for view in range(num_views):
        for batch in make_loader(data_dir, split, spec=spec, modalities=modalities, policy=ViewPolicy(seed, view=view),
                                 batch_size=batch_size, num_workers=num_workers):
            rows = batch["row"].numpy()
            parts["params"][rows, view] = batch["params"].numpy()
            for m in modalities:
                for kind, value in zip(store.KINDS, _teacher_outputs(models[m], m, batch[m][:, None].to(device))):
                    parts[f"{kind}/{m}"][rows, view] = value[:, 0]
            bar.update(len(rows))
    return parts


def _check_room(out: Path, size: int) -> None:
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if free < size * 1.1 + 2**20:
        raise store.CacheError(f"{parent} has {free / 2**20:.0f} MiB free, the cache needs about "
                               f"{size * 1.1 / 2**20:.0f} MiB; free space or choose another --out")


def _teacher_outputs(teacher: LateFusionNet, modality: str, views: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """[B, V, ...] inputs → [B, V, D] float16 features and [B, V, C] float16 logits (in store.KINDS order)."""
    b, v = views.shape[:2]
    feats = teacher.encoders[modality](views.flatten(0, 1))
    logits = teacher.fuse({modality: feats})
    return tuple(t.view(b, v, -1).to(torch.float16).cpu().numpy() for t in (feats, logits))


def _write_shard(group, index: int, shard: dict, parts: list[dict], modalities: list[str]) -> None:
    """Write one data shard's rows in one piece, then mark it done (the resume point)."""
    rows = np.concatenate([p["row"] for p in parts]) - shard["offset"]
    order = np.argsort(rows)
    if not np.array_equal(rows[order], np.arange(shard["count"])):
        raise store.CacheError(f"{shard['name']}: rows {sorted(set(range(shard['count'])) - set(rows.tolist()))[:5]} "
                               "missing or repeated; the shard does not match the manifest")
    lo, hi = shard["offset"], shard["offset"] + shard["count"]
    for name in (f"{kind}/{m}" for kind in store.KINDS for m in modalities):
        group[name][lo:hi] = np.concatenate([p[name] for p in parts])[order]
    group["views"][lo:hi] = np.concatenate([p["params"] for p in parts])[order]
    group["keys"][lo:hi] = np.array([k for p in parts for k in p["key"]])[order]
    group["done"][index] = 1
