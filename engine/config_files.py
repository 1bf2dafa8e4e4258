"""YAML run configs: small files over built-in defaults, dotted overrides, strict checking.

A config file groups TrainConfig's settings in sections (the names users edit); each method's
knobs have their own section, named after the method ("-" as "_"), read only by that method and declared in
its module (`Options`, engine/options.py; `umt-train --print-config` shows them all):

    data:   path, backend, finish, workers, bad_samples, bad_samples_limit, view_seed, num_views, view: {frames, ...},
            test_clips, test_crops
    model:  modalities, width, fusion (null: the method's)
    optim:  name (adamw | sgd | null: the method's), epochs, batch_size, global_batch, grad_accum, max_steps,
            precision, and each optimiser's own block:
            adamw: {lr, weight_decay}
            sgd:   {lr, momentum, weight_decay, nesterov}
            (lr null: the optimiser's default, engine/methods `default_lr`)
    method: name
    umt, ogm_ge, mmpareto, ...: each method's own settings (umt: lambda, distill, projector, cache, ...)
    run:    out, seed, log_every, checkpoint_every, resume, select, probe, probe_every, log_with

A config serves either optimiser: a run reads the block of its optimiser (optim.name, or the method's
official one when that is null) and ignores the other; an AdamW run keeps SGD's momentum and nesterov
at their defaults; `optim.lr` and `optim.weight_decay` are refused with the per-optimiser spelling. A saved config.yaml holds the block of the optimiser the run trained with.

`umt-train --config configs/kinetics400.yaml optim.adamw.lr=0.01 run.out=runs/k400-umt` merges defaults,
then the file, then the overrides (values parsed as YAML), then the flags given beside --config (engine/cli.py:
`--config F --method ogm-ge --epochs 3`, a loop over methods' command). An unknown key or a value of the wrong
type is an error naming the key and where it came from. Each run saves the resolved config.
"""
from __future__ import annotations

import types
import typing
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import yaml

from umt.loaders.stored.views import ViewSpec

from .config import SHARED_SETTINGS, ConfigError, TrainConfig
from .methods import SETTINGS, run_optimizer

SHARED = ("data", "model", "optim", "method", "run")  # the sections every trainable method reads
# section → {key: TrainConfig field}: the shared sections, then each method's own (named after it), then `run`
SECTIONS: dict[str, dict[str, str]] = {
    section: {s.key: s.attr for s in (*SHARED_SETTINGS, *SETTINGS) if s.section == section and s.key}
    for section in dict.fromkeys([*SHARED[:-1], *(s.section for s in SETTINGS), SHARED[-1]])}
# Each optimiser's settings, in its block of `optim` (optim.adamw.lr, optim.sgd.momentum, ...).
OPTIMISERS: dict[str, dict[str, str]] = {
    "adamw": {"lr": "lr", "weight_decay": "weight_decay"},
    "sgd": {"lr": "lr", "momentum": "momentum", "weight_decay": "weight_decay", "nesterov": "nesterov"},
}
_OPTIMISER_FIELDS = frozenset(f for keys in OPTIMISERS.values() for f in keys.values())
_MOVED = {f"optim.{k}": f"optim.{' or optim.'.join(f'{o}.{k}' for o in OPTIMISERS if k in OPTIMISERS[o])}"
          for k in ("lr", "weight_decay", "momentum", "nesterov")}
_FIELD_OF = {(s, k): f for s, keys in SECTIONS.items() for k, f in keys.items()}
_KEY_OF = {f: key for key, f in _FIELD_OF.items()}
assert sorted([*_FIELD_OF.values(), *_OPTIMISER_FIELDS]) == sorted(f.name for f in fields(TrainConfig)), \
    "every setting in one section"
# Who reads what, declared once: every trainable method reads the shared sections, a method's own section
# (named after it, "-" as "_") is read by that method alone, and `ume`, which evaluates and never trains,
# reads only EVALUATION of the shared sections. umt-train warns of a flag the chosen method does not read (engine/cli.py `_unread`).
EVALUATION = frozenset({"data", "out", "method", "view", "batch_size", "num_workers", "probe"})


def settings_read(method: str) -> frozenset[str]:
    """The TrainConfig fields that `method` reads."""
    own = SECTIONS.get(method.replace("-", "_"), {}).values()
    shared = EVALUATION if method == "ume" else {f for s in SHARED for f in SECTIONS[s].values()} | _OPTIMISER_FIELDS
    return frozenset(shared | set(own))


