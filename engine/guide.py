"""`umt-guide`: choose between UME, UMT and plain joint training, with the evidence behind it.

The paper's rule (Du et al., ICML 2023) compares two models on held-out (validation) data: if the
uni-modal ensemble (UME) is at least as accurate as joint training, use UME; otherwise keep joint
training and repair its uni-modal features with UMT. It is printed as the paper's. Beyond the paper,
once a UMT model has been trained (`--umt CKPT`, or by `--train-missing`), the guide measures it too and
recommends the most accurate of UME, UMT and plain joint training on validation: where paired cues
dominate, plain joint training can beat both (benchmarks/RESULTS.md). The test split is never used.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from umt.loaders.errors import UserError, parse_assignments, run_cli
from umt.loaders.stored.shards import load_manifest
from umt.loaders.stored.views import ViewSpec

from . import config_files
from .checkpoint import check_views, load_checkpoint, load_model, saved_views
from .evaluate import collect, top1
from .ume import combine, forward_fn, load_members


# On a tie, the cheaper method: UME trains no joint model, joint needs no teachers.
PREFERENCE = ("ume", "joint", "umt")


def _model(path: str, split: str, data: str, view: ViewSpec, batch_size: int, num_workers: int,
           role: str) -> dict:
    model, ckpt = load_model(path)
    if len(model.cfg.modalities) < 2:
        raise UserError(f"{role} {path} is not a multi-modal model")
    check_views(role, path, ckpt, view)
    return collect(model.eval(), data, split, view, list(model.cfg.modalities), batch_size, num_workers,
                   torch.device("cpu")) | {"fusion": model.cfg.fusion}


def paper_rule(evidence: dict[str, float], fusion: str, split: str) -> tuple[str, str]:
    """The paper's two-way choice, and a reason that says only what the numbers show."""
    ume, joint = evidence["ume"], evidence["joint"]
    if ume >= joint:
        return "ume", (f"UME {ume:.3f} >= joint {joint:.3f} on {split}: training the modalities together gains "
                       "nothing over training them apart; use the uni-modal ensemble")
    why = ("its MLP fusion head can combine modalities non-linearly (paired cues) — or the encoders simply "
           "learn better together" if fusion == "mlp" else
           f"its {fusion} fusion head still adds per-modality scores, so the gain is not from reading paired "
           "cues but from training the modalities' scores together")
    return "umt", (f"joint {joint:.3f} > UME {ume:.3f} on {split}: joint training gains over the ensemble ({why}); "
                   "keep joint training and repair its uni-modal features with UMT")


@torch.no_grad()
def guide(data: str, members: dict[str, str], joint: str, split: str = "val", batch_size: int = 64,
          num_workers: int = 1, umt: str | None = None) -> dict:
    """Validation top-1 of each member, UME, joint (and UMT); the paper's choice and, with UMT, the best of three."""
    if split == "test":
        raise UserError("the guide decides on held-out validation data, never on the test split (--split val)")
    num_classes = len(load_manifest(data)["classes"])
    if len(members) < 2:
        raise UserError("the guide needs two or more uni-modal checkpoints (--member MODALITY=CKPT)")
    ckpt = load_checkpoint(joint)
    view = saved_views(joint, ckpt)
    fused = _model(joint, split, data, view, batch_size, num_workers, "joint model")
    ensemble = load_members(members, num_classes, torch.device("cpu"), view)  # on the joint model's views
    names = sorted(ensemble)
    uni = collect(forward_fn(ensemble), data, split, view, names, batch_size, num_workers, torch.device("cpu"))
    evidence = {f"unimodal_{m}": top1(uni["logits"][:, i], uni["labels"]) for i, m in enumerate(names)}
    evidence["ume"] = top1(combine(uni["logits"], "logits", torch.full((len(names),), 1 / len(names))), uni["labels"])
    evidence["joint"] = top1(fused["logits"], fused["labels"])
    choice, reason = paper_rule(evidence, fused["fusion"], split)
    result = {"split": split, "evidence": evidence, "choice": choice, "reason": reason,
              "joint_fusion": fused["fusion"], "members": members, "joint": joint}
    if umt is not None:
        distilled = _model(umt, split, data, view, batch_size, num_workers, "UMT model")
        evidence["umt"] = top1(distilled["logits"], distilled["labels"])
        ranked = sorted(PREFERENCE, key=lambda k: (-evidence[k], PREFERENCE.index(k)))
        best, runner = ranked[0], ranked[1]
        result.update(umt=umt, recommendation=best, recommendation_reason=(
            f"{best.upper()} {evidence[best]:.3f} on {split} is the best of UME {evidence['ume']:.3f}, joint "
            f"{evidence['joint']:.3f} and UMT {evidence['umt']:.3f} (margin over {runner.upper()}: "
            f"{evidence[best] - evidence[runner]:+.3f}; ties go to the cheaper: UME, then joint)"))
    return result


