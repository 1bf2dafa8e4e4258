"""How umt's own costs grow with the samples N (10^3..10^6) and the ranks W (1..256), and the Kinetics plans.

Nothing here decodes video: what grows with N and W is bookkeeping, so samples are manifest entries,
plan rows and tiny cache vectors; ranks are simulated in this process (each rank's work is a pure
function of the global facts, loaders/loading/plan.py). Per-clip pack and build costs come from the
measurements `loaders/making/costs.py` cites. Memory: tracemalloc's peak (Python and numpy
allocations) for the manifest, plan, checkpoint and bookkeeping; for the cache, the bytes the reader
holds (its tables, or its streamed shard blocks at most), with the process's RSS growth beside them.

    python benchmarks/scale.py --out benchmarks/results/scale_cpu.json --png docs/scale_cpu.png
"""
from __future__ import annotations

import argparse
import math
import tempfile
import threading
import time
import tracemalloc
from dataclasses import asdict
from pathlib import Path

import numpy as np
import psutil
import torch

from umt.loaders.stored import cache_store as store
from umt.cache.plan import cache_plan
from umt.loaders.stored.cache_reader import FeatureTable
from umt.engine import resume
from umt.engine.config import TrainConfig
from umt.engine.train import LoopState
from umt.loaders.loading.plan import plan_epoch
from umt.loaders.making.costs import (BUILD_CORE_S_PER_CLIP, PACK_CORE_S_PER_SOURCE_S, SHARD_BYTES_PER_S, Cluster,
                                     pack_plan)
from umt.loaders.making.pack import STATE, load_state, record_shard
from umt.loaders.stored.shards import FORMAT, load_manifest, with_offsets, write_manifest

from common import write_json

SHARD = 256          # a video pack's shard size (`umt-data pack` default)
CACHE_SHARD = 4096   # a vector pack's (`umt-data pack-arrays` default): the cache curves' Zarr shards
DATASETS = {"kinetics400": (240_000, 400), "kinetics700": (545_000, 700)}


def measured(fn, repeats: int = 3):
    """(result, seconds, tracemalloc peak bytes) of fn(): the peak of Python and numpy allocations in
    one traced run; the seconds the least of `repeats` untraced runs (tracing slows allocation-heavy
    code several fold), fewer when a run takes over a second."""
    tracemalloc.start()
    result = fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    times = []
    while len(times) < repeats and sum(times) < 1:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return result, round(min(times), 5), peak


def measured_rss(fn):
    """(result, seconds, peak resident-set growth in bytes) of fn(), sampled every 2 ms: for zarr and
    torch, whose many small allocations tracemalloc would slow fivefold."""
    process, peak, stop = psutil.Process(), [0], threading.Event()
    base = process.memory_info().rss

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss - base)
            time.sleep(0.002)
    watcher = threading.Thread(target=sample)
    watcher.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    stop.set()
    watcher.join()
    return result, round(seconds, 4), max(peak[0], process.memory_info().rss - base)


