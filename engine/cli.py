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
from .config import SHARED_SETTINGS, ConfigError, TrainConfig
from .methods import REGISTRY, SETTINGS, resolved
from .options import Setting

SPEC_FIELDS = frozenset(f.name for f in fields(ViewSpec))  # the view flags (--frames, --crop, ...)


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
    """The run configuration, and a warning for each given flag the method does not read. With --config, the flags
    given beside it override the file and its KEY=VALUE overrides (a loop over methods: --method $m)."""
    argv = sys.argv[1:] if argv is None else argv
    p = _parser()
    a = vars(p.parse_intermixed_args(argv))
    a.pop("print_config")  # main's
    config, overrides = a.pop("config"), a.pop("overrides")
    given = _given(argv)
    if config:
        flags = _typed({k: v for k, v in given.items() if k not in SPEC_FIELDS})
        cfg = config_files.load(config, overrides, {**flags, "view": {k: given[k] for k in SPEC_FIELDS & set(given)}})
        members = [f"{m}={path}" for m, path in cfg.members.items()]
        return cfg, _unread(p, {**a, "method": cfg.method, "members": members}, argv, set(given))
    if overrides:
        raise ConfigError(f"KEY=VALUE overrides need --config (got {' '.join(overrides)})")
    if not a["data"] or not a["out"]:
        raise ConfigError("--data and --out are required (or use --config FILE)")
    ignored = _unread(p, a, argv, set(given))
    view = ViewSpec(**{name: a.pop(name) for name in SPEC_FIELDS})
    return TrainConfig(view=view, **_typed(a)), ignored


def _typed(values: dict[str, Any]) -> dict[str, Any]:
    """Flag values as TrainConfig holds them: MODALITY=CKPT mappings as dicts, repeated flags as tuples (none given:
    the setting's default)."""
    out = dict(values)
    for setting in (*SHARED_SETTINGS, *SETTINGS):
        if setting.attr not in out:
            continue
        kind = typing.get_origin(setting.type)
        if kind is dict:
            out[setting.attr] = parse_assignments(out[setting.attr], setting.flag)
        elif kind is tuple:
            out[setting.attr] = tuple(out[setting.attr]) or setting.default
    return out


def _given(argv: list[str]) -> dict[str, Any]:
    """The flags on the command line (abbreviated, negated or equal to their default alike), by destination."""
    p = _parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    given = vars(p.parse_intermixed_args(argv))
    for key in ("config", "overrides", "print_config"):
        given.pop(key, None)
    return given


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="umt-train", description="Train multi-modal classifiers with UMT, UME and "
                                "their baselines; writes config.yaml, metrics.jsonl, model.pt, results.json "
                                "and report.md to --out.", epilog=_epilog(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (see configs/); then set anything else as KEY=VALUE overrides or "
                   "flags (flags win: umt-train --config F --method $m run.out=runs/$m)")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration as a YAML config "
                   "file (the method's fusion, optimiser and learning rate filled in, for one process) and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="with --config: dotted overrides, e.g. "
                   "optim.adamw.lr=0.01 run.out=runs/x")
    for setting in SHARED_SETTINGS:
        if setting.flag:
            _add_option(p, setting)
    groups = {method: p.add_argument_group(f"{method} options") for method in dict.fromkeys(s.method for s in SETTINGS)}
    for setting in SETTINGS:  # each method's own, declared in its module
        _add_option(groups[setting.method], setting)
    for f in fields(ViewSpec):
        kind = {"action": argparse.BooleanOptionalAction} if isinstance(f.default, bool) else {"type": type(f.default)}
        p.add_argument("--" + f.name.replace("_", "-"), default=f.default, **kind,
                       help=f"view: {f.name.replace('_', ' ')} (default {f.default})")
    return p


def _add_option(p: argparse._ActionsContainer, setting: Setting) -> None:
    """A setting's flag, from its declaration: a switch for a bool, a repeatable flag for a tuple or a
    MODALITY=CKPT mapping, else a typed value."""
    kind: dict[str, Any] = {"type": setting.base_type, "choices": setting.choices, "default": setting.default,
                            "metavar": setting.metavar}
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



def _unread(parser: argparse.ArgumentParser, given: dict, argv: list[str], named: set[str]) -> list[str]:
    """Flags on the command line (`named`, by destination; `given`: every setting's value) that the chosen method does
    not read (`config_files.settings_read`): one whose value equals what the method uses anyway passes (UME's
    --modality and --width, equal to its members'); one that conflicts with it is refused, naming both values; the
    others are returned as one-line warnings (the run ignores them)."""
    method = given["method"]
    read = config_files.settings_read(method)
    unread = [(action.option_strings[0], action.dest, "view" if action.dest in SPEC_FIELDS else action.dest)
              for action in parser._actions if action.option_strings and action.dest in named]
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
