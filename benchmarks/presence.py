"""The presence sweep's analysis (issue 15): accuracy per kind of sample, and where UMT should win.

Under the generator's `presence` label model (loaders/making/synth.py) every test sample belongs to a group
by the features it carries: both uni-modal features, video only, audio only, the paired cue, or
neither. The engine records aggregate figures only, so `per_group` reloads each run's saved model
(`umt.engine.checkpoint.load_model`), scores the test split through `umt.engine.evaluate.collect`
and splits the hits by group; it checks that the groups add up to the run's own recorded test top-1.
`summarise` turns the cells (condition x seed) into the figures the issue asks for, each defined
next to it in the output.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

GROUPS = ("both", "video_only", "audio_only", "paired", "neither")
FUSED = ("joint", "umt", "umt_projector", "ume")


def group_shares(generator: dict) -> dict[str, float]:
    """Expected share of each group under a presence config (what the theory's prediction reads)."""
    p, qv, qa = generator["paired"], generator["video_present"], generator["audio_present"]
    rest = 1.0 - p
    return {"both": rest * qv * qa, "video_only": rest * qv * (1 - qa), "audio_only": rest * (1 - qv) * qa,
            "paired": p, "neither": rest * (1 - qv) * (1 - qa)}


def groups_of_test(data: str | Path, labels_csv: str | Path | None = None) -> list[str]:
    """The group of each test row of a packed set, in row order: from each `umt-data synth` clip's JSON, or,
    for a `pack-arrays` set, from the generator's labels file through each row's `source` (its line in that
    file: pack-arrays writes a split in a seeded order, so a row is not its line)."""
    import tarfile
    from umt.loaders.stored.shards import split_files
    lines = None
    if labels_csv is not None:
        with open(labels_csv, newline="") as handle:
            lines = [row["group"] for row in csv.DictReader(handle)]
    rows = {}
    for path in split_files(data, "test")[0]:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    meta = json.load(tar.extractfile(member))
                    rows[meta["row"]] = meta["group"] if lines is None else lines[meta["source"]]
    return [rows[r] for r in range(len(rows))]


def _test_scores(path: Path, data: str):
    """(logits [N, K], labels [N]) of a saved model on the test split, ordered by test row."""
    import torch
    from umt.engine.checkpoint import load_model
    from umt.engine.evaluate import collect
    from umt.loaders.stored.views import ViewSpec

    model, ckpt = load_model(path)
    model.eval()
    rows = []

    def forward(batch):
        rows.append(batch["row"])
        return model(batch)

    out = collect(forward, data, "test", ViewSpec.of(ckpt["view"]), list(model.cfg.modalities), 512, 0,
                  torch.device("cpu"))
    order = torch.cat(rows).argsort()
    return out["logits"][order], out["labels"][order]


def per_group(work: Path, data: Path, groups: list[str], views: list[str], recorded: dict[str, dict],
              runs: dict[str, str]) -> dict:
    """Test top-1 of every method per group, from each run's model.pt; `groups`: each test row's group,
    `recorded`: method → results.json, `runs`: each fused model's method key → its run folder under `work`."""
    import torch
    from umt.engine.ume import combine

    data = str(data)
    scores = {m: _test_scores(work / run / "model.pt", data) for m, run in runs.items()}
    uni = {v: _test_scores(work / f"unimodal-{v}" / "model.pt", data) for v in views}
    scores.update({f"unimodal_{v}": s for v, s in uni.items()})
    ume = recorded["ume"]["ume"]
    names = sorted(views)
    weights = torch.tensor([ume["weights"][v] for v in names])
    stacked = torch.stack([uni[v][0] for v in names], 1)
    scores["ume"] = (combine(stacked, ume["combine"], weights), uni[names[0]][1])
    if len(groups) != len(scores["joint"][1]):
        raise RuntimeError(f"{data}: its generator lists {len(groups)} test samples, the packed test split {len(scores['joint'][1])}")
    out = {"count": {g: groups.count(g) for g in GROUPS}, "top1": {}}
    for method, (logits, labels) in scores.items():
        hits = (logits.argmax(1) == labels).tolist()
        overall = sum(hits) / len(hits)
        if abs(overall - recorded[method]["test_top1"]) > 1e-6:
            raise RuntimeError(f"{work}: {method} scores {overall} on re-evaluation, its run recorded "
                               f"{recorded[method]['test_top1']}")
        out["top1"][method] = {g: round(statistics.fmean(h for h, x in zip(hits, groups) if x == g), 4)
                               for g in GROUPS if g in groups}
    return out


def stats(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else None}


def chosen_umt(cell: dict) -> str:
    """The UMT variant with the higher validation top-1 (plain UMT on a tie): never chosen on test."""
    v = cell["val_top1"]  # without validation selection (--select last) neither is recorded: plain UMT
    return "umt_projector" if v.get("umt_projector", -1) > v.get("umt", -1) else "umt"


def best_of_three(test: dict[str, float]) -> list[str]:
    """The best of UME, plain UMT and joint on test (every one tied for best)."""
    top = max(test[k] for k in ("ume", "umt", "joint"))
    return [k for k in ("ume", "umt", "joint") if test[k] == top]


def summarise(cells: list[dict]) -> dict:
    """Per condition (mean ± std over seeds) and overall figures; definitions in the output."""
    conditions: dict[str, list[dict]] = {}
    for c in cells:
        conditions.setdefault(c["cell"], []).append(c)
    table = {}
    for name, group in conditions.items():
        views = group[0]["views"]
        gen = group[0]["generator"]
        weak_only = f"{group[0].get('weak', 'audio')}_only"  # records before the demo's presence set: audio weak
        shares = group_shares(gen)
        umt_pick = [chosen_umt(c) for c in group]
        test = {m: [c["test_top1"][m] for c in group] for m in group[0]["test_top1"]}
        test["umt_val_chosen"] = [c["test_top1"][u] for c, u in zip(group, umt_pick)]
        margins = [c["test_top1"][u] - max(c["test_top1"]["joint"], c["test_top1"]["ume"]) for c, u in zip(group, umt_pick)]
        se = statistics.stdev(margins) / math.sqrt(len(margins)) if len(margins) > 1 else math.inf
        mean_margin = statistics.fmean(margins)
        by_group = {}
        for g in GROUPS:
            if g not in group[0]["groups"]["top1"]["joint"]:
                continue
            row = {m: stats([c["groups"]["top1"][m][g] for c in group]) for m in group[0]["groups"]["top1"]}
            row["umt_val_chosen"] = stats([c["groups"]["top1"][u][g] for c, u in zip(group, umt_pick)])
            by_group[g] = {"count": round(statistics.fmean(c["groups"]["count"][g] for c in group), 1), **row}
        three_val = [c["guide"]["recommendation"] for c in group]
        three_test = ["=".join(best_of_three(c["test_top1"])) for c in group]
        table[name] = {
            "settings": {k: gen[k] for k in ("video_present", "audio_present", "paired")},
            "seeds": [c["seed"] for c in group],
            "expected_shares": {g: round(s, 4) for g, s in shares.items()},
            "weak_only_group": weak_only,
            "predicted_umt_win": shares[weak_only] > 0 and shares["paired"] > 0,
            "test_top1": {m: stats(v) for m, v in test.items()},
            "test_top1_by_group": by_group,
            "laziness_gap": {v: stats([c["probe"]["unimodal"][v] - c["probe"]["joint"][v] for c in group]) for v in views},
            "umt_probe_minus_joint": {v: stats([c["probe"]["umt"][v] - c["probe"]["joint"][v] for c in group])
                                      for v in views},
            "umt_variant_on_val": umt_pick,
            "three_way_on_val": three_val,
            "best_of_three_on_test": three_test,
            "guide_two_way": [c["guide"]["choice"] for c in group],
            "umt_margin": {"mean": round(mean_margin, 4), "se": round(se, 4), "per_seed": [round(m, 4) for m in margins]},
            "umt_wins": mean_margin > 0 and mean_margin >= 2 * se,
        }
    predicted = [t for t in table.values() if t["predicted_umt_win"]]
    others = [t for t in table.values() if not t["predicted_umt_win"]]
    agree = [a in b.split("=") for t in table.values() for a, b in zip(t["three_way_on_val"], t["best_of_three_on_test"])]
    agree_guide = [a in b.split("=") for t in table.values()
                   for a, b in zip(t["guide_two_way"], t["best_of_three_on_test"])]
    views = cells[0]["views"]
    return {
        "umt_wins_where_predicted": round(sum(t["umt_wins"] for t in predicted) / len(predicted), 4) if predicted else None,
        "predicted_cells": len(predicted),
        "umt_wins_elsewhere": sum(t["umt_wins"] for t in others),
        "other_cells": len(others),
        "laziness_gap": {v: stats([c["probe"]["unimodal"][v] - c["probe"]["joint"][v] for c in cells]) for v in views},
        "three_way_agreement": round(sum(agree) / len(agree), 4),
        "guide_two_way_agreement": round(sum(agree_guide) / len(agree_guide), 4),
        "conditions": table,
        "definitions": {
            "cell": "one generator condition (video_present, audio_present, paired), over its seeds",
            "umt_val_chosen": "of plain UMT and UMT + projector, the one with the higher validation top-1 (its "
                              "best-validation epoch's); plain UMT on a tie",
            "umt_margin": "per seed: test top-1 of umt_val_chosen - max(joint, UME) of that seed; mean and its "
                          "standard error over seeds (sample std / sqrt(seeds))",
            "umt_wins": "umt_margin mean > 0 and >= 2 standard errors",
            "weak_only_group": "the samples only the weak modality labels (the cell's declared weak modality: audio in "
                               "the vector sweeps, video in the demo's clip set)",
            "predicted_umt_win": "the condition has weak-only and paired samples: expected shares > 0",
            "umt_wins_where_predicted": "share of predicted cells in which umt_wins",
            "laziness_gap": "per modality, mean ± std over cells of (uni-modal probe - joint probe), linear probes on test",
            "three_way_on_val": "the engine guide's recommendation (umt.engine.guide.guide with the plain UMT model, on "
                                "validation): the best of UME, joint and UMT there, ties to the cheaper",
            "best_of_three_on_test": "the best of UME, plain UMT and joint on test (ties joined by =)",
            "three_way_agreement": "share of seeds x cells where three_way_on_val is among best_of_three_on_test",
            "guide_two_way": "the guide's paper rule on validation (UME vs UMT)",
            "guide_two_way_agreement": "share of seeds x cells where guide_two_way is among best_of_three_on_test"}}


COLOURS = {"joint": "C2", "umt": "C3", "umt_projector": "C4", "ume": "C5"}
LABELS = {"joint": "joint", "umt": "UMT", "umt_projector": "UMT + projector", "ume": "UME"}


def plot(summary: dict, path: Path) -> None:
    """One panel per condition: each method's test top-1 per group (bars: mean over seeds, whiskers: std)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    conditions = summary["conditions"]
    cols = min(3, len(conditions))
    rows = math.ceil(len(conditions) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    first = next(iter(conditions.values()))["test_top1"]
    uni = [m for m in first if m.startswith("unimodal_")]
    colours = {**COLOURS, **dict(zip(uni, ("0.3", "0.65")))}
    labels = {**LABELS, **{m: f"uni-modal {m.removeprefix('unimodal_')}" for m in uni}}
    methods = [m for m in colours if m in first]
    width = 0.8 / len(methods)
    for axis, (name, t) in zip(axes.flat, conditions.items()):
        groups = list(t["test_top1_by_group"])
        for i, m in enumerate(methods):
            means = [t["test_top1_by_group"][g][m]["mean"] for g in groups]
            stds = [t["test_top1_by_group"][g][m]["std"] or 0.0 for g in groups]
            axis.bar([x + (i - len(methods) / 2 + 0.5) * width for x in range(len(groups))], means, width, yerr=stds,
                     color=colours[m], label=labels[m], capsize=2)
        axis.set_xticks(range(len(groups)), [f"{g}\n({t['test_top1_by_group'][g]['count']:.0f})" for g in groups],
                        fontsize=7)
        s, top = t["settings"], t["test_top1"]
        verdict = "UMT wins" if t["umt_wins"] else "no UMT win"
        axis.set_title(f"q_v {s['video_present']}, q_a {s['audio_present']}, p {s['paired']}: {verdict}\n"
                       f"joint {top['joint']['mean']:.3f}  UMT* {top['umt_val_chosen']['mean']:.3f}  "
                       f"UME {top['ume']['mean']:.3f}", fontsize=8)
        axis.set_ylim(0, 1.05)
        axis.grid(alpha=0.3, axis="y")
    for axis in axes.flat[len(conditions):]:
        axis.axis("off")
    axes.flat[0].set_ylabel("test top-1 within the group")
    axes.flat[0].legend(fontsize=6, loc="lower left")
    fig.suptitle("presence sweep: test top-1 per kind of sample (group, test count); UMT* = variant chosen on val",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def pm(s: dict) -> str:
    return f"{s['mean']:.3f}" + (f" ± {s['std']:.3f}" if s["std"] is not None else "")


def tables(summary: dict) -> str:
    """Markdown: one row per condition (test top-1, mean ± std over seeds), then accuracy per group."""
    head = ["q_v / q_a / p", "weak-only / paired share", "joint", "UMT", "UMT+proj", "UME", "UMT* (val-chosen)",
            "UMT* − max(joint, UME) ± SE", "predicted / wins", "3-way on val", "best on test", "guide (2-way)",
            "laziness gap " + " / ".join(summary["laziness_gap"])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in summary["conditions"].values():
        s, top, sh = t["settings"], t["test_top1"], t["expected_shares"]
        gap = " / ".join(f"{x['mean']:+.3f}" for x in t["laziness_gap"].values())
        lines.append("| " + " | ".join([
            f"{s['video_present']} / {s['audio_present']} / {s['paired']}", f"{sh[t['weak_only_group']]:.2f} / {sh['paired']:.2f}",
            *[pm(top[m]) for m in (*FUSED, "umt_val_chosen")],
            f"{t['umt_margin']['mean']:+.3f} ± {t['umt_margin']['se']:.3f}",
            f"{'yes' if t['predicted_umt_win'] else 'no'} / {'**yes**' if t['umt_wins'] else 'no'}",
            ", ".join(t["three_way_on_val"]), ", ".join(t["best_of_three_on_test"]), ", ".join(t["guide_two_way"]), gap]) + " |")
    first = next(iter(summary["conditions"].values()))["test_top1"]
    peers = [m for m in first if m not in (*FUSED, "umt_val_chosen") and not m.startswith("unimodal_")]
    if peers:
        lines += ["", "| q_v / q_a / p | " + " | ".join(peers) + " |", "|" + "---|" * (len(peers) + 1)]
        lines += [f"| {t['settings']['video_present']} / {t['settings']['audio_present']} / {t['settings']['paired']} | "
                  + " | ".join(pm(t["test_top1"][m]) for m in peers) + " |" for t in summary["conditions"].values()]
    methods = [*FUSED, "umt_val_chosen", *peers, *(f"unimodal_{v}" for v in summary["laziness_gap"])]
    lines += ["", "| q_v / q_a / p | group (test n) | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 2)]
    for t in summary["conditions"].values():
        s = t["settings"]
        for g, row in t["test_top1_by_group"].items():
            lines.append(f"| {s['video_present']} / {s['audio_present']} / {s['paired']} | {g} ({row['count']:.0f}) | "
                         + " | ".join(pm(row[m]) for m in methods if m in row) + " |")
    return "\n".join(lines)
