"""How cost grows with the work: five curves, one JSON and one PNG.

1. Cached UMT training samples/s with the cache held in memory against streamed from its Zarr
   shards (`--cache-budget-gb 0`), interleaved repeats: what a cache larger than memory costs.
2. `umt-cache build` clips/s against the views cached per clip (teachers of `--width`): decoding is
   shared by a clip's views, the teachers' forward is not.
3. `umt-data pack` clips/s with 1 and 2 workers on 720p and 1080p sources (H.264 + AAC, 30 fps):
   the one-off transcode a Kinetics user pays per clip.
4. umt's cpu loader clips/s against its worker count (0 = in the main process, 1, 2).
5. umt's cpu loader clips/s against the frames per view (8, 16, 32 at 224 px) and the crop (112, 224 px at
   16 frames), on `loader.py --realistic`'s clips (10 s, short side 256, 25 fps, GOP 8), each beside the
   bare-decode bound of the same views run in the same rounds (`loader.py`'s limit), with views finished in
   the workers and the workers' side when the trainer's device finishes them (`loader.py`'s umt_shipped).

    python benchmarks/cost_curves.py --out benchmarks/results/cost_curves_cpu.json --png docs/cost_curves_cpu.png
    python benchmarks/cost_curves.py --curves loader_shape --out benchmarks/results/loader_shape_cpu.json \
        --png docs/loader_shape_cpu.png
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from umt.cache.builder import build
from umt.engine.config import TrainConfig
from umt.engine.train import run
from umt.loaders.making.inputs import ClipInput
from umt.loaders.making.pack import pack
from umt.loaders.making.synth import SynthConfig, write_synth
from umt.loaders.loading.loader import make_loader
from umt.loaders.stored.views import ViewPolicy

from common import median, write_json
from loader import DECODERS, PACKED, SETTINGS, SPEC, timed_pass, umt_pass, variant_pass, write_source, write_sources
from train_throughput import VIEW


def training_curve(base: TrainConfig, work: Path, cache: str, repeats: int, steps: int) -> dict:
    """Cached UMT samples/s, cache in memory vs streamed, repeats interleaved."""
    speeds = {"in_memory": [], "streamed": []}
    for r in range(repeats):
        order = list(speeds)[r % 2:] + list(speeds)[:r % 2]
        for name in order:
            budget = 8.0 if name == "in_memory" else 0.0
            res = run(replace(base, out=str(work / f"{name}{r}"), method="umt", cache=cache, cache_budget_gb=budget,
                              max_steps=steps))
            speeds[name].append(res["train_samples_per_s"])
    return {"samples_per_s": {k: median(v) for k, v in speeds.items()}, "runs": speeds,
            "ratio_streamed_vs_memory": round(median(speeds["streamed"]) / median(speeds["in_memory"]), 3)}


def build_curve(data: str, teachers: dict[str, str], work: Path, views: list[int], clips: int) -> dict:
    """`umt-cache build`'s clips/s at its default workers, per views a clip."""
    rates = {}
    for v in views:
        start = time.perf_counter()
        build(data, teachers, str(work / f"views{v}.zarr"), v, progress=False)
        rates[v] = round(clips / (time.perf_counter() - start), 1)
    return {"clips_per_s": rates, "views_per_s": {v: round(r * v, 1) for v, r in rates.items()}}


def pack_curve(work: Path, clips: int, seconds: int) -> dict:
    out = {}
    for name, size in (("720p", (1280, 720)), ("1080p", (1920, 1080))):
        src = work / f"src{name}"
        src.mkdir()
        inputs = []
        for i in range(clips):
            write_source(src / f"{i}.mp4", i, size, seconds)
            inputs.append(ClipInput(f"{i}.mp4", str(src / f"{i}.mp4"), f"class{i % 4}", "train"))
        out[name] = {}
        for workers in (1, 2):
            start = time.perf_counter()
            pack(inputs, work / f"packed{name}-{workers}", PACKED, shard_size=clips, workers=workers, progress=False)
            out[name][workers] = round(clips / (time.perf_counter() - start), 2)
    return {"clips_per_s": out, "source_seconds": seconds, "packed": PACKED.to_dict()}


