"""The generators' presence label model (issue 15) and the presence sweep's per-group analysis."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from hypothesis import given, settings, strategies as st

from umt.loaders.making.synth import GROUPS, SynthConfig, draw_symbols, render_audio, render_video
from umt.loaders.making.synth_vectors import VectorSynthConfig, generate, pair_prototypes, prototypes, write_raw

from umt.loaders.cli import main as data_main
from umt.loaders.loading.loader import make_loader
from umt.loaders.stored.views import ViewPolicy, ViewSpec

from conftest import synth

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import presence  # noqa: E402

PRESENCE = VectorSynthConfig(label_model="presence", video_present=0.7, audio_present=0.4, paired=0.2,
                             audio_encoding="product", audio_noise=0.5, train=3000, val=100, test=100)


def test_noise_free_vectors_show_exactly_the_features_of_their_group():
    """Without noise an absent feature is all zeros (no symbol at all), a present one the label's symbol."""
    cfg = replace(PRESENCE, video_noise=0.0, audio_noise=0.0, pair_noise=0.0, audio_encoding="prototype")
    views, labels, _, groups = generate(cfg)
    protos, pairs, d = prototypes(cfg), pair_prototypes(cfg), cfg.dim
    assert set(groups) == set(GROUPS)
    for v, a, y, g in zip(views["vfeat"], views["afeat"], labels, groups):
        for m, (x, present) in enumerate(((v, g in ("both", "video_only")), (a, g in ("both", "audio_only")))):
            assert np.allclose(x[:d], protos[m, y]) if present else not x[:d].any()
            if g == "paired":
                bits = [int(np.allclose(z[d:], pairs[i, 1])) for i, z in enumerate((v, a))]
                assert np.allclose(x[d:], pairs[m, bits[m]]) and y == bits[0] ^ bits[1]
            else:
                assert not x[d:].any()


def test_absent_features_carry_no_class_evidence():
    """A nearest-class-mean reader, fit and scored on separate halves, reads present features and not absent ones."""
    views, labels, _, groups = generate(replace(PRESENCE, audio_encoding="prototype", audio_noise=1.0, train=8000))
    labels, groups = np.array(labels), np.array(groups)
    for view, present in (("vfeat", ("both", "video_only")), ("afeat", ("both", "audio_only"))):
        x = views[view][:, :PRESENCE.dim]
        for mask, bound in ((np.isin(groups, present), lambda acc: acc > 0.9),
                            (np.isin(groups, ("neither", "video_only" if view == "afeat" else "audio_only")),
                             lambda acc: acc < 0.1 + 4 * (0.09 / mask.sum() * 2) ** 0.5)):
            xs, ys = x[mask], labels[mask]
            half = len(ys) // 2
            means = np.stack([xs[:half][ys[:half] == k].mean(0) for k in range(10)])
            guess = ((xs[half:, None] - means[None]) ** 2).sum(-1).argmin(1)
            assert bound((guess == ys[half:]).mean()), (view, mask.sum())


def test_presence_rates_match_the_settings():
    _, _, _, groups = generate(replace(PRESENCE, train=20000))
    n = len(groups)
    share = {g: groups.count(g) / n for g in GROUPS}
    expected = presence.group_shares({"paired": 0.2, "video_present": 0.7, "audio_present": 0.4})
    for g in GROUPS:
        assert abs(share[g] - expected[g]) < 4 * (expected[g] * (1 - expected[g]) / n) ** 0.5, g


def test_presence_output_is_byte_reproducible_and_cues_output_unchanged(tmp_path):
    small = replace(PRESENCE, train=200)
    files = [write_raw(tmp_path / name, cfg) for name, cfg in (("a", small), ("b", small), ("c", replace(small, seed=1)))]
    for key in ("vfeat", "afeat", "labels"):
        assert files[0][key].read_bytes() == files[1][key].read_bytes() != files[2][key].read_bytes()
    assert files[0]["labels"].read_text().splitlines()[0] == "label,split,group"
    views, labels, *_ = generate(VectorSynthConfig(train=300, val=50, test=50, audio_encoding="product", audio_noise=0.5))
    digest = hashlib.sha256(views["vfeat"].tobytes() + views["afeat"].tobytes()).hexdigest()
    assert digest.startswith("660cabd4ecdb4951") and sum(labels) == 1806  # the cues model as before issue 15