def counts(n: int, shard: int = SHARD) -> list[int]:
    return [shard] * (n // shard) + ([n % shard] if n % shard else [])


def manifest_point(work: Path, n: int) -> dict:
    shards = [{"name": f"train-{i:06d}.tar", "count": c, "bytes": c * 460_000, "sha256": f"{i:064x}"}
              for i, c in enumerate(counts(n))]
    manifest = {"format": FORMAT, "classes": [str(c) for c in range(400)], "modalities": {},
                "splits": {"train": {"num_samples": n, "shards": with_offsets(shards)}}, "source": {}, "rejected": []}
    _, write_s, write_peak = measured(lambda: write_manifest(work, manifest))
    _, load_s, load_peak = measured(lambda: load_manifest(work))
    return {"n": n, "write_s": write_s, "write_peak": write_peak, "load_s": load_s, "load_peak": load_peak,
            "bytes": (work / "manifest.json").stat().st_size}


def plan_point(n: int, world: int, batch: int = 4) -> dict:
    """Rank 0's plan on `world` ranks, and on resume at mid-epoch on another number of ranks (elastic)."""
    c = counts(n)
    plan, s, peak = measured(lambda: plan_epoch(c, 0, 0, 0, world, batch, True))
    other = world * 2 if world == 1 else world // 2
    glob = world * batch
    mid = len(plan) // 2
    resumed, rs, rpeak = measured(lambda: plan_epoch(c, 0, 0, 0, other, glob // other, True, start=mid, streams=world))
    full = np.concatenate([plan_epoch(c, 0, 0, r, other, glob // other, True, streams=world).rows
                           for r in range(other)]) if n * world <= 4e6 else None
    if full is not None:  # the resumed ranks read the rest of the same global batches: nothing twice, nothing lost
        assert len(np.unique(full)) == len(full)
    return {"n": n, "world": world, "plan_s": s, "plan_peak": peak, "rows": len(plan.rows),
            "resume_world": other, "resume_s": rs, "resume_peak": rpeak}


def checkpoint_point(work: Path, n: int) -> dict:
    """A loop checkpoint's bytes (a fixed small model): the loop state holds no per-sample data."""
    cfg = TrainConfig(data="", out=str(work))
    model = torch.nn.Linear(64, 400)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    state = LoopState(epoch=1, batch=n // 64, step=n // 64, global_batch=64, streams=8, world=8, samples=n)
    _, s, peak = measured(lambda: resume.save(work, cfg, model, opt, sched, asdict(state)))
    return {"n": n, "bytes": resume.checkpoint_path(work).stat().st_size, "save_s": s, "save_peak": peak}


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class CountingTable(FeatureTable):
    """The reader, counting the bytes it reads from the Zarr store (shard blocks loaded) and the most it
    holds at once."""
    read = held = 0

    def _block(self, shard: int):
        fresh = shard not in self._blocks
        block = super()._block(shard)
        if fresh:
            self.read += tensor_bytes(block.values())
            self.held = max(self.held, sum(tensor_bytes(b.values()) for b in self._blocks.values()))
        return block


def _cache_layout(n: int, dim: int = 8, views: int = 2) -> tuple[dict, list[dict]]:
    shards = [{"name": f"train-{i:06d}.tar", "count": c} for i, c in enumerate(counts(n, CACHE_SHARD))]
    attrs = {"format": store.FORMAT, "split": "train", "num_samples": n, "num_views": views, "seed": 0,
             "teachers": {"video": {"dim": dim}, "audio": {"dim": dim}}, "shards": [s["name"] for s in shards]}
    return attrs, shards


def make_cache(path: Path, n: int, dim: int = 8, views: int = 2) -> None:
    """A finished cache of random features, written shard by shard as `umt-cache build` writes."""
    attrs, shards = _cache_layout(n, dim, views)
    group = store.create(path, attrs, {"video": dim, "audio": dim}, shards, {})
    rng = np.random.default_rng(0)
    for i, s in enumerate(shards):
        lo = i * CACHE_SHARD
        for m in ("video", "audio"):
            values = rng.standard_normal((s["count"], views, dim)).astype(np.float16)
            group[f"features/{m}"][lo:lo + s["count"]] = values
        group["done"][i] = 1


def cache_build_point(path: Path, n: int) -> dict:
    """The build's own bookkeeping: creating (or reopening, as a resumed build does) the store, and
    finding its unfinished shards."""
    attrs, shards = _cache_layout(n)
    _, create_s, create_peak = measured(lambda: store.create(path, attrs, {"video": 8, "audio": 8}, shards, {}))
    _, missing_s, missing_peak = measured(lambda: store.missing_shards(store.open_group(path)))
    return {"create_s": create_s, "create_peak": create_peak, "missing_s": missing_s, "missing_peak": missing_peak,
            "attrs_bytes": (path / "zarr.json").stat().st_size}


def cache_point(work: Path, n: int, worlds: list[int], batch: int = 32) -> list[dict]:
    """A cache of n samples (two 8-d teachers, 2 views): its disk, a rank's memory holding it whole, and,
    streamed, rank 0's memory and bytes read over an epoch in its plan's order on each of `worlds`."""
    path = work / f"cache{n}.zarr"
    if not path.exists():
        make_cache(path, n)
    build = cache_build_point(path, n)
    group = store.open_group(path)
    disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    table, load_s, resident_rss = measured_rss(lambda: FeatureTable(group, torch.device("cpu"), 1 << 40))
    nbytes, resident = table.nbytes, tensor_bytes(table.tables.values())
    del table
    points = []
    for world in worlds:
        def epoch():
            reader = CountingTable(group, torch.device("cpu"), 0)
            plan = plan_epoch(counts(n, CACHE_SHARD), 0, 0, 0, world, batch, True)
            for rows in plan.batches():
                reader.gather(torch.from_numpy(rows), torch.zeros(len(rows), dtype=torch.long))
            return reader.read, reader.held
        (read, held), s, peak = measured_rss(epoch)
        points.append({"n": n, "world": world, "disk_bytes": disk, "read_bytes_total": nbytes,
                       "resident_bytes": resident, "resident_rss": resident_rss, "resident_load_s": load_s,
                       "streamed_held_peak": held, "streamed_rss": peak, "streamed_epoch_s": s,
                       "streamed_read_bytes": read, "read_amplification": round(read / (nbytes / world), 3),
                       **build})
    return points


def pack_state_point(work: Path, n: int) -> dict:
    """The pack's bookkeeping over a whole pack of n clips: a state line per shard, then a resume's load."""
    out = work / f"state{n}"
    out.mkdir()
    entry = {"name": None, "count": SHARD, "bytes": 0, "sha256": "0" * 64, "rejected": [], "flags": {}, "seconds": 0.0}

    def whole_pack():
        (out / STATE).unlink(missing_ok=True)
        state = load_state(out, "f")
        for i in range(len(counts(n))):
            record_shard(out, state, "train", {**entry, "consumed": (i + 1) * SHARD})
    _, s, peak = measured(whole_pack)
    _, load_s, load_peak = measured(lambda: load_state(out, "f"))
    return {"n": n, "record_s": s, "record_peak": peak, "load_s": load_s, "load_peak": load_peak,
            "bytes": sum(f.stat().st_size for f in out.iterdir())}


def slope(xs: list[float], ys: list[float]) -> float | None:
    """log-log slope over the two largest points (None when a value is 0: nothing grows)."""
    (x0, y0), (x1, y1) = sorted(zip(xs, ys))[-2:]
    if min(y0, y1) <= 0 or x0 == x1:
        return None
    return round(math.log(y1 / y0) / math.log(x1 / x0), 3)


def curves(results: dict) -> dict[str, tuple[list, list]]:
    """Every (x, y) curve the summary judges, named `<figure>_vs_<N|W>`."""
    figures = {"manifest": ("manifest_{}", "n", ("write_s", "write_peak", "load_s", "load_peak", "bytes")),
               "plan_vs_n": ("{}", "n", ("plan_s", "plan_peak", "resume_s", "resume_peak")),
               "plan_vs_world": ("{}", "world", ("plan_s", "plan_peak", "resume_s", "resume_peak")),
               "checkpoint": ("checkpoint_{}", "n", ("bytes",)),
               "cache_vs_n": ("cache_{}", "n", ("disk_bytes", "resident_bytes", "resident_load_s", "streamed_held_peak",
                                                "streamed_read_bytes", "create_s", "create_peak", "missing_s",
                                                "attrs_bytes")),
               "cache_vs_world": ("cache_{}", "world", ("streamed_held_peak", "streamed_read_bytes", "streamed_epoch_s")),
               "pack_state": ("pack_state_{}", "n", ("record_s", "record_peak", "load_s", "bytes"))}
    return {f"{name.format(key)}_vs_{x[0].upper()}": ([p[x] for p in results[group]], [p[key] for p in results[group]])
            for group, (name, x, keys) in figures.items() for key in keys}


def extrapolate(results: dict, clips: int, classes: int, cluster: Cluster) -> dict:
    """A dataset's plan: the cost model's disk and hours, and each rank's memory from the measured curves."""
    largest = max(results["plan_vs_n"], key=lambda p: p["n"])
    manifest = max(results["manifest"], key=lambda p: p["n"])
    per_sample = {"plan": largest["plan_peak"] / largest["n"], "manifest": manifest["load_peak"] / manifest["n"]}
    cache = cache_plan(clips, classes, cluster)
    pack = pack_plan(clips, Cluster(1, 1, 100))
    return {"clips": clips, "classes": classes, "cluster": asdict(cluster),
            "shards_gib": round(pack["shard_bytes"] / 2**30, 1), "cache_gib": round(cache["disk_bytes"] / 2**30, 2),
            "cache_streamed": cache["streamed"],
            "memory_per_rank_gib": {"cache": round(cache["rank_bytes"] / 2**30, 3),
                                    "epoch_plan": round(per_sample["plan"] * clips / 2**30, 4),
                                    "manifest": round(per_sample["manifest"] * clips / 2**30, 4)},
            "pack_hours_per_100_cores": {s: pack_plan(clips, Cluster(1, 1, 100), s)["hours"]
                                         for s in PACK_CORE_S_PER_SOURCE_S},
            "build_hours_per_100_cores": cache["build_hours"] if cluster.cores_per_node == 100 else None,
            "per_clip_costs": {"pack_core_s_per_source_s": PACK_CORE_S_PER_SOURCE_S,
                               "shard_bytes_per_s": SHARD_BYTES_PER_S, "build_core_s_per_clip": BUILD_CORE_S_PER_CLIP,
                               "source": "umt/loaders/making/costs.py (measured: loader_cpu_realistic.json, "
                                         "cost_curves_cpu.json, RESULTS.md issues 14 and 31)"},
            "assumes": "10 s clips, short side 256, 4 cached views, two 512-d teachers, features read, "
                       "cache_budget_gb 8, per-rank memory from the N-curves' largest points"}


def plot(curve: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    timed = lambda k: k.split("_vs_")[0].endswith("_s")  # noqa: E731
    groups = {f"vs {x}: {what}": [k for k in curve if k.endswith(f"_vs_{x}") and timed(k) == (what == "seconds")]
              for x in "NW" for what in ("seconds", "bytes")}
    fig, axes = plt.subplots(1, 4, figsize=(22, 5.5))
    for ax, (title, names) in zip(axes, groups.items()):
        for name in names:
            xs, ys = curve[name]
            ax.loglog(xs, [max(y, 1e-6) for y in ys], marker="o", label=name.rsplit("_vs_", 1)[0])
        ax.set_title(title)
        ax.set_xlabel("W ranks" if title.startswith("vs W") else "N samples")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--png", help="write the curves here")
    parser.add_argument("--max-n", type=int, default=10**6)
    parser.add_argument("--worlds", default="1,4,16,64,256")
    parser.add_argument("--ranks-per-node", type=int, default=8, help="the Kinetics plans' GPUs per node")
    parser.add_argument("--nodes", type=int, default=8, help="the Kinetics plans' nodes")
    args = parser.parse_args()
    ns = [10**k for k in range(3, int(round(math.log10(args.max_n))) + 1)]
    worlds = [int(w) for w in args.worlds.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results["manifest"] = [manifest_point(work, n) for n in ns]
        results["plan_vs_n"] = [plan_point(n, 8) for n in ns]
        results["plan_vs_world"] = [plan_point(ns[-1], w) for w in worlds]
        results["checkpoint"] = [checkpoint_point(work / f"ckpt{n}", n) for n in ns]
        results["cache_vs_n"] = [cache_point(work, n, [8])[0] for n in ns]
        results["cache_vs_world"] = cache_point(work, ns[-1], worlds)
        results["pack_state"] = [pack_state_point(work, n) for n in ns]
    curve = curves(results)
    slopes = {name: slope(*xy) for name, xy in curve.items()}
    worst = max((s, n) for n, s in slopes.items() if s is not None)
    sizes = max((s, n) for n, s in slopes.items() if s is not None and not n.split("_vs_")[0].endswith("_s"))
    cluster = Cluster(args.nodes, args.ranks_per_node, 100)
    report = {"summary": {"max_n": ns[-1], "max_world": max(worlds),
                          "worst_exponent": worst[0], "worst_curve": worst[1],
                          # bytes and memory only: what timings of milliseconds on a shared machine leave out
                          "worst_bytes_exponent": sizes[0], "worst_bytes_curve": sizes[1], "slopes": slopes},
              "extrapolated": {name: extrapolate(results, clips, classes, cluster)
                               for name, (clips, classes) in DATASETS.items()},
              "results": results}
    write_json(args.out, report)
    if args.png:
        plot(curve, Path(args.png))
    print(f"worst exponent {worst[0]} ({worst[1]}); max N {ns[-1]}, max W {max(worlds)}")
    for name, plan in report["extrapolated"].items():
        print(f"{name}: {plan['shards_gib']} GiB shards, {plan['cache_gib']} GiB cache, "
              f"{'streamed' if plan['cache_streamed'] else 'held whole'}")


if __name__ == "__main__":
    main()
