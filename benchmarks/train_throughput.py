"""Does cached UMT train at the speed of joint training? And what does building the cache cost?

Side by side, interleaved, in one process: training samples/s of `joint`, `umt` with online
teachers and `umt` with cached targets (same model, batch, data, loader, steps), medians over
repeats; then the cache build's clips/s against the teachers' bare forward throughput on the same
clips, already decoded and in memory (build_overhead = 1 - build / bare). The build is measured
with teachers of `--build-width` (64: ResNet-18's real width, the teachers users cache) as well as
with the small training width, since the overhead is decode cost over teacher cost.

    python benchmarks/train_throughput.py --out benchmarks/results/train_throughput_cpu.json
"""
from __future__ import annotations

import argparse
import functools
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from umt.cache.builder import ShardViews, batched_by_shard, build
from umt.engine.checkpoint import load_teachers
from umt.engine.config import TrainConfig
from umt.engine.train import run
from umt.loaders.loading.pipeline import shard_loader
from umt.loaders.making.synth import SynthConfig, write_synth
from umt.loaders.stored.shards import split_files
from umt.loaders.stored.views import ViewSpec

from common import median, write_json

VIEW = ViewSpec(frames=4, stride=2, crop=32, audio_seconds=1.0, mel_bins=40)


def bare_forward_clips_per_s(data: str, teachers: dict[str, str], views: int, batch_size: int) -> float:
    """Teachers' forward alone on every training clip's V views, decoded beforehand."""
    encoders, _, spec = load_teachers(teachers, torch.device("cpu"))
    modalities = sorted(encoders)
    decode = ShardViews(spec, modalities, 0, views)
    paths, _ = split_files(data, "train")
    batches = list(shard_loader(paths, decode, functools.partial(batched_by_shard, batch_size=batch_size), 0))
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            for m, enc in encoders.items():
                enc(batch[m].flatten(0, 1)).to(torch.float16)
    return sum(len(b["row"]) for b in batches) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/train_throughput.json")
    p.add_argument("--train-clips", type=int, default=1000)
    p.add_argument("--steps", type=int, default=30, help="optimiser steps per timed run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--build-width", type=int, default=64, help="teacher width for the second build measurement")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="umt-bench-"))
    data = str(work / "data")
    write_synth(data, SynthConfig(train=args.train_clips, val=64, test=64, shard_size=args.train_clips // 4), progress=False)
    base = TrainConfig(data=data, out="", width=args.width, batch_size=args.batch_size, view=VIEW, epochs=1,
                       num_workers=args.workers, probe=False, log_every=10**9)

    def make_teachers(width: int, tag: str) -> dict[str, str]:
        paths = {}
        for m in ("video", "audio"):
            run(replace(base, out=str(work / f"{tag}{m}"), method="unimodal", modalities=(m,), width=width, max_steps=5))
            paths[m] = str(work / f"{tag}{m}" / "model.pt")
        return paths

    def build_figures(teachers: dict[str, str], tag: str) -> dict:
        seconds = []
        for r in range(args.repeats):
            start = time.perf_counter()
            build(data, teachers, str(work / f"{tag}cache{r}.zarr"), args.views, batch_size=args.batch_size,
                  num_workers=args.workers, progress=False)
            seconds.append(time.perf_counter() - start)
        bare = median([bare_forward_clips_per_s(data, teachers, args.views, args.batch_size) for _ in range(args.repeats)])
        build_cps = args.train_clips / median(seconds)
        return {"build_clips_per_s": round(build_cps, 1), "bare_teacher_clips_per_s": bare,
                "build_overhead": round(1 - build_cps / bare, 3), "build_seconds_runs": [round(x, 2) for x in seconds]}

    teachers = make_teachers(args.width, "")
    small = build_figures(teachers, "")
    big = build_figures(make_teachers(args.build_width, "big"), "big")

    configs = {"joint": dict(method="joint"),
               "umt_online": dict(method="umt", teachers=teachers, num_views=args.views),
               "umt_cached": dict(method="umt", cache=str(work / "cache0.zarr"))}
    speeds: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(args.repeats):
        order = list(configs)[r % 3:] + list(configs)[:r % 3]  # rotate so no method always runs first
        for name in order:
            res = run(replace(base, out=str(work / f"{name}{r}"), max_steps=args.steps, **configs[name]))
            speeds[name].append(res["train_samples_per_s"])
            print(f"repeat {r} {name}: {res['train_samples_per_s']} samples/s")
    joint, online, cached = (median(speeds[k]) for k in ("joint", "umt_online", "umt_cached"))
    write_json(args.out, {
        "joint_samples_per_s": joint, "umt_online_samples_per_s": online, "umt_cached_samples_per_s": cached,
        "ratio_cached_vs_joint": round(cached / joint, 3), "ratio_cached_vs_online": round(cached / online, 3),
        **big, f"build_at_width_{args.width}": small, "samples_per_s_runs": speeds,
        "settings": {**vars(args), "view": VIEW.to_dict(), "fusion": base.fusion}})


if __name__ == "__main__":
    main()
