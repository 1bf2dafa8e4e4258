"""How many sources decide a figure on the real audio-visual set: the uni-modal models' test top-1 with its
standard error over the test split's photos (video) or recordings (audio), not over its clips.

A realav test clip shows one of 30 photos and plays one of 14 recordings (docs/data.md): its 600 clips are not
600 independent draws. This reads each run's saved model, scores the test split clip by clip, maps every clip to
its sources (the shard's `source` field → the generator's provenance.csv), and bootstraps the sources: each class's
photos (or recordings) drawn again with replacement, every clip of a drawn source counted, 2,000 draws. It
reports per run the clip-level top-1, the source-level SE, each source's accuracy, and per modality the median over
seeds against the set's floor (chance + 0.15, issue 29 item 1).

    python benchmarks/realav_sources.py --runs runs/realav-onehost --raw data/realav-raw --data data/realav \
        --out benchmarks/results/realav_sources.json
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import tarfile
from pathlib import Path

import numpy as np
import torch

from umt.engine.checkpoint import load_model, saved_views
from umt.engine.evaluate import collect

from common import write_json

ROLES = {"video": "photo", "audio": "recording"}


def test_sources(data: Path, raw: Path) -> dict[int, dict]:
    """Test row → its clip's provenance row (photo, recording, ...), through each sample's `source`."""
    provenance = {r["path"]: r for r in csv.DictReader((raw / "provenance.csv").read_text().splitlines())}
    rows = {}
    for shard in sorted(data.glob("test-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    rows[meta["row"]] = provenance[meta["source"]]
    return rows


def scored(run: Path, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """Test rows and whether the run's model got each clip right (its own view spec, the centre view)."""
    model, ckpt = load_model(run / "model.pt")
    model.eval()
    out = collect(model, str(data), "test", saved_views(run, ckpt), list(model.cfg.modalities),
                  64, 1, torch.device("cpu"))
    return out["rows"].numpy(), (out["logits"].argmax(1) == out["labels"]).numpy()


def source_se(correct: np.ndarray, sources: list[str], classes: list[str], draws: int = 2000) -> float:
    """SE of top-1 over a bootstrap of the sources, each class's drawn again with replacement."""
    rng = np.random.default_rng(0)
    names = np.array(sources)
    by_source = {s: correct[names == s] for s in set(sources)}
    per_class = {c: sorted(set(names[np.array(classes) == c])) for c in sorted(set(classes))}
    figures = []
    for _ in range(draws):
        picked = [by_source[s] for members in per_class.values() for s in rng.choice(members, len(members))]
        figures.append(np.concatenate(picked).mean())
    return float(np.std(figures))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, required=True, help="a phenomena.py --realav output: realav-seed*/<run>/")
    p.add_argument("--raw", type=Path, required=True, help="the `umt-data realav` folder (provenance.csv)")
    p.add_argument("--data", type=Path, required=True, help="the packed set")
    p.add_argument("--out", default="benchmarks/results/realav_sources.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    seeds = sorted(d for d in args.runs.glob("realav-seed*") if d.is_dir())
    missing = [str(d / f"unimodal-{m}" / "model.pt") for d in seeds for m in ROLES
               if not (d / f"unimodal-{m}" / "model.pt").is_file()]
    if not seeds or missing:
        raise SystemExit(f"realav_sources: {args.runs} holds no finished realav-seed*/unimodal-video and -audio runs "
                         f"({', '.join(missing) or 'no realav-seed* folder'}): run phenomena.py --realav first")
    if not (args.raw / "provenance.csv").is_file():
        raise SystemExit(f"realav_sources: {args.raw / 'provenance.csv'} is missing: --raw is `umt-data realav`'s folder")
    sources = test_sources(args.data, args.raw)
    chance = 1 / len(json.loads((args.data / "manifest.json").read_text())["classes"])
    record = {"floor": round(chance + 0.15, 3), "runs": {}, "summary": {}}
    for modality, role in ROLES.items():
        figures = []
        for seed_dir in seeds:
            rows, correct = scored(seed_dir / f"unimodal-{modality}", args.data)
            names = [sources[r][role] for r in rows]
            classes = [sources[r]["label"] for r in rows]
            per_source = {s: round(float(correct[[n == s for n in names]].mean()), 3) for s in sorted(set(names))}
            top1 = float(correct.mean())
            figures.append(top1)
            record["runs"][f"{seed_dir.name}/unimodal-{modality}"] = {
                "top1": round(top1, 3), "clip_se": round(float(np.sqrt(top1 * (1 - top1) / len(correct))), 3),
                "source_se": round(source_se(correct, names, classes), 3), "sources": len(per_source),
                f"per_{role}": per_source}
            print(f"{seed_dir.name} {modality}: {top1:.3f}", record["runs"][f"{seed_dir.name}/unimodal-{modality}"]
                  ["source_se"], flush=True)
        ses = [v["source_se"] for k, v in record["runs"].items() if k.endswith(modality)]
        record["summary"][modality] = {"top1_median": round(statistics.median(figures), 3),
                                       "source_se_median": round(statistics.median(ses), 3),
                                       "median_minus_floor_in_se": round((statistics.median(figures) - record["floor"])
                                                                         / statistics.median(ses), 2)}
    write_json(args.out, record)


if __name__ == "__main__":
    main()
