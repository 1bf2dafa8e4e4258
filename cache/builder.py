"""`umt-cache build`: run frozen uni-modal teachers once over every (training row, view).

Work is divided by whole data shards: rank r of W owns shards r, r+W, ...; each finished shard is
written in one piece and then marked done, so a rerun skips it. Teachers run in eval mode (BatchNorm
running statistics), so a feature is a pure function of the weights and the view, and the online
teacher of `umt-train --method umt --teacher ...` gives the same value.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from tqdm import tqdm

from umt.engine.checkpoint import fingerprint, load_model
from umt.loaders.pipeline import batch_loader, decode_views
from umt.loaders.shards import load_manifest, manifest_fingerprint, split_shards
from umt.loaders.views import ViewSpec

from . import store


def load_teachers(paths: dict[str, str], device: torch.device) -> tuple[dict, dict, ViewSpec]:
    """Frozen eval-mode teacher encoders, their fingerprints, and the view spec they were trained on."""
    encoders, prints, specs = {}, {}, set()
    for m, path in sorted(paths.items()):
        model, ckpt = load_model(path)
        if tuple(model.cfg.modalities) != (m,):
            raise store.CacheError(f"teacher {path} is a {'+'.join(model.cfg.modalities)} model, "
                                   f"not a uni-modal {m} model")
        encoders[m] = model.encoders[m].to(device).eval().requires_grad_(False)
        prints[m] = fingerprint(ckpt)
        specs.add(tuple(sorted(ckpt["view"].items())))
    if len(specs) != 1:
        raise store.CacheError(f"teachers {sorted(paths.values())} were trained on different view specs")
    return encoders, prints, ViewSpec(**dict(specs.pop()))


class _ShardViews:
    """Picklable map stage: one raw sample → all its views, stacked."""

    def __init__(self, spec: ViewSpec, modalities: list[str], seed: int, num_views: int):
        self.spec, self.modalities, self.seed, self.views = spec, modalities, seed, list(range(num_views))

    def __call__(self, sample: dict) -> dict:
        items = decode_views(sample, self.spec, self.modalities, self.seed, self.views)
        out = {k: torch.stack([it[k] for it in items]) for k in [*self.modalities, "params"]}
        out["row"] = items[0]["row"]
        return out


def build(data_dir: str, teachers: dict[str, str], out: str, num_views: int, seed: int = 0,
          split: str = "train", batch_size: int = 32, num_workers: int = 1, progress: bool = True) -> Path:
    state = PartialState(cpu=not torch.cuda.is_available())
    manifest = load_manifest(data_dir)
    shards = split_shards(manifest, split)
    encoders, prints, spec = load_teachers(teachers, state.device)
    modalities = sorted(encoders)
    attrs = {"format": store.FORMAT, "split": split, "num_samples": sum(s["count"] for s in shards),
             "num_views": num_views, "seed": seed, "view_spec": spec.to_dict(),
             "data_dir": str(Path(data_dir).resolve()), "data_fingerprint": manifest_fingerprint(data_dir),
             "teachers": {m: {"fingerprint": prints[m], "checkpoint": str(Path(teachers[m]).resolve()),
                              "dim": encoders[m].out_dim} for m in modalities},
             "shards": [s["name"] for s in shards]}
    if state.is_main_process:
        group = store.create(out, attrs, {m: encoders[m].out_dim for m in modalities}, shards)
    state.wait_for_everyone()
    group = store.open_group(out)
    done = group["done"][:]
    mine = [i for i in range(len(shards)) if i % state.num_processes == state.process_index and not done[i]]
    todo = sum(shards[i]["count"] for i in mine)
    if state.is_main_process:
        size = sum(attrs["num_samples"] * num_views * d * 2 for d in (encoders[m].out_dim for m in modalities))
        print(f"umt-cache: {attrs['num_samples']} samples x {num_views} views of {modalities} "
              f"→ {size / 2**20:.1f} MiB float16; {len(shards) - int(done.sum())} of {len(shards)} shards to do")
    offsets = np.array([s["offset"] for s in shards])
    buffers: dict[int, dict] = {}
    start = time.perf_counter()
    with torch.no_grad(), tqdm(total=todo, unit="clip", desc=f"cache[{state.process_index}]",
                               disable=not progress) as bar:
        paths = [str(Path(data_dir) / shards[i]["name"]) for i in mine]
        decode = _ShardViews(spec, modalities, seed, num_views)
        for batch in batch_loader(paths, decode, batch_size, num_workers, partial=True) if paths else []:
            feats = {m: _teacher_features(encoders[m], batch[m].to(state.device)) for m in modalities}
            for j, row in enumerate(batch["row"].tolist()):
                shard = int(np.searchsorted(offsets, row, side="right") - 1)
                buf = buffers.setdefault(shard, {"rows": {}})
                buf["rows"][row - offsets[shard]] = ({m: feats[m][j] for m in modalities}, batch["params"][j].numpy())
                if len(buf["rows"]) == shards[shard]["count"]:
                    _write_shard(group, shard, shards[shard], buffers.pop(shard)["rows"], modalities)
            bar.update(len(batch["row"]))
    if buffers:
        raise store.CacheError(f"shards {[shards[i]['name'] for i in buffers]} ended short of their "
                               "manifest counts: the data changed since the manifest was written")
    state.wait_for_everyone()
    if state.is_main_process and todo:
        print(f"umt-cache: {todo} clips in {time.perf_counter() - start:.1f} s on rank 0")
    return Path(out)


def _teacher_features(encoder: torch.nn.Module, views: torch.Tensor) -> np.ndarray:
    """[B, V, ...] inputs → [B, V, D] float16 features."""
    b, v = views.shape[:2]
    return encoder(views.flatten(0, 1)).view(b, v, -1).to(torch.float16).cpu().numpy()


def _write_shard(group, index: int, shard: dict, rows: dict, modalities: list[str]) -> None:
    """Write one data shard's rows in one piece, then mark it done (the resume point)."""
    order = sorted(rows)
    lo, hi = shard["offset"], shard["offset"] + shard["count"]
    for m in modalities:
        group[f"features/{m}"][lo:hi] = np.stack([rows[r][0][m] for r in order])
    group["views"][lo:hi] = np.stack([rows[r][1] for r in order])
    group["done"][index] = 1