@settings(max_examples=40, deadline=None)
@given(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.integers(0, 2**32 - 1))
def test_draw_symbols_presence_invariants(qv, qa, p, seed):
    cfg = SynthConfig(label_model="presence", video_present=qv, audio_present=qa, paired=p, classes=7)
    rng = np.random.default_rng(seed)
    for _ in range(50):
        s = draw_symbols(cfg, rng)
        if s.group == "paired":
            assert s.video is s.audio is None and s.label == s.bits[0] ^ s.bits[1]
        else:
            assert s.bits is None and 0 <= s.label < 7
            assert s.group == {(True, True): "both", (True, False): "video_only", (False, True): "audio_only",
                               (False, False): "neither"}[s.video is not None, s.audio is not None]
            assert {s.video, s.audio} <= {s.label, None}


def test_clips_without_a_feature_show_noise_only(tmp_path):
    cfg = SynthConfig(label_model="presence", video_noise=0.0, audio_noise=0.0, size=16, frames=3, audio_seconds=0.1)
    frames = render_video(cfg, None, np.random.default_rng(0))
    assert (frames == frames[0, 0, 0, 0]).all()
    assert not render_audio(cfg, None, np.random.default_rng(0)).any()
    out = synth(tmp_path / "presence", "--label-model", "presence", "--video-present", "0.5", "--audio-present", "0.5",
                "--paired", "0.3")
    metas = [json.loads(s["json"]) for s in wds.DataPipeline(
        wds.SimpleShardList([str(p) for p in sorted(out.glob("train-*.tar"))]), wds.tarfile_to_samples())]
    assert {m["group"] for m in metas} == set(GROUPS)
    for m in metas:
        assert (m["bits"] is not None) == (m["group"] == "paired") == m["paired"]
        assert m["video_symbol"] in ((m["label"],) if m["group"] in ("both", "video_only") else (None,))
    test = sorted((json.loads(s["json"]) for s in wds.DataPipeline(
        wds.SimpleShardList([str(p) for p in sorted(out.glob("test-*.tar"))]), wds.tarfile_to_samples())),
        key=lambda m: m["row"])
    assert presence.groups_of_test(out) == [m["group"] for m in test]  # what per-group scores of clips read


def test_groups_of_a_packed_vector_set_follow_its_rows_not_its_file_lines(tmp_path):
    """pack-arrays writes a split in a seeded order: a packed test row's group is that of the line it came from."""
    n, test = 60, range(40, 60)
    np.save(tmp_path / "x.npy", np.arange(n, dtype=float)[:, None])  # each line's number, as its feature
    (tmp_path / "labels.csv").write_text("label,split,group\n" + "".join(
        f"{i % 3},{'test' if i in test else 'train'},g{i * 7 % 11}\n" for i in range(n)))
    data_main(["pack-arrays", f"--view=x={tmp_path / 'x.npy'}", "--labels", str(tmp_path / "labels.csv"),
               "--out", str(tmp_path / "packed"), "--shard-size", "8", "--seed", "3"])
    loader = make_loader(tmp_path / "packed", "test", spec=ViewSpec(), modalities=["x"], policy=ViewPolicy(0, 0, False),
                         batch_size=64)
    batch = next(iter(loader))
    line = [test[k] for k in batch["x"][:, 0].argsort().argsort().tolist()]  # features are standardised: ranks
    assert line != sorted(line)  # the packed order is not the file's
    groups = presence.groups_of_test(tmp_path / "packed", tmp_path / "labels.csv")
    assert [groups[r] for r in batch["row"].tolist()] == [f"g{i * 7 % 11}" for i in line]


