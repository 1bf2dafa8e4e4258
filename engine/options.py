"""A method's settings, declared once beside the method: the `option()` fields of its `Options` class.

Each field holds a default and a help text; its YAML key is the field name in the method's own section
(the method's name, "-" as "_"), its TrainConfig field is `prefix_key` (or `attr`; the prefix is the section
unless the class names another), and its flag is that field's name as a flag (or `flag`): OGM-GE's `alpha` is `ogm_ge.alpha`, `TrainConfig.ogm_alpha`, `--ogm-alpha`. The CLI
(engine/cli.py), the config files (engine/config_files.py), the run configuration (engine/config.py) and the
methods table of docs/methods.md are generated from these declarations (`Setting`).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from umt.loaders.errors import UserError


class ConfigError(UserError):
    """A run configuration is inconsistent."""


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None, attr: str | None = None,
           flag: str | None = None, metavar: str | None = None, before: Any = None, section: str | None = None,
           key: str | None = None) -> Any:
    """A field of a method's `Options` (or of the shared settings, engine/config.py, which name their `section` and
    `key`; `flag=""`: none). `before`: what runs did before the setting existed, where that is not its default (a
    checkpoint saved without the setting is compared as if it held this value, engine/resume.py)."""
    meta = {"help": help, "choices": choices, "attr": attr, "flag": flag, "metavar": metavar, "before": before,
            "section": section, "key": key}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class MethodOptions:
    """The base of a method's `Options`: each subclass becomes a frozen dataclass whose TrainConfig fields are
    named `prefix_key`, the prefix by default the method's section (AMCo's sigma: amco_sigma)."""

    prefix: ClassVar[str | None] = None

    def __init_subclass__(cls, prefix: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.prefix = prefix
        dataclass(frozen=True)(cls)


@dataclass(frozen=True)
class Setting:
    """One setting, as every layer names it."""

    method: str        # the method that reads it ("": every trainable method)
    section: str       # its YAML section
    key: str           # its key in that section (None: in each optimiser's block, engine/config_files.py)
    attr: str          # its TrainConfig field
    type: Any          # its type hint
    field: dataclasses.Field
    help: str
    flag: str          # its command-line flag ("": none)
    choices: tuple[str, ...] | None
    metavar: str | None
    before: Any        # None, or what runs did before it existed (`option`)

    @property
    def default(self) -> Any:
        """Its default (None for a setting without one, the run's data and out)."""
        f = self.field
        if f.default is dataclasses.MISSING:
            return None if f.default_factory is dataclasses.MISSING else f.default_factory()
        return f.default

    def new_field(self) -> dataclasses.Field:
        """A fresh field of the same default, for another dataclass (engine/config.py's TrainConfig)."""
        if self.field.default is dataclasses.MISSING:
            return dataclasses.field(default_factory=self.field.default_factory)
        return dataclasses.field(default=self.field.default)

    @property
    def base_type(self) -> Any:
        """The type hint without its None (an int | None setting: int)."""
        args = [a for a in typing.get_args(self.type) if a is not type(None)]
        return args[0] if typing.get_origin(self.type) in (typing.Union, _UnionType) and args else self.type


_UnionType = type(int | None)


def section_of(method: str) -> str:
    """A method's YAML section: its name, "-" as "_"."""
    return method.replace("-", "_")


def settings(method: str, options: type | None) -> list[Setting]:
    """The settings a dataclass of `option` fields declares for `method` (a method's `Options`, or with method ""
    the shared settings); none for None."""
    if options is None:
        return []
    hints = typing.get_type_hints(options)
    prefix = getattr(options, "prefix", "")  # the shared settings: none
    prefix = section_of(method) if prefix is None else prefix
    out = []
    for f in dataclasses.fields(options):
        meta = f.metadata
        key = f.name.rstrip("_") if meta.get("section") is None else meta["key"]  # lambda_: the YAML key `lambda`
        attr = meta.get("attr") or (f"{prefix}_{key}" if prefix else f.name)
        flag = meta["flag"] if meta.get("flag") is not None else \
            ("--no-" if f.default is True else "--") + attr.replace("_", "-")
        out.append(Setting(method, meta.get("section") or section_of(method), key, attr, hints[f.name], f,
                           meta["help"], flag, meta.get("choices"), meta.get("metavar"), meta.get("before")))
    return out
