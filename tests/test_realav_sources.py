"""benchmarks/realav_sources.py's bootstrap over sources: its SE is the spread of a figure over draws of the sources."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import realav_sources  # noqa: E402


def test_sources_that_all_score_alike_leave_no_spread():
    correct = np.array([1, 0, 1, 0] * 10, bool)              # every source: half its clips right
    sources = [f"s{i // 4}" for i in range(40)]
    assert realav_sources.source_se(correct, sources, ["c"] * 40) == 0.0


def test_the_se_of_right_or_wrong_sources_is_the_binomial_se_of_the_sources_not_of_the_clips():
    n, clips = 30, 20                                          # 30 sources of 20 clips: 12 all right, 18 all wrong
    correct = np.repeat(np.arange(n) < 12, clips)
    sources = [f"s{i}" for i in np.repeat(np.arange(n), clips)]
    se = realav_sources.source_se(correct, sources, ["c"] * (n * clips))
    assert abs(se - np.sqrt(0.4 * 0.6 / n)) < 0.1 * np.sqrt(0.4 * 0.6 / n)
    assert se > 3 * np.sqrt(0.4 * 0.6 / (n * clips))


def test_sources_are_drawn_within_their_class():
    """Two classes of one source each: a draw can only pick each class's own source, so nothing moves."""
    correct = np.array([True] * 5 + [False] * 5)
    assert realav_sources.source_se(correct, ["a"] * 5 + ["b"] * 5, ["x"] * 5 + ["y"] * 5) == 0.0


def test_a_folder_without_the_uni_modal_runs_is_named(tmp_path, monkeypatch):
    import pytest
    (tmp_path / "realav-seed0" / "unimodal-video").mkdir(parents=True)
    monkeypatch.setattr(sys, "argv", ["realav_sources.py", "--runs", str(tmp_path), "--raw", str(tmp_path),
                                      "--data", str(tmp_path)])
    with pytest.raises(SystemExit, match="unimodal-video/model.pt, .*unimodal-audio/model.pt"):
        realav_sources.main()
