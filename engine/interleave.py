"""Comparing the speed of alternatives on a machine whose load changes: short timed segments of each, interleaved.

One run's samples/s moves with whatever else the machine does (the demo once gave UMT 186 samples/s against
joint's 33 under load, 154 against 153 on a quiet machine). Timed back to back within a repeat, two
alternatives see the same load: their ratio is taken within each repeat and reported as its median and
range over the repeats. Within a repeat the order rotates, so that no alternative always runs first.
"""
from __future__ import annotations

import statistics
from typing import Sequence, TypeVar

T = TypeVar("T")


def rotated(names: Sequence[T], repeat: int) -> list[T]:
    """The order of the alternatives in repeat `repeat`: rotated by one each repeat."""
    shift = repeat % len(names)
    return [*names[shift:], *names[:shift]]


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max over repeats."""
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def ratio_spread(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, float]:
    """Median, min and max over repeats of numerator[r] / denominator[r] (values of the same repeat)."""
    return spread([a / b for a, b in zip(numerator, denominator, strict=True)])
