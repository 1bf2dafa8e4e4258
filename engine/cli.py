"""`umt-train`: train a uni-modal, joint or UMT model, or evaluate a UME, into a run directory.

Single process: `umt-train ...`. Several processes or GPUs: `accelerate launch [...] -m umt.engine.cli ...`.
"""
from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import fields
from typing import Any

from umt.loaders.errors import parse_assignments, run_cli
from umt.loaders.stored.views import ViewSpec

from . import config_files, ume
from .config import CHOICES, ConfigError, TrainConfig
from .methods import ADAMW_LR, REGISTRY, SETTINGS, SGD_LR_PER_64, authors_rates, resolved
from .options import Setting

def _epilog() -> str:
    lines = [f"  {name:<9} {cls.summary}" for name, cls in REGISTRY.items()]
    lines.append(f"  {'ume':<9} {ume.SUMMARY}")
    return "methods:\n" + "\n".join(lines) + "\n\n" + EXAMPLES


EXAMPLES = """examples:
  umt-train --data data/synth --method unimodal --modality video --out runs/video
  umt-train --data data/synth --method umt --cache runs/cache.zarr --out runs/umt
  umt-train --config configs/kinetics400.yaml method.name=umt umt.cache=k400.zarr run.out=runs/k400-umt
"""


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The run configuration of a command line (flags the method does not read dropped: `parse_run`)."""
    return parse_run(argv)[0]


def parse_run(argv: list[str] | None = None) -> tuple[TrainConfig, list[str]]:
    """The run configuration, and a warning for each given flag the method does not read."""
    p = argparse.ArgumentParser(prog="umt-train", description="Train multi-modal classifiers with UMT, UME and "
                                "their baselines; writes config.yaml, metrics.jsonl, model.pt, results.json "
                                "and report.md to --out.", epilog=_epilog(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = TrainConfig(data="", out="")
    p.add_argument("--config", help="YAML config (see configs/); then set anything else as KEY=VALUE overrides")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration as a YAML config "
                   "file (the method's fusion, optimiser and learning rate filled in, for one process) and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="with --config: dotted overrides, e.g. "
                   "optim.adamw.lr=0.01 run.out=runs/x")
    p.add_argument("--data", help="shard directory (umt-data synth / pack)")
    p.add_argument("--out", help="run directory")
    p.add_argument("--method", choices=CHOICES["method"], default=d.method)
    p.add_argument("--modality", action="append", help="modality to use, repeatable (default: video and audio)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per process (evaluation always; training "
                   "unless --global-batch is set)")
    p.add_argument("--global-batch", type=int, help="training samples per micro-batch over all processes, each "
                   "taking global / processes: the run can then resume on another number of processes")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per optimiser step (windows "
                   "stay inside an epoch; the effective batch is batch size x grad accum x processes)")
    p.add_argument("--precision", choices=CHOICES["precision"], default=d.precision,
                   help="mixed precision (auto: bf16 on GPU, fp32 on CPU)")
    sgd = [name for name, cls in REGISTRY.items() if cls.optimizer == "sgd"]
    p.add_argument("--optim", dest="optimizer", choices=CHOICES["optimizer"], help="optimiser (default: the one "
                   f"of the method's official code: sgd for {', '.join(sgd)}; adamw for the others)")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--nesterov", action="store_true", help="SGD with Nesterov momentum")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate, cosine decay (default: AdamW "
                   f"{ADAMW_LR:g}; SGD {SGD_LR_PER_64:g} per 64 samples of an optimiser step's batch, the linear "
                   "scaling rule's 0.1 per 256, the batch being the global batch (batch size x processes without "
                   "--global-batch) times --grad-accum; every method alike, as the authors' own rates — "
                   f"{authors_rates()} — come with 70-800 epochs of step decay and barely train in a few epochs)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--width", type=int, default=d.width, help="ResNet-18 base width; features are 8x this "
                   "(64 gives the paper's 512-d)")
    own_head = ", ".join(f"{name}: {cls.fusions[0]}" for name, cls in REGISTRY.items() if cls.fusions[0] != "linear")
    p.add_argument("--fusion", choices=CHOICES["fusion"], help="fusion head (default: the method's; linear but "
                   f"{own_head}): linear or "
                   "mlp on the concatenated features (linear: the paper's; mlp can read paired cues), sum of "
                   "per-modality linear heads' logits, or shared: one linear head for every modality, their "
                   "logits weighted per sample by exp(-entropy) (MLA's; needs equal feature dims)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--view-seed", type=int, help="seed of the augmented views (default: --seed, or the cache's)")
    p.add_argument("--num-views", type=int, help="train on views 0..V-1 only (default: fresh views each "
                   "epoch, or the cache's V)")
    p.add_argument("--test-clips", type=int, default=d.test_clips, help="test protocol: T temporal windows per "
                   "sample, evenly spaced from the clip's start to its end (audio windows aligned), logits "
                   "averaged over T x C views (Kinetics literature: 10 x 3; default one centre view)")
    p.add_argument("--test-crops", type=int, default=d.test_crops, help="test protocol: C spatial crops per "
                   "window, along the frame's long side (3: left/centre/right; 1: centre)")
    p.add_argument("--select", choices=CHOICES["select"], default=d.select,
                   help="final model: the last epoch's, or the epoch with the best validation top-1 (early stopping "
                        "without stopping; every method alike)")
    p.add_argument("--backend", choices=CHOICES["backend"], default=d.backend,
                   help="training-loader decoding of video/audio: cpu (PyAV workers), dali (NVDEC on the GPU; "
                        "not yet run on a GPU: README, Status), auto (dali when a GPU and DALI are present)")
    p.add_argument("--finish", choices=CHOICES["finish"], default=d.finish,
                   help="cpu backend: where each view is resized, colour-converted and turned into a log-mel: in the "
                        "decoding workers (CPU), or on the training device, batched (the workers only decode: at "
                        "224 px / 16 frames / 10 s audio they ship 1.5x the clips a second; same views to the bit, "
                        "log-mels to float rounding; on a CPU it is slow, about 100 ms a view: for checks); auto: "
                        "device when training on a GPU (not yet run on a GPU: README, Status)")
    p.add_argument("--workers", dest="num_workers", type=int, default=d.num_workers, help="decoding processes")
    p.add_argument("--bad-samples", choices=CHOICES["bad_samples"], default=d.bad_samples,
                   help="a training sample that fails to decode: skip (another sample of its batch takes its place, "
                        "so every rank runs the planned batches; each is named in a warning and counted in "
                        "metrics.jsonl, results.json and report.md) or error (stop, naming shard and sample). "
                        "cpu backend; dali, image and vector sets stop at one. Evaluation always stops")
    p.add_argument("--bad-samples-limit", type=int, default=d.bad_samples_limit,
                   help="with skip: stop after this many damaged samples in a row (the data is plainly broken)")
    groups = {method: p.add_argument_group(f"{method} options") for method in dict.fromkeys(s.method for s in SETTINGS)}
    for setting in SETTINGS:  # each method's own, declared in its module
        _add_option(groups[setting.method], setting)
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (each of --grad-accum "
                   "micro-batches)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="optimiser steps between "
                   "training-state checkpoints in OUT/checkpoints/last.pt (default: end of each epoch)")
    p.add_argument("--resume", metavar="latest|PATH", help="continue a killed run: 'latest' resumes OUT's last "
                   "checkpoint (and starts fresh if there is none); the configuration must be the same")
    p.add_argument("--log-every", type=int, default=d.log_every, help="optimiser steps between loss records")
    p.add_argument("--log-with", choices=CHOICES["log_with"], default=d.log_with, help="Accelerate tracker that also "
                   "receives the metrics (default tensorboard, in OUT/tensorboard; metrics.jsonl is always written; "
                   "others need their package installed)")
    p.add_argument("--no-probe", dest="probe", action="store_false", help="skip the final linear probes")
    p.add_argument("--probe-every", type=int, default=d.probe_every, help="also probe each encoder on the "
                   "validation split every N epochs (costs one pass over the training split)")
    for f in fields(ViewSpec):
        kind = {"action": argparse.BooleanOptionalAction} if isinstance(f.default, bool) else {"type": type(f.default)}
        p.add_argument("--" + f.name.replace("_", "-"), default=f.default, **kind,
                       help=f"view: {f.name.replace('_', ' ')} (default {f.default})")
    a = vars(p.parse_args(argv))
    a.pop("print_config")  # main's
    config, overrides = a.pop("config"), a.pop("overrides")
    if config or overrides:
        changed = sorted(k for k, v in a.items() if v != p.get_default(k))
        if changed or not config:
            raise ConfigError("use either --config FILE with KEY=VALUE overrides, or option flags, not both "
                              f"(flags given: {', '.join(changed) or 'none'}; overrides need --config)")
        return config_files.load(config, overrides), []
    if not a["data"] or not a["out"]:
        raise ConfigError("--data and --out are required (or use --config FILE)")
    ignored = _unread(p, a, sys.argv[1:] if argv is None else argv)
    view = ViewSpec(**{f.name: a.pop(f.name) for f in fields(ViewSpec)})
    a["modalities"] = tuple(a.pop("modality") or d.modalities)
    for setting in SETTINGS:
        kind = typing.get_origin(setting.type)
        if kind is dict:
            a[setting.attr] = parse_assignments(a[setting.attr], setting.flag)
        elif kind is tuple:
            a[setting.attr] = tuple(a[setting.attr])
    return TrainConfig(view=view, **a), ignored


def _add_option(p: argparse._ActionsContainer, setting: Setting) -> None:
    """A method setting's flag, from its declaration: a switch for a bool, a repeatable flag for a tuple or a
    MODALITY=CKPT mapping, else a typed value."""
    kind: dict[str, Any] = {"type": setting.base_type, "choices": setting.choices, "default": setting.default}
    if setting.base_type is bool:
        kind = {"action": "store_false" if setting.default else "store_true"}
    elif typing.get_origin(setting.type) in (tuple, dict):
        kind = {"action": "append", "default": [], "metavar": setting.metavar}
    p.add_argument(setting.flag, dest=setting.attr, help=setting.help, **kind)


def main(argv: list[str] | None = None) -> None:
    from .train import run

    def body() -> None:
        cfg, ignored = parse_run(argv)
        for line in ignored:
            print(f"umt-train: warning: {line}", file=sys.stderr)
        if "--print-config" in (sys.argv[1:] if argv is None else argv):
            cfg.validate()
            print(config_files.to_yaml(resolved(cfg)), end="")
            return
        results = run(cfg, ignored)
        if results:
            print(f"umt-train: test top-1 {results['test_top1']:.3f}  probes {results['probe']}")

    run_cli("umt-train", body)



def _unread(parser: argparse.ArgumentParser, given: dict, argv: list[str]) -> list[str]:
    """Flags given that the chosen method does not read (`config_files.settings_read`): one whose value equals what
    the method uses anyway passes (UME's --modality and --width, equal to its members'); one that conflicts with it
    is refused, naming both values; the others are returned as one-line warnings (the run ignores them)."""
    view = {f.name for f in fields(ViewSpec)}
    field = {"modality": "modalities"}
    method = given["method"]
    read = config_files.settings_read(method)
    unread = [(action.option_strings[0], action.dest, field.get(action.dest, "view" if action.dest in view
                                                                 else action.dest))
              for action in parser._actions if action.option_strings and action.dest in given
              and given[action.dest] != action.default]
    warnings = []
    first = {arg.partition("=")[0]: i for i, arg in reversed(list(enumerate(argv)))}
    for flag, dest, name in sorted(unread, key=lambda u: first.get(u[0], len(argv))):  # in the command line's order
        if name in read:
            continue
        uses = _ume_uses(given, name) if method == "ume" else None
        if uses is not None:
            ours = sorted(given[dest]) if isinstance(given[dest], list) else given[dest]
            if ours != uses:
                raise ConfigError(f"--method ume uses its members' {name}, {uses}, not {flag} {ours}: leave it out "
                                  "or give members that match")
            continue
        warnings.append(f"--method {method} does not read {flag} (read by {config_files.reader(name)}); ignored")
    return warnings


def _ume_uses(given: dict, name: str) -> Any:
    """What UME uses for a setting it takes from its --member checkpoints (modalities, width), else None."""
    members = parse_assignments(given["members"], "--member")
    if name == "modalities":
        return sorted(members)
    if name == "width" and members:
        from .checkpoint import load_checkpoint  # torch: only when a width is to be checked
        widths = {load_checkpoint(path)["model_config"]["width"] for path in members.values()}
        return widths.pop() if len(widths) == 1 else sorted(widths)
    return None


if __name__ == "__main__":
    main()