def _cell(seed: int, margin: float, val_umt: float = 0.7, val_projector: float = 0.6, **generator) -> dict:
    test = {"joint": 0.70, "ume": 0.69, "umt": 0.70 + margin, "umt_projector": 0.5}
    group = {"top1": {m: {"both": t} for m, t in test.items()}, "count": {"both": 10}}
    probe = {m: {"vfeat": 0.5, "afeat": 0.4} for m in ("unimodal", "joint", "umt", "umt_projector")}
    return {"cell": "c", "seed": seed, "views": ["vfeat", "afeat"], "test_top1": test, "groups": group,
            "probe": probe, "guide": {"choice": "umt", "recommendation": "joint"},
            "val_top1": {"joint": 0.65, "ume": 0.5, "umt": val_umt, "umt_projector": val_projector},
            "generator": {"video_present": 0.7, "audio_present": 0.7, "paired": 0.2, **generator}}


def test_umt_wins_needs_two_standard_errors_and_the_variant_chosen_on_validation():
    steady = presence.summarise([_cell(s, m) for s, m in enumerate((0.02, 0.03, 0.025))])
    assert steady["umt_wins_where_predicted"] == 1.0 and steady["conditions"]["c"]["umt_variant_on_val"] == ["umt"] * 3
    noisy = presence.summarise([_cell(s, m) for s, m in enumerate((0.06, -0.04, 0.02))])
    assert noisy["umt_wins_where_predicted"] == 0.0  # mean 0.013 < 2 x SE 0.029
    on_val = presence.summarise([_cell(s, 0.03, val_umt=0.5) for s in range(3)])
    assert on_val["conditions"]["c"]["umt_variant_on_val"] == ["umt_projector"] * 3
    assert on_val["umt_wins_where_predicted"] == 0.0  # the projector run is worse on test, and it was chosen
    assert on_val["conditions"]["c"]["best_of_three_on_test"] == ["umt"] * 3
    assert on_val["three_way_agreement"] == 0.0  # the guide recommended joint on validation
    no_weak_only = presence.summarise([_cell(s, 0.03, video_present=1.0) for s in range(3)])
    assert no_weak_only["predicted_cells"] == 0  # audio, the vector sets' weak modality, is never alone
    weak_video = presence.summarise([{**_cell(s, 0.03, audio_present=1.0), "weak": "video"}
                                     for s in range(3)])
    assert weak_video["predicted_cells"] == 0  # the demo's weak modality is video: never alone either
    weak_video = presence.summarise([{**_cell(s, 0.03, audio_present=0.5), "weak": "video"} for s in range(3)])
    assert weak_video["umt_wins_where_predicted"] == 1.0 and weak_video["conditions"]["c"]["weak_only_group"] == "video_only"
    tied = presence.summarise([_cell(s, 0.0) for s in range(3)])
    assert tied["conditions"]["c"]["best_of_three_on_test"] == ["umt=joint"] * 3 and tied["three_way_agreement"] == 1.0


def test_phenomena_presence_quick_scores_every_method_per_group(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "phenomena.py"), "--presence", "--quick",
                    "--out", str(tmp_path)], check=True, capture_output=True, timeout=300)
    record = json.loads((tmp_path / "phenomena.json").read_text())
    assert "umt_wins_where_predicted" in record["summary"] and (tmp_path / "phenomena.png").stat().st_size > 10_000
    cell = record["cells"][0]
    counts = cell["groups"]["count"]
    assert sum(counts.values()) == 400 and all(counts[g] > 0 for g in GROUPS)
    for method, by_group in cell["groups"]["top1"].items():
        weighted = sum(by_group[g] * counts[g] for g in by_group) / 400
        assert abs(weighted - cell["test_top1"][method]) < 2e-3, method  # the groups partition the test split


def test_demo_cells_refuse_a_clip_set_made_with_other_settings(tmp_path):
    """A clip set is made once per out folder and reused: one made with other generator settings is refused."""
    import phenomena
    from umt.cache.demo import DATA
    made = replace(DATA, seed=7, train=8, val=4, test=4, shard_size=8, frames=3, audio_seconds=0.25)
    phenomena.demo_cells(tmp_path, False, made)
    assert len(phenomena.demo_cells(tmp_path, False, made)) == 3  # the same settings: reused
    with pytest.raises(SystemExit, match="other generator settings"):
        phenomena.demo_cells(tmp_path, False, replace(made, paired=0.5))
