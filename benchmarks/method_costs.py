"""Each method's training time per sample relative to joint's on the real audio-visual set, from short timed runs of
every method interleaved with joint's (engine/interleave.py: ratios taken within a repeat, the order rotated).

The methods table (`phenomena.py --realav`) trains its runs side by side, and its sweeps were paused for other
benchmarks, so its samples/s are not a speed measure; this is. Every run is the table's (phenomena.realav_cells: each
method on its own head, optimiser and learning rate, one thread, one decoding worker, seed 0) cut to --steps optimiser
steps, without probes; UMT's variants read --cache (the table's seed-0 cache); UME trains nothing and is left out.
`epoch_time_vs_joint` = joint's training samples/s over the method's (data waits included), per repeat; the JSON is
rewritten after every repeat, so a run stopped early keeps the repeats it finished.

    python benchmarks/method_costs.py --realav data/realav --cache runs/realav-onehost/realav-seed0/cache.zarr \
        --out benchmarks/results/method_costs_realav.json
"""
from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from phenomena import Cell, _trained, core_head, only_run, peers, realav_cells, umt_variants

from common import write_json


def runs(cell: Cell, cache: str) -> dict[str, tuple[str | None, tuple[str, ...]]]:
    """Run name → (fusion head, umt-train flags), as the methods table trains them (phenomena's own rules)."""
    from umt.engine.config import CHOICES
    head = core_head(cell.recipe)
    named = ["joint", *(f"joint-{f}" for f in CHOICES["fusion"] if f != head), *peers()]
    return {**{f"unimodal-{v}": (head, ("--method", "unimodal", "--modality", v)) for v in cell.modalities},
            **{name: (head, flags) for name, flags in
               umt_variants(cache, cell.modalities, cell.recipe.distill_weight).items()},
            **{name: only_run(cell, name) for name in named}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--realav", required=True, help="the set packed by `make realav`")
    p.add_argument("--cache", required=True, help="a cache of the set's teachers (UMT's runs)")
    p.add_argument("--out", default="benchmarks/results/method_costs_realav.json")
    p.add_argument("--steps", type=int, default=15, help="optimiser steps a timed run (default 15)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    os.environ["TQDM_DISABLE"] = "1"
    import torch

    from umt.engine.interleave import ratio_spread, rotated
    torch.set_num_threads(1)
    cell = next(c for c in realav_cells(Path(args.realav), quick=False) if c.seed == 0)
    table, work = runs(cell, args.cache), Path(tempfile.mkdtemp(prefix="umt-costs-"))
    speeds: dict[str, list[float]] = {name: [] for name in table}
    for r in range(args.repeats):
        for name in rotated(list(table), r):
            fusion, flags = table[name]
            result = _trained(cell, work / f"r{r}" / name, Path(args.realav), fusion,
                              (*flags, "--max-steps", str(args.steps), "--no-probe"))
            speeds[name].append(result["train_samples_per_s"])
        write_json(args.out, {"epoch_time_vs_joint": {m: ratio_spread(speeds["joint"], s) for m, s in speeds.items()},
                              "train_samples_per_s": speeds, "repeats_done": r + 1,
                              "settings": {**vars(args), "recipe": asdict(cell.recipe)}})
        print(f"repeat {r} done", flush=True)


if __name__ == "__main__":
    main()
