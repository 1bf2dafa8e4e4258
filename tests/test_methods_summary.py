"""The methods table's summary (benchmarks/phenomena.py methods_summary): medians, standard errors, the spread in
standard errors and the verdict against joint, on hand-made cells whose answers are known."""
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from phenomena import merged, methods_summary  # noqa: E402

TOP1 = {  # three seeds each: joint is beaten clearly by a, equalled by b run for run, c sits in its noise
    "joint": [0.50, 0.52, 0.54], "a": [0.60, 0.61, 0.62], "b": [0.50, 0.52, 0.54], "c": [0.49, 0.55, 0.53],
    "unimodal_video": [0.10, 0.10, 0.10]}


def cells() -> list[dict]:
    return [{"seed": s, "views": ["video"], "test_top1": {m: v[i] for m, v in TOP1.items()},
             "probe": {"unimodal": {"video": 0.4}, **{m: {"video": 0.3 + i / 10} for m in TOP1 if m[0] != "u"}},
             "train_samples_per_s": {"joint": 100.0, "a": 50.0, "b": 100.0, "c": 200.0, "unimodal_video": 100.0}}
            for i, s in enumerate((0, 1, 2))]


def test_summary_states_each_method_over_its_seeds():
    s = methods_summary(cells())
    a = s["methods"]["a"]
    assert a["top1_median"] == 0.61 and a["seeds"] == [0, 1, 2]
    assert math.isclose(a["top1_se"], 0.01 / math.sqrt(3), abs_tol=1e-4)   # stdev 0.01 over 3 seeds
    assert a["epoch_time_vs_joint"] == 2.0 and s["methods"]["c"]["epoch_time_vs_joint"] == 0.5
    assert a["probe_median"] == {"video": 0.4}


def test_spread_leaves_out_the_unimodal_models_and_the_verdict_needs_two_se():
    s = methods_summary(cells())
    ses = [s["methods"][m]["top1_se"] for m in ("joint", "a", "b", "c")]
    pooled = math.sqrt(sum(x * x for x in ses) / 4)
    assert math.isclose(s["spread_over_se"], (0.61 - 0.52) / pooled, abs_tol=0.02)   # not down to video's 0.10
    assert s["beat_joint_by_2se"] == ["a"] and s["below_joint_by_2se"] == []
    assert s["equal_to_joint_run_for_run"] == ["b"]


def test_merge_joins_a_later_runs_methods_seed_by_seed():
    """--only's runs (no teachers: an empty uni-modal probe) joined with an earlier sweep's records: every earlier
    method kept, the new ones added to their own seed, a seed only the new runs have kept too."""
    earlier = cells()
    later = [{"seed": s, "views": ["video"], "test_top1": {"d": 0.7 + s / 100}, "probe": {"unimodal": {}, "d": {"video": 0.5}},
              "train_samples_per_s": {"d": 80.0}} for s in (1, 2, 3)]
    joined = merged(earlier, later)
    assert [c["seed"] for c in joined] == [0, 1, 2, 3]
    assert "d" not in joined[0]["test_top1"] and joined[0]["test_top1"] == earlier[0]["test_top1"]
    assert joined[2]["test_top1"] == {**earlier[2]["test_top1"], "d": 0.72}
    assert joined[1]["probe"]["unimodal"] == {"video": 0.4} and joined[1]["probe"]["d"] == {"video": 0.5}
    d = methods_summary(joined)["methods"]["d"]
    assert d["seeds"] == [1, 2, 3]
    # timed without joint beside them: kept apart, never set against the earlier run's joint
    assert "epoch_time_vs_joint" not in d and joined[1]["train_samples_per_s_added"] == {"d": 80.0}
    assert joined[1]["train_samples_per_s"] == earlier[1]["train_samples_per_s"]
    # with joint timed beside them: against that joint only (the earlier methods keep theirs)
    later = [{**c, "train_samples_per_s": {"d": 80.0, "joint": 40.0}} for c in later]
    summary = methods_summary(merged(earlier, later))["methods"]
    assert summary["d"]["epoch_time_vs_joint"] == 0.5 and summary["a"]["epoch_time_vs_joint"] == 2.0


def test_realav_cells_take_the_seeds_asked_for(tmp_path):
    """`--realav DATA --seeds 3,4,5`: one cell a seed, at the registered recipe (configs/realav.yaml, REALAV)."""
    from phenomena import REALAV, realav_cells
    (tmp_path / "manifest.json").write_text("{}")
    cells = realav_cells(tmp_path, quick=False, seeds=(3, 4, 5))
    assert [c.seed for c in cells] == [3, 4, 5] and {c.recipe.epochs for c in cells} == {REALAV["epochs"]}
    assert [c.seed for c in realav_cells(tmp_path, quick=False)] == [0, 1, 2]


def test_paired_figures_take_the_differences_seed_by_seed():
    s = methods_summary(cells())["paired_vs_joint"]
    assert math.isclose(s["a"]["mean"], 0.09, abs_tol=1e-9) and s["a"]["ahead"] == 3 and s["a"]["seeds"] == 3
    assert math.isclose(s["a"]["se"], 0.01 / math.sqrt(3), abs_tol=1e-4)   # differences 0.10, 0.09, 0.08
    assert s["b"] == {"mean": 0.0, "se": 0.0, "seeds": 3, "ahead": 0}    # equal run for run
    assert "joint" not in s and "unimodal_video" not in s
