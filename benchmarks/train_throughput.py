"""Does cached UMT train at the speed of joint training? And what does building the cache cost?

Side by side, interleaved, in one process: training samples/s of `joint`, `umt` with online
teachers and `umt` with cached targets (same model, batch, data, loader, steps), medians over
repeats, at each of `--widths` (8: the CPU demo's; 64: ResNet-18's, where an online teacher costs what
the student does); students and teachers share the width. Each repeat runs every width's three
methods back to back, the order rotated; `ratio_cached_vs_joint_per_repeat` is the spread of the
ratio within repeats. Then, per width, the cache build's clips/s against the teachers' bare forward
throughput on the same clips, already decoded and in memory (build_overhead = 1 - build / bare), the bare forward
taken two ways: one process on torch's threads, and a single-thread forward on every core at once (per_core: the
bound of a build whose workers each run the teachers on one thread, as umt-cache build's do on a CPU).
`--profile` runs cProfile over one joint and one cached run at the largest width and lists the
functions whose own time per step differs most: where a gap between them goes. The defaults
(512 clips, 5 repeats, widths 8 and 64, three timed cache builds per width, each followed by a bare forward,
`build_overhead` the median of the three pairs) are sized to fit in 25 minutes
on 2 CPU cores; `seconds` in the JSON says where the time went. An untimed warm-up run per width
comes first: the first run in a process paid one-off loads (it ran at a twentieth of the others' speed). This
process and its forks allocate as the loader's workers do (pipeline.keep_freed_memory), so that a bound measured here
and a build whose forward runs in workers pay the same page faults.

    python benchmarks/train_throughput.py --profile --out benchmarks/results/train_throughput_cpu.json
"""
from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from umt.cache.builder import ShardViews, batched_by_shard, build
from umt.engine.checkpoint import load_teachers
from umt.engine.config import TrainConfig
from umt.engine.interleave import ratio_spread, rotated
from umt.engine.train import run
from umt.loaders.loading.pipeline import keep_freed_memory, shard_loader
from umt.loaders.making.synth import SynthConfig, write_synth
from umt.loaders.stored.shards import split_files
from umt.loaders.stored.views import ViewSpec

from common import median, torch_threads, write_json

VIEW = ViewSpec(frames=4, stride=2, crop=32, audio_seconds=1.0, mel_bins=40)
CORES = len(os.sched_getaffinity(0))


def decoded_batches(data: str, teachers: dict[str, str], views: int, batch_size: int) -> list[dict]:
    """Every training clip's V views, decoded as the cache build decodes them, in memory."""
    _, _, spec = load_teachers(teachers, torch.device("cpu"))
    decode = ShardViews(spec, sorted(teachers), 0, views)
    paths, _ = split_files(data, "train")
    return list(shard_loader(paths, decode, functools.partial(batched_by_shard, batch_size=batch_size), 0))


def bare_forward_clips_per_s(teachers: dict[str, str], batches: list[dict], threads: int | None = None) -> float:
    """Teachers' forward alone on decoded batches, in this process on `threads` threads (None: torch's default):
    the bound of a cache build."""
    encoders, _, _ = load_teachers(teachers, torch.device("cpu"))
    with torch_threads(threads), torch.no_grad():
        start = time.perf_counter()
        for batch in batches:
            for m, enc in encoders.items():
                enc(batch[m].flatten(0, 1)).to(torch.float16)
        seconds = time.perf_counter() - start
    return sum(len(b["row"]) for b in batches) / seconds


