"""`make demo`: the whole UMT flow on the embedded synthetic dataset, in a few CPU minutes.

synth → uni-modal teachers (video, audio) → `umt-cache build` → joint, UMT (cached targets), UME →
one table of test top-1, per-modality linear-probe accuracy and UMT's training time per sample relative
to joint's, printed and written to OUT/report.md. Every number is measured in this run.

The time ratio comes from short timed segments of joint and UMT training interleaved in this process
(engine/interleave.py), not from the two runs above: one run's samples/s moves with whatever else
the machine does, and once showed UMT 5x faster than joint under load.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from umt.engine import plots
from umt.engine.config import TrainConfig
from umt.engine.guide import guide
from umt.engine.interleave import ratio_spread, rotated
from umt.engine.report import results_table
from umt.engine.train import run
from umt.loaders.making.synth import SynthConfig, write_synth
from umt.loaders.stored.shards import MANIFEST
from umt.loaders.stored.views import ViewSpec

from .builder import build

DATA = SynthConfig(train=1000, val=200, test=400, shard_size=250, paired=0.25)
VIEW = ViewSpec(frames=4, stride=2, crop=32, audio_seconds=1.0, mel_bins=40)
VIEWS = 4
SEGMENTS, SEGMENT_STEPS = 5, 8  # timed repeats of joint and UMT, optimiser steps each


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m umt.cache.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    out, start = Path(args.out), time.perf_counter()
    data = out / "data"
    if not (data / MANIFEST).is_file():
        write_synth(data, DATA)
    base = TrainConfig(data=str(data), out="", epochs=args.epochs, batch_size=32, width=8, fusion="mlp",
                       view=VIEW, num_workers=args.workers, log_every=20)

    def train(name: str, **kw) -> dict:
        print(f"\n== {name}")
        return run(replace(base, out=str(out / name), **kw))

    rows = [("uni-modal video (teacher)", train("video", method="unimodal", modalities=("video",))),
            ("uni-modal audio (teacher)", train("audio", method="unimodal", modalities=("audio",)))]
    teachers = {m: str(out / m / "model.pt") for m in ("video", "audio")}
    print("\n== umt-cache build")
    cache_start = time.perf_counter()
    build(str(data), teachers, str(out / "cache.zarr"), VIEWS)
    cache_s = time.perf_counter() - cache_start
    rows += [("joint (late fusion)", train("joint", method="joint")),
             ("UMT (cached teachers)", train("umt", method="umt", cache=str(out / "cache.zarr"))),
             ("UME (logit average)", train("ume", method="ume", members=teachers))]
    cost = time_ratio(base, out)
    heading = f"train time per sample vs joint (median [range], {SEGMENTS} interleaved segments)"
    table = results_table(rows, (heading, {"joint (late fusion)": "1 (reference)",
                                           "UMT (cached teachers)": f"{cost['median']:.2f} "
                                                                    f"[{cost['min']:.2f}–{cost['max']:.2f}]"}))
    picture = plots.laziness(rows, out / "laziness.png")
    advice = guide(str(data), teachers, str(out / "joint" / "model.pt"), umt=str(out / "umt" / "model.pt"))
    wall = time.perf_counter() - start
    report = (f"# umt demo\n\n{table}\n\n![probe accuracy per encoder]({picture.name})\n\n"
              f"- data: `umt-data synth` {json.dumps(asdict(DATA))}\n"
              f"- views: {json.dumps(VIEW.to_dict())}; cache: {VIEWS} views per training clip, built in {cache_s:.1f} s\n"
              f"- models: ResNet-18-style encoders, width {base.width} ({8 * base.width}-d features), "
              f"{base.fusion.upper()} fusion head, {base.epochs} epochs, batch {base.batch_size}, UMT λ = {base.distill_weight}\n"
              "- probe: fresh linear classifier on each frozen encoder's features (train split), test accuracy; "
              "a probe below the uni-modal one is modality laziness\n"
              f"- speed: joint's training samples/s over UMT's (data waits included) in {SEGMENTS} repeats of "
              f"{SEGMENT_STEPS}-step segments of each, timed back to back in this process, the order alternating; "
              "the median and range of the ratio over repeats. Each repeat's two segments share the machine's "
              "load, which one run's samples/s does not cancel\n"
              f"- guide (validation split): {json.dumps({k: round(v, 3) for k, v in advice['evidence'].items()})} "
              f"→ **{advice['recommendation'].upper()}**: {advice['recommendation_reason']}\n"
              f"- the paper's rule (UME vs joint): **{advice['choice'].upper()}**: {advice['reason']}\n"
              f"- total wall time {wall:.0f} s\n")
    (out / "report.md").write_text(report)
    print("\n" + report)


def time_ratio(base: TrainConfig, out: Path) -> dict[str, float]:
    """UMT's training time per sample over joint's, from interleaved segments (engine/interleave.py)."""
    print(f"\n== timing: {SEGMENTS} interleaved segments of joint and UMT, {SEGMENT_STEPS} steps each")
    kinds = {"joint": dict(method="joint"), "umt": dict(method="umt", cache=str(out / "cache.zarr"))}
    speeds: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(SEGMENTS):
        for kind in rotated(list(kinds), r):
            cfg = replace(base, out=str(out / "timing" / f"{kind}{r}"), max_steps=SEGMENT_STEPS, probe=False,
                          log_with="none", **kinds[kind])
            speeds[kind].append(run(cfg)["train_samples_per_s"])
    return ratio_spread(speeds["joint"], speeds["umt"])


if __name__ == "__main__":
    main()