def train_missing(config: str, overrides: list[str], data: str, out: str, members: dict[str, str],
                  joint: str | None, umt: str | None) -> tuple[dict[str, str], str, str]:
    """Train, from a config, the uni-modal, joint and UMT (online teachers: the uni-modal models) models
    not given; they are kept in OUT and reused on a rerun."""
    from .train import run  # the trainer, only when something must be trained

    base = replace(config_files.load(config, [f"data.path={data}", f"run.out={out}", *overrides]),
                   cache=None, teachers={}, members={})
    wanted = {m: ("unimodal", (m,)) for m in base.modalities if m not in members}
    if joint is None:
        wanted["joint"] = ("joint", base.modalities)
    paths = {}

    def trained(name: str, **how) -> str:
        paths[name] = str(Path(out) / name / "model.pt")
        if not Path(paths[name]).is_file():
            print(f"umt-guide: training {name} ({how['method']}) into {Path(out) / name}")
            run(replace(base, out=str(Path(out) / name), **how))
        return paths[name]

    for name, (method, modalities) in wanted.items():
        trained(name, method=method, modalities=modalities)
    members = {**members, **{m: paths[m] for m in base.modalities if m in paths}}
    umt = umt or trained("umt", method="umt", modalities=base.modalities, teachers=dict(members))
    return members, joint or paths["joint"], umt


def report(result: dict) -> str:
    """guide.md: the evidence table, the recommendation (with UMT measured) and the paper's rule."""
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in result["evidence"].items())
    paper = f"Paper's rule (UME vs joint): **{result['choice'].upper()}** — {result['reason']}."
    verdict = (f"**Recommendation: {result['recommendation'].upper()}** — {result['recommendation_reason']}.\n\n"
               f"{paper}\n" if "recommendation" in result else
               f"**Recommendation (paper's rule; give --umt or --train-missing to measure UMT too): "
               f"{result['choice'].upper()}** — {result['reason']}.\n")
    return (f"# umt guide\n\n| model ({result['split']}) | top-1 |\n|---|---|\n{rows}\n\n{verdict}"
            f"(joint model's fusion head: {result['joint_fusion']})\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="umt-guide", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--member", action="append", default=[], metavar="MODALITY=CKPT", help="uni-modal model, per modality")
    p.add_argument("--joint", metavar="CKPT", help="joint (late-fusion) model checkpoint")
    p.add_argument("--umt", metavar="CKPT", help="UMT model checkpoint: also measure it and recommend the best of "
                   "UME, UMT and joint (--train-missing trains one with the members as online teachers)")
    p.add_argument("--train-missing", metavar="CONFIG", help="train the uni-modal, joint and UMT (online "
                   "teachers: the uni-modal models) models not given, with this YAML config, into --out (models "
                   "already there are reused)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="overrides for --train-missing")
    p.add_argument("--split", default="val", help="held-out split to decide on (default val; test is refused)")
    p.add_argument("--out", help="directory for guide.json and guide.md")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)

    def body() -> None:
        members, joint, umt = parse_assignments(args.member, "--member"), args.joint, args.umt
        if args.train_missing:
            if not args.out:
                raise UserError("--train-missing needs --out for the models it trains")
            members, joint, umt = train_missing(args.train_missing, args.set, args.data, args.out, members, joint, umt)
        if joint is None:
            raise UserError("give --joint CKPT, or --train-missing CONFIG to train it")
        result = guide(args.data, members, joint, args.split, num_workers=args.workers, umt=umt)
        text = report(result)
        print(text)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "guide.json").write_text(json.dumps(result, indent=1) + "\n")
            (Path(args.out) / "guide.md").write_text(text)

    run_cli("umt-guide", body)


if __name__ == "__main__":
    main()