def bare_forward_per_core_clips_per_s(teachers: dict[str, str], batches: list[dict]) -> float:
    """A single-thread forward on every core at once (forked processes, each over every batch), summed: the bound of
    a build whose workers each run the teachers on one thread (cores that share caches or memory bandwidth, or are
    hyperthreads of one core, count as they are)."""
    fork = multiprocessing.get_context("fork")
    rates = fork.SimpleQueue()
    procs = [fork.Process(target=lambda: rates.put(bare_forward_clips_per_s(teachers, batches, threads=1)))
             for _ in range(CORES)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return sum(rates.get() for _ in procs)


def gap_profile(run_once, names: tuple[str, str], top: int = 12) -> list[dict]:
    """cProfile both runs; the functions whose own time differs most between them, seconds per step."""
    import cProfile
    import pstats
    own = {}
    for name in names:
        profiler = cProfile.Profile()
        steps = profiler.runcall(run_once, name)["steps"]
        stats = pstats.Stats(profiler).stats
        own[name] = {f"{Path(f).name}:{line}({fn})": v[2] / steps for (f, line, fn), v in stats.items()}
    a, b = (own[n] for n in names)
    keys = sorted(set(a) | set(b), key=lambda k: -abs(b.get(k, 0) - a.get(k, 0)))[:top]
    return [{"function": k, f"{names[0]}_s_per_step": round(a.get(k, 0), 5), f"{names[1]}_s_per_step": round(b.get(k, 0), 5)}
            for k in keys]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/train_throughput.json")
    p.add_argument("--train-clips", type=int, default=512)
    p.add_argument("--steps", type=int, default=30, help="optimiser steps per timed run at the smallest width")
    p.add_argument("--steps-wide", type=int, default=8, help="optimiser steps per timed run at the other widths")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--widths", default="8,64", help="student and teacher widths, comma-separated (64: ResNet-18)")
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--build-repeats", type=int, default=3, help="timed cache builds, each followed by a bare forward, per width; "
                   "each build at width 64 costs minutes on 2 cores")
    p.add_argument("--workers", type=int, default=1, help="the training runs' decoding workers")
    p.add_argument("--build-workers", type=int, help="the cache builds' workers (default: umt-cache build's)")
    p.add_argument("--profile", action="store_true", help="also profile one joint and one cached run at the "
                   "largest width: where the time differs")
    args = p.parse_args()
    keep_freed_memory()  # as the build's workers do: else their forward beat the bound's (overhead -0.35, width 64)
    clock, phases = time.perf_counter(), {}  # wall-clock seconds of each phase: the whole run must fit 20 min
    widths = [int(w) for w in args.widths.split(",")]
    work = Path(tempfile.mkdtemp(prefix="umt-bench-"))
    data = str(work / "data")
    write_synth(data, SynthConfig(train=args.train_clips, val=64, test=64, shard_size=args.train_clips // 4), progress=False)
    base = TrainConfig(data=data, out="", batch_size=args.batch_size, view=VIEW, epochs=1,
                       num_workers=args.workers, probe=False, log_every=10**9, log_with="none")

    def make_teachers(width: int) -> dict[str, str]:
        paths = {}
        for m in ("video", "audio"):
            out = work / f"w{width}-{m}"
            run(replace(base, out=str(out), method="unimodal", modalities=(m,), width=width, max_steps=5))
            paths[m] = str(out / "model.pt")
        return paths

    def build_figures(teachers: dict[str, str], width: int) -> dict:
        batches = decoded_batches(data, teachers, args.views, args.batch_size)  # decoded once, untimed
        seconds, bare, per_core = [], [], []
        for r in range(args.build_repeats):  # each build beside the bare forwards, alternated: one machine state
            start = time.perf_counter()
            build(data, teachers, str(work / f"w{width}-cache{r}.zarr"), args.views, batch_size=args.batch_size,
                  num_workers=args.build_workers, progress=False)
            seconds.append(time.perf_counter() - start)
            bare.append(bare_forward_clips_per_s(teachers, batches))
            per_core.append(bare_forward_per_core_clips_per_s(teachers, batches))
        overheads = [1 - args.train_clips / s / b for s, b in zip(seconds, bare)]
        per_core_overheads = [1 - args.train_clips / s / b for s, b in zip(seconds, per_core)]
        return {"build_clips_per_s": round(args.train_clips / median(seconds), 1),
                "bare_teacher_clips_per_s": round(median(bare), 1), "build_overhead": round(statistics.median(overheads), 3),
                "build_overhead_per_repeat": [round(x, 3) for x in overheads],
                "bare_per_core_clips_per_s": round(median(per_core), 1),
                "build_overhead_vs_per_core": round(statistics.median(per_core_overheads), 3),
                "build_overhead_vs_per_core_per_repeat": [round(x, 3) for x in per_core_overheads],
                "build_seconds_runs": [round(x, 2) for x in seconds]}

    phases["data"] = round(time.perf_counter() - clock)
    configs, builds = {}, {}
    for width in widths:
        teachers = make_teachers(width)
        builds[width] = build_figures(teachers, width)
        configs[width] = {"joint": dict(method="joint"),
                          "umt_online": dict(method="umt", teachers=teachers, num_views=args.views),
                          "umt_cached": dict(method="umt", cache=str(work / f"w{width}-cache0.zarr"))}

    def run_once(width: int, name: str, tag: str) -> dict:
        steps = args.steps if width == min(widths) else args.steps_wide
        return run(replace(base, out=str(work / f"w{width}-{name}{tag}"), width=width, max_steps=steps,
                           **configs[width][name]))

    phases["teachers_and_cache_builds"] = round(time.perf_counter() - clock - sum(phases.values()))
    for width in widths:  # untimed: the first run in a process pays one-off loads (numba, kernels, allocator)
        run(replace(base, out=str(work / f"w{width}-warmup"), width=width, max_steps=2, **configs[width]["joint"]))
    speeds = {w: {name: [] for name in configs[w]} for w in widths}
    for r in range(args.repeats):
        for width in widths:
            for name in rotated(list(configs[width]), r):
                speeds[width][name].append(run_once(width, name, str(r))["train_samples_per_s"])
                print(f"repeat {r} width {width} {name}: {speeds[width][name][-1]} samples/s", flush=True)
    phases["training_runs"] = round(time.perf_counter() - clock - sum(phases.values()))
    figures = {}
    for width in widths:
        s = speeds[width]
        figures[f"width_{width}"] = {
            **{f"{k}_samples_per_s": median(v) for k, v in s.items()},
            "ratio_cached_vs_joint": round(median(s["umt_cached"]) / median(s["joint"]), 3),
            "ratio_cached_vs_joint_per_repeat": ratio_spread(s["umt_cached"], s["joint"]),
            "ratio_cached_vs_online": round(median(s["umt_cached"]) / median(s["umt_online"]), 3),
            "samples_per_s_runs": s, "cache_build": builds[width]}
    if args.profile:
        wide = max(widths)
        figures["gap_profile"] = {"width": wide, "functions": gap_profile(lambda n: run_once(wide, n, "-profile"),
                                                                            ("joint", "umt_cached"))}
        phases["profile"] = round(time.perf_counter() - clock - sum(phases.values()))
    phases["total"] = round(time.perf_counter() - clock)
    write_json(args.out, {**figures, "seconds": phases, "settings": {**vars(args), "view": VIEW.to_dict(), "fusion": base.fusion}})


if __name__ == "__main__":
    main()
