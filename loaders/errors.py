"""The one base class for errors caused by a user's input, and the CLI wrapper that reports them.

Such errors end a command with a one-line message naming the file and the problem (exit status 2),
never a traceback; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from typing import Callable


class UserError(ValueError):
    """Bad input: a missing or malformed file, an inconsistent option, a mismatched cache."""


def parse_assignments(items: list[str], flag: str) -> dict[str, str]:
    """['video=a.pt', 'audio=b.pt'] → {'video': 'a.pt', 'audio': 'b.pt'} (repeated NAME=PATH options)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UserError(f"{flag} expects NAME=PATH, got {item!r}")
        out[key] = value
    return out


def run_cli(prog: str, body: Callable[[], None]) -> None:
    try:
        body()
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
