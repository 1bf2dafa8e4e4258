"""The tables of docs/methods.md, generated from the method registry: `python -m umt.engine.method_docs` rewrites
them (tests/test_config.py checks that the file is in step)."""
from __future__ import annotations

from pathlib import Path

from . import ume
from .methods import ADAMW_LR, REGISTRY, SETTINGS, default_lr

BEGIN = "<!-- generated from the registry by engine/method_docs.py; do not edit by hand -->"
END = "<!-- end of the generated tables -->"
DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _value(value: object) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def tables() -> str:
    """A table of the methods (fusion heads, optimiser, the authors' learning rate) and one of their settings."""
    lines = ["| method | fusion (default first) | optimiser | learning rate (the authors') | what it does |",
             "|---|---|---|---|---|"]
    for name, cls in REGISTRY.items():
        lr = f"{ADAMW_LR:g}" if cls.optimizer == "adamw" else f"{default_lr('sgd', 64):g} per 64 samples"
        authors = f" ({cls.authors_lr:g})" if cls.authors_lr is not None else ""
        lines.append(f"| `{name}` | {', '.join(cls.fusions)} | {cls.optimizer} | {lr}{authors} | "
                     f"{_cell(cls.summary)} |")
    lines.append(f"| `ume` | — | — | — | {_cell(ume.SUMMARY)} |")
    lines += ["", "| YAML key | flag | default | what it sets |", "|---|---|---|---|"]
    for s in SETTINGS:
        lines.append(f"| `{s.section}.{s.key}` | `{s.flag}` | {_value(s.default)} | {_cell(s.help)} |")
    return "\n".join(lines)


def rewritten(text: str) -> str:
    """`text` (docs/methods.md) with the part between BEGIN and END replaced by today's tables."""
    head, begin, rest = text.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"docs/methods.md lacks the markers {BEGIN!r} and {END!r}")
    return f"{head}{BEGIN}\n{tables()}\n{END}{tail}"


def main() -> None:
    DOC.write_text(rewritten(DOC.read_text()))


if __name__ == "__main__":
    main()