def loader_curve(data: Path, repeats: int) -> dict:
    rates = {w: [] for w in (0, 1, 2)}
    for r in range(repeats):
        for w in list(rates)[r % 3:] + list(rates)[:r % 3]:
            rates[w].append(timed_pass(make_loader(data, "train", spec=SPEC, modalities=["video", "audio"],
                                                   policy=ViewPolicy(0, r, True), batch_size=16, num_workers=w)))
    return {"clips_per_s": {w: median(v) for w, v in rates.items()}, "runs": {w: [round(x, 1) for x in v]
                                                                              for w, v in rates.items()}}


SHAPES = {"frames": [(8, 224), (16, 224), (32, 224)], "crop": [(16, 112), (16, 224)]}  # (frames, crop) per curve


def loader_shape_curve(work: Path, clips: int, repeats: int, workers: int = 2, batch_size: int = 8) -> dict:
    """umt's cpu loader (views finished in the workers, and the workers' side when the trainer's device finishes
    them: `shipped`) and the bare-decode bound, clips/s, at each (frames, crop) of SHAPES; realistic clips."""
    setting = SETTINGS["realistic"]
    files = write_sources(work / "src", clips, setting, workers)
    inputs = [ClipInput(Path(f).name, f, f"class{i % 4}", "train") for i, f in enumerate(files)]
    pack(inputs, work / "packed", setting.packed, shard_size=max(1, clips // 4), workers=workers, progress=False)
    shapes = sorted({shape for curve in SHAPES.values() for shape in curve})
    names = ("umt", "shipped", "limit")
    rates = {(shape, name): [] for shape in shapes for name in names}
    for r in range(repeats):
        policy = ViewPolicy(0, r, True)
        runs = list(rates)
        for shape, name in runs[r % len(runs):] + runs[:r % len(runs)]:  # rotate the order between repeats
            spec = replace(setting.spec, frames=shape[0], crop=shape[1])
            if name in ("umt", "shipped"):
                rate = umt_pass(work / "packed", spec, policy, batch_size, workers, finish_on=torch.device("cpu")
                                if name == "shipped" else None, shipped=name == "shipped")()
            else:
                rate = variant_pass(work / "packed", DECODERS["limit"], spec, policy, batch_size, workers)
            rates[shape, name].append(rate)
        print(f"repeat {r}: " + ", ".join(f"{s[0]}x{s[1]} {n} {v[-1]:.1f}" for (s, n), v in rates.items()), flush=True)

    def point(shape):
        umt, shipped, limit = (median(rates[shape, n]) for n in names)
        return {"umt": umt, "shipped": shipped, "limit": limit, "ratio_vs_limit": round(umt / limit, 3),
                "shipped_ratio_vs_limit": round(shipped / limit, 3),
                "runs": {n: [round(x, 1) for x in rates[shape, n]] for n in names}}
    return {"frames": {str(f): point((f, c)) for f, c in SHAPES["frames"]},
            "crop": {str(c): point((f, c)) for f, c in SHAPES["crop"]},
            "clips": clips, "batch_size": batch_size, "workers": workers, "setting": setting.to_dict()}


def _panels(figures: dict) -> list:
    """One drawing function per measured curve, in the order of the module docstring."""
    panels = []
    if "training" in figures:
        def training(axis):
            t = figures["training"]["samples_per_s"]
            axis.bar(list(t), list(t.values()), color=["C0", "C1"])
            axis.set(title="cached UMT training", ylabel="samples/s")
        panels.append(training)
    if "cache_build" in figures:
        def cache_build(axis):
            b = figures["cache_build"]["clips_per_s"]
            axis.plot(list(b), list(b.values()), marker="o")
            axis.set(title="cache build", xlabel="views per clip", ylabel="clips/s")
        panels.append(cache_build)
    if "pack" in figures:
        def pack_panel(axis):
            for name, rates in figures["pack"]["clips_per_s"].items():
                axis.plot(list(rates), list(rates.values()), marker="o", label=name)
            axis.set(title="umt-data pack", xlabel="workers", ylabel="clips/s", xticks=[1, 2])
            axis.legend()
        panels.append(pack_panel)
    if "loader" in figures:
        def loader_panel(axis):
            lo = figures["loader"]["clips_per_s"]
            axis.plot(list(lo), list(lo.values()), marker="o")
            axis.set(title="cpu loader (112 px, 8 frames)", xlabel="workers", ylabel="clips/s", xticks=[0, 1, 2])
        panels.append(loader_panel)
    for curve, label, fixed in (("frames", "frames per view", "224 px"), ("crop", "crop (px)", "16 frames")):
        if "loader_shape" in figures:
            def shape_panel(axis, curve=curve, label=label, fixed=fixed):
                points = figures["loader_shape"][curve]
                xs = [int(x) for x in points]
                for name, style, legend in (("limit", "--", "bare-decode bound"),
                                            ("umt", "-", "umt, finished in workers"),
                                            ("shipped", ":", "umt workers, finished on device")):
                    if all(name in p for p in points.values()):
                        axis.plot(xs, [p[name] for p in points.values()], style, marker="o", label=legend)
                axis.set(title=f"cpu loader, {fixed}, 10 s clips", xlabel=label, ylabel="clips/s",
                         xticks=xs)
                axis.legend()
            panels.append(shape_panel)
    return panels


def plot(figures: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = _panels(figures)
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), squeeze=False)
    for draw, axis in zip(panels, axes[0]):
        draw(axis)
        axis.grid(alpha=0.3)
        axis.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


CURVES = ("cache_build", "training", "loader", "pack", "loader_shape")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/cost_curves.json")
    p.add_argument("--png", default="docs/cost_curves.png")
    p.add_argument("--curves", default=",".join(CURVES), help=f"which curves to measure, of {','.join(CURVES)}")
    p.add_argument("--train-clips", type=int, default=512)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--views", default="1,2,4,8", help="views per clip for the cache-build curve")
    p.add_argument("--pack-clips", type=int, default=6, help="720p and 1080p source clips to pack")
    p.add_argument("--pack-seconds", type=int, default=4)
    p.add_argument("--loader-clips", type=int, default=64)
    p.add_argument("--shape-clips", type=int, default=24, help="10 s clips for the frames and crop curves")
    args = p.parse_args()
    curves = args.curves.split(",")
    if not set(curves) <= set(CURVES):
        p.error(f"--curves: unknown {sorted(set(curves) - set(CURVES))}; known {', '.join(CURVES)}")
    work = Path(tempfile.mkdtemp(prefix="umt-curves-"))
    figures = {}
    if {"cache_build", "training"} & set(curves):
        data = str(work / "data")
        write_synth(data, SynthConfig(train=args.train_clips, val=32, test=32, shard_size=args.train_clips // 8),
                    progress=False)
        base = TrainConfig(data=data, out="", width=args.width, batch_size=32, view=VIEW, epochs=1, num_workers=1,
                           probe=False, log_every=10**9, log_with="none")
        teachers = {}
        for m in ("video", "audio"):
            run(replace(base, out=str(work / m), method="unimodal", modalities=(m,), max_steps=3))
            teachers[m] = str(work / m / "model.pt")
        views = [int(v) for v in args.views.split(",")]
        figures["cache_build"] = build_curve(data, teachers, work, views, args.train_clips)
        if "training" in curves:
            figures["training"] = training_curve(base, work, str(work / f"views{max(views)}.zarr"), args.repeats,
                                                 args.steps)
    if "loader" in curves:
        loader_work = work / "loader"
        (loader_work / "src").mkdir(parents=True)
        inputs = []
        for i in range(args.loader_clips):
            write_source(loader_work / "src" / f"{i}.mp4", i)
            inputs.append(ClipInput(f"{i}.mp4", str(loader_work / "src" / f"{i}.mp4"), f"class{i % 4}", "train"))
        pack(inputs, loader_work / "packed", PACKED, shard_size=max(1, args.loader_clips // 4), workers=2,
             progress=False)
        figures["loader"] = loader_curve(loader_work / "packed", args.repeats)
    if "pack" in curves:
        figures["pack"] = pack_curve(work, args.pack_clips, args.pack_seconds)
    if "loader_shape" in curves:
        figures["loader_shape"] = loader_shape_curve(work / "shapes", args.shape_clips, args.repeats)
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    plot(figures, Path(args.png))
    write_json(args.out, {**figures, "png": args.png, "settings": {**vars(args), "view": VIEW.to_dict()}})


if __name__ == "__main__":
    main()
