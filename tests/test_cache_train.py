import dataclasses
import json
import shutil

import pytest
import torch
import webdataset as wds
import zarr

from umt.cache.builder import ShardViews
from umt.cache.cli import main as cache_main
from umt.engine.cli import main as train_main
from umt.engine.targets import OnlineTeachers
from umt.loaders.cli import main as data_main
from umt.loaders.stored.views import ViewSpec

from conftest import MODEL_ARGS, accelerate_launch, synth, train, ume as run_ume


def _fail(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_cached_targets_equal_online_teacher_features(data, teachers, cache):
    group = zarr.open_group(str(cache), mode="r")
    online = OnlineTeachers({m: str(p) for m, p in teachers.items()}, torch.device("cpu"),
                            ViewSpec(**group.attrs["view_spec"]))
    decode = ShardViews(online.spec, ["audio", "video"], group.attrs["seed"], group.attrs["num_views"])
    samples = list(wds.DataPipeline(wds.SimpleShardList([str(data / "train-000002.tar")]), wds.tarfile_to_samples()))
    for sample in samples[:6]:
        item = decode(sample)
        targets = online({m: item[m] for m in ("audio", "video")})["features"]  # the views as a batch of V
        for m, feature in targets.items():
            cached = torch.from_numpy(group[f"features/{m}"][item["row"]]).float()
            assert cached.shape == feature.shape == (2, 32)
            # equal within float16 rounding: half an ulp of the value, plus float32 batch noise
            assert ((cached - feature).abs() <= feature.abs() * 2 ** -11 + 1e-4).all()
        assert (torch.from_numpy(group["views"][item["row"]]) == item["params"]).all()


def test_cached_and_online_umt_give_the_same_training_signal(data, teachers, cache, tmp_path):
    common = ["--method", "umt", "--max-steps", "4", "--log-every", "1", "--no-probe", "--seed", "3"]
    train(data, tmp_path / "cached", *common, "--cache", str(cache))
    train(data, tmp_path / "online", *common, "--num-views", "2", "--view-seed", "0",  # the cache's views
          *[f"--teacher={m}={p}" for m, p in teachers.items()])
    steps = {name: [r for r in map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines())
                    if "loss" in r] for name in ("cached", "online")}
    assert len(steps["cached"]) == len(steps["online"]) == 4
    first_cached, first_online = steps["cached"][0], steps["online"][0]
    assert first_cached["ce"] == first_online["ce"]  # same weights, same views, same batches
    assert first_cached["distill"] > 0
    assert first_cached["distill"] == pytest.approx(first_online["distill"], rel=1e-4)  # float16 targets
    # later steps: Adam's normalised updates amplify the float16 differences a little, step by step
    for a, b in zip(steps["cached"][1:], steps["online"][1:]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-2)


def test_every_cli_end_to_end(data, teachers, cache, tmp_path, capsys):
    data_main(["info", str(data)])
    assert "train       64 samples in 4 shards" in capsys.readouterr().out
    cache_main(["info", str(cache)])
    assert "shards         4/4 complete" in capsys.readouterr().out
    run = train(data, tmp_path / "joint", "--method", "joint", "--epochs", "1", "--fusion", "mlp")
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.jsonl", "model.pt", "results.json", "report.md"}
    results = json.loads((run / "results.json").read_text())
    assert set(results["probe"]) == {"video", "audio"} and 0 <= results["test_top1"] <= 1
    assert "| joint | mlp |" in (run / "report.md").read_text()
    ume = run_ume(data, tmp_path / "ume", teachers)
    assert json.loads((ume / "results.json").read_text())["method"] == "ume"


def test_bad_input_gives_clear_errors(data, teachers, cache, tmp_path, capsys):
    base = ["--out", str(tmp_path / "run"), *MODEL_ARGS]
    err = _fail(train_main, ["--data", str(tmp_path / "missing"), *base], capsys)
    assert "missing does not exist" in err
    other_data = synth(tmp_path / "other", "--seed", "7")
    err = _fail(train_main, ["--data", str(other_data), "--method", "umt", "--cache", str(cache), *base], capsys)
    assert "built from other data" in err
    other_teacher = train(data, tmp_path / "v2", "--method", "unimodal", "--modality", "video", "--max-steps", "1",
                          "--seed", "5", "--no-probe") / "model.pt"
    err = _fail(train_main, ["--data", str(data), "--method", "umt", "--cache", str(cache),
                             f"--teacher=video={other_teacher}", *base], capsys)
    assert "holds video features of other teachers" in err
    broken = tmp_path / "broken.zarr"
    shutil.copytree(cache, broken)
    zarr.open_group(str(broken), mode="r+")["done"][1] = 0
    err = _fail(train_main, ["--data", str(data), "--method", "umt", "--cache", str(broken), *base], capsys)
    assert "incomplete: 1 shard(s) unfinished (train-000001.tar)" in err
    err = _fail(cache_main, ["build", "--data", str(data), "--out", str(tmp_path / "c"), f"--teacher=video={tmp_path}/nope.pt"], capsys)
    assert "nope.pt does not exist" in err