def reader(name: str) -> str:
    """Who reads a setting: the method whose section holds it, or the trainable methods (the shared sections)."""
    section = "optim" if name in _OPTIMISER_FIELDS else next(s for (s, _), f in _FIELD_OF.items() if f == name)
    return "the trainable methods" if section in SHARED else section.replace("_", "-")


def to_sections(cfg: TrainConfig) -> dict[str, dict[str, Any]]:
    """The config's sections; `optim` holds the block of cfg's optimiser (both blocks when it is unset)."""
    flat = cfg.to_dict()
    sections = {s: {k: flat[f] for k, f in keys.items()} for s, keys in SECTIONS.items()}
    for name in [cfg.optimizer] if cfg.optimizer in OPTIMISERS else OPTIMISERS:
        sections["optim"][name] = {k: flat[f] for k, f in OPTIMISERS[name].items()}
    return sections


def to_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(to_sections(cfg), sort_keys=False)


def _merge(base: dict, update: dict, where: str, prefix: str = "") -> None:
    for key, value in update.items():
        name = f"{prefix}{key}"
        if key not in base and name in _MOVED:
            raise ConfigError(f"{where}: {name!r} is now set per optimiser: {_MOVED[name]}")
        if key not in base:
            known = ", ".join(sorted(base))
            raise ConfigError(f"{where}: unknown key {name!r} (known here: {known})")
        if isinstance(base[key], dict) and key not in ("teachers", "members") and isinstance(value, dict):
            _merge(base[key], value, where, name + ".")
        elif isinstance(base[key], dict) and key not in ("teachers", "members"):
            raise ConfigError(f"{where}: {name!r} is a section; give it keys, not {value!r}")
        else:
            base[key] = value


def override(text: str) -> dict:
    """'optim.epochs=30' → {'optim': {'epochs': 30}}."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not KEY=VALUE (e.g. optim.adamw.lr=0.01)")
    nested: dict = yaml.safe_load(value) if value else None
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return nested


def _check_type(name: str, value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        return _check_type(name, value, next(o for o in options if o is not type(None)), where)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, str, bool) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    if origin is tuple and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    if origin is dict and isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return dict(value)
    if hint is ViewSpec and isinstance(value, dict):
        view_hints = typing.get_type_hints(ViewSpec)
        return ViewSpec(**{k: _check_type(f"{name}.{k}", v, view_hints[k], where) for k, v in value.items()})
    raise ConfigError(f"{where}: {name} must be {getattr(hint, '__name__', hint)}, got {value!r}")


def load(path: str | None, overrides: list[str], flags: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults ← YAML file ← overrides ← flags (TrainConfig fields → values, `view` a dict of ViewSpec fields: the
    flags given beside --config), checked key by key and type by type. A flagged lr, weight decay, momentum or
    Nesterov is the run's, whichever optimiser block the run reads."""
    flags = dict(flags or {})
    nested = to_sections(TrainConfig(data="", out=""))
    nested["data"]["view"] = asdict(ViewSpec())
    if path:
        if not Path(path).is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected sections {sorted(SECTIONS)} at the top level")
        _merge(nested, loaded, str(path))
    for text in overrides:
        _merge(nested, override(text), f"override {text!r}")
    nested["data"]["view"].update(flags.pop("view", {}))
    optimiser_flags = {name: flags.pop(name) for name in list(flags) if name in _OPTIMISER_FIELDS}
    for name, value in flags.items():
        section, key = _KEY_OF[name]
        nested[section][key] = value
    hints = typing.get_type_hints(TrainConfig)
    values = {}
    for (section, key), name in _FIELD_OF.items():
        values[name] = _check_type(f"{section}.{key}", nested[section][key], hints[name], path or "overrides")
    blocks = {o: {name: _check_type(f"optim.{o}.{key}", nested["optim"][o][key], hints[name], path or "overrides")
                  for key, name in keys.items()} for o, keys in OPTIMISERS.items()}
    # the run's optimiser's block (an AdamW run keeps SGD's momentum and nesterov at their defaults); an unknown
    # optimiser name reads none, and validate() refuses it
    values.update(blocks.get(run_optimizer(values["method"], values["optimizer"]) or "adamw", {}))  # ume: adamw's
    values.update(optimiser_flags)
    if not values["data"] or not values["out"]:
        raise ConfigError("data.path and run.out must be set (in the file or as overrides)")
    return TrainConfig(**values)

