"""`umt-guide`: the paper's choice between UME and UMT, with the evidence behind it.

Train the uni-modal models and a joint model first (or let `--train-missing CONFIG` do it). On held-out (validation) data: if the
uni-modal ensemble is at least as accurate as joint training, the cross-modal (paired) features
that only joint training can learn matter little → use UME; otherwise the joint model knows
something the ensemble cannot → keep joint training and repair its uni-modal features with UMT.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from umt.loaders.errors import UserError, parse_assignments, run_cli
from umt.loaders.shards import load_manifest
from umt.loaders.views import ViewSpec

from . import config_files
from .checkpoint import load_model
from .evaluate import collect, top1
from .ume import combine, forward_fn, load_members


@torch.no_grad()
def guide(data: str, members: dict[str, str], joint: str, split: str = "val", batch_size: int = 64,
          num_workers: int = 1) -> dict:
    num_classes = len(load_manifest(data)["classes"])
    if len(members) < 2:
        raise UserError("the guide needs two or more uni-modal checkpoints (--member MODALITY=CKPT)")
    device = torch.device("cpu")
    joint_model, ckpt = load_model(joint)
    if len(joint_model.cfg.modalities) < 2:
        raise UserError(f"{joint} is not a multi-modal (joint) model")
    view, seed = ViewSpec(**ckpt["view"]), ckpt.get("view_seed", 0)
    ensemble = load_members(members, num_classes, device, view)  # the members must share the joint model's views
    names = sorted(ensemble)
    uni = collect(forward_fn(ensemble), data, split, view, names, seed, batch_size, num_workers, device)
    fused = collect(joint_model.eval(), data, split, view, list(joint_model.cfg.modalities), seed, batch_size,
                    num_workers, device)
    evidence = {f"unimodal_{m}": top1(uni["logits"][:, i], uni["labels"]) for i, m in enumerate(names)}
    evidence["ume"] = top1(combine(uni["logits"], "logits", torch.full((len(names),), 1 / len(names))), uni["labels"])
    evidence["joint"] = top1(fused["logits"], fused["labels"])
    choice = "ume" if evidence["ume"] >= evidence["joint"] else "umt"
    reason = (f"UME {evidence['ume']:.3f} >= joint {evidence['joint']:.3f} on {split}: paired features add little; "
              "use the uni-modal ensemble" if choice == "ume" else
              f"joint {evidence['joint']:.3f} > UME {evidence['ume']:.3f} on {split}: joint training learns paired "
              "features the ensemble cannot; use UMT to restore its uni-modal features")
    return {"split": split, "evidence": evidence, "choice": choice, "reason": reason,
            "joint_fusion": joint_model.cfg.fusion, "members": members, "joint": joint}


def train_missing(config: str, overrides: list[str], data: str, out: str, members: dict[str, str],
                  joint: str | None) -> tuple[dict[str, str], str]:
    """Train, from a config, the uni-modal and joint models not given (kept in OUT; reused on rerun)."""
    from .train import run  # the trainer, only when something must be trained

    base = replace(config_files.load(config, [f"data.path={data}", f"run.out={out}", *overrides]),
                   cache=None, teachers={}, members={})
    wanted = {m: ("unimodal", (m,)) for m in base.modalities if m not in members}
    if joint is None:
        wanted["joint"] = ("joint", base.modalities)
    paths = {}
    for name, (method, modalities) in wanted.items():
        paths[name] = str(Path(out) / name / "model.pt")
        if not Path(paths[name]).is_file():
            print(f"umt-guide: training {name} ({method}) into {Path(out) / name}")
            run(replace(base, out=str(Path(out) / name), method=method, modalities=modalities))
    return {**members, **{m: paths[m] for m in base.modalities if m in paths}}, joint or paths["joint"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="umt-guide", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--member", action="append", default=[], metavar="MODALITY=CKPT", help="uni-modal model, per modality")
    p.add_argument("--joint", metavar="CKPT", help="joint (late-fusion) model checkpoint")
    p.add_argument("--train-missing", metavar="CONFIG", help="train the uni-modal and joint models not given, "
                   "with this YAML config, into --out (models already there are reused)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="overrides for --train-missing")
    p.add_argument("--split", default="val", help="held-out split to decide on (default val; never test)")
    p.add_argument("--out", help="directory for guide.json and guide.md")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)

    def body() -> None:
        members, joint = parse_assignments(args.member, "--member"), args.joint
        if args.train_missing:
            if not args.out:
                raise UserError("--train-missing needs --out for the models it trains")
            members, joint = train_missing(args.train_missing, args.set, args.data, args.out, members, joint)
        if joint is None:
            raise UserError("give --joint CKPT, or --train-missing CONFIG to train it")
        result = guide(args.data, members, joint, args.split, num_workers=args.workers)
        rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in result["evidence"].items())
        text = (f"# umt guide\n\n| model ({result['split']}) | top-1 |\n|---|---|\n{rows}\n\n"
                f"**Recommendation: {result['choice'].upper()}** — {result['reason']}.\n"
                f"(joint model's fusion head: {result['joint_fusion']})\n")
        print(text)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "guide.json").write_text(json.dumps(result, indent=1) + "\n")
            (Path(args.out) / "guide.md").write_text(text)

    run_cli("umt-guide", body)


if __name__ == "__main__":
    main()