@pytest.mark.parametrize("method", ["joint", "ogm-ge"])
def test_two_process_training_keeps_replicas_identical(data, tmp_path, method):
    out = tmp_path / "ddp"
    accelerate_launch("umt.engine.cli", "--data", str(data), "--out", str(out), "--method", method,
                      "--max-steps", "3", "--no-probe", *MODEL_ARGS)
    results = json.loads((out / "results.json").read_text())
    assert results["processes"] == 2 and results["steps"] == 3
    assert results["replica_max_abs_diff"] == 0.0


def test_run_directory_has_curves_tensorboard_and_report(data, tmp_path):
    run = train(data, tmp_path / "r", "--method", "joint", "--epochs", "2", "--no-probe", "--log-every", "2",
                "--probe-every", "1")
    epochs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"val_top1"' in l]
    assert len(epochs) == 2 and all(set(e["val_probe"]) == {"video", "audio"} and "val_top5" in e for e in epochs)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    report = (run / "report.md").read_text()
    assert "![training curves](curves.png)" in report and "test top-5" in report


def test_two_process_evaluation_splits_and_gathers(tmp_path):
    from umt.engine.checkpoint import load_model
    from umt.engine.evaluate import collect, top1
    from umt.loaders.stored.views import CENTRE, ViewSpec, eval_views
    data = synth(tmp_path / "d", "--shard-size", "8")  # 2 val and 2 test shards: one per process
    out = tmp_path / "ddp"
    accelerate_launch("umt.engine.cli", "--data", str(data), "--out", str(out), "--method", "joint",
                      "--max-steps", "3", "--test-clips", "2", "--test-crops", "3", "--crop-mode", "cut",
                      *MODEL_ARGS)   # cut: the synthetic frames are square, resized test crops would coincide
    results = json.loads((out / "results.json").read_text())
    model, ckpt = load_model(out / "model.pt")
    view = ViewSpec(**ckpt["view"])
    alone = {split: collect(model.eval(), str(data), split, view, ["video", "audio"], 8, 0, torch.device("cpu"),
                            views=eval_views(2, 3) if split == "test" else (CENTRE,))
             for split in ("val", "test")}
    # the 2 x 3 test protocol, each test sample scored once across the two ranks
    assert results["test_top1"] == top1(alone["test"]["logits"], alone["test"]["labels"])
    assert results["test_protocol"] == {"clips": 2, "crops": 3, "views": 6, "crop_mode": "cut",
                                        "combine": "mean of logits"}
    val_record = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"val_top1"' in l][-1]
    assert val_record["val_top1"] == top1(alone["val"]["logits"], alone["val"]["labels"])
    assert set(results["probe"]) == {"video", "audio"}


def test_multi_view_test_averages_the_logits_of_each_view(data, teachers):
    """T x C test views: every test sample once, in row order, its logits the mean of the T x C
    single-view passes (which differ from each other: distinct windows and crops; the synthetic frames
    are square, so crops along the long side differ only when cut)."""
    from umt.engine.checkpoint import load_model
    from umt.engine.evaluate import collect
    from umt.loaders.stored.views import CENTRE, eval_views

    model, ckpt = load_model(teachers["video"])
    cut = dataclasses.replace(ViewSpec.of(ckpt["view"]), crop_mode="cut")   # square frames: resized crops coincide
    args = (model.eval(), str(data), "test", cut, ["video"], 16, 0, torch.device("cpu"))
    views = eval_views(2, 2)
    both = collect(*args, views=views)
    each = [collect(*args, views=[v]) for v in views]
    centre = collect(*args)
    assert torch.equal(both["labels"], centre["labels"]) and len(centre["labels"]) == 16
    assert torch.equal(both["rows"], centre["rows"]) and centre["rows"].tolist() == list(range(16))
    assert torch.equal(both["logits"], torch.stack([e["logits"] for e in each]).mean(0))
    assert torch.equal(both["features"]["video"], torch.stack([e["features"]["video"] for e in each]).mean(0))
    assert len({e["logits"].numpy().tobytes() for e in each} | {centre["logits"].numpy().tobytes()}) == 5
    assert eval_views(1, 1) == [CENTRE]
