"""The rule of interleaved timing (engine/interleave.py), shared by the demo and benchmarks/train_throughput.py."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from umt.engine.interleave import ratio_spread, rotated


@given(st.lists(st.text(min_size=1), min_size=1, max_size=5, unique=True), st.integers(0, 50))
def test_each_repeat_runs_every_alternative_once_and_the_first_one_rotates(names, repeat):
    order = rotated(names, repeat)
    assert sorted(order) == sorted(names)
    assert order[0] == names[repeat % len(names)]  # over len(names) repeats, each alternative runs first once


def test_the_ratio_is_taken_within_each_repeat():
    # joint at 100 then 50 samples/s (the machine got busy), UMT at 90 then 45: 1.11 in both repeats
    assert ratio_spread([100, 50], [90, 45]) == {"median": 1.111, "min": 1.111, "max": 1.111}
    assert ratio_spread([3, 1, 2], [1, 1, 1]) == {"median": 2.0, "min": 1.0, "max": 3.0}
    with pytest.raises(ValueError):
        ratio_spread([1, 2], [1])  # values of different repeats never pair up
