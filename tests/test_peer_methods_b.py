"""Issue 12, part B: UMT's logit targets (cache format umt-cache/3, KL distillation) and MLA."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import webdataset as wds
import zarr

from umt.cache.builder import ShardViews
from umt.cache.store import CacheError
from umt.engine.checkpoint import load_model
from umt.engine.config import TrainConfig
from umt.engine.methods import method_for
from umt.engine.methods.umt import kd_loss
from umt.engine.models import LateFusionNet, ModelConfig
from umt.engine.targets import CachedTargets
from umt.loaders.loading.loader import make_loader
from umt.loaders.stored.shards import load_manifest, modality_inputs
from umt.loaders.stored.views import ViewPolicy, ViewSpec

from conftest import train


def test_cached_logits_equal_the_teachers_logits_on_the_same_views(data, teachers, cache):
    group = zarr.open_group(str(cache), mode="r")
    assert group.attrs["format"] == "umt-cache/3"
    decode = ShardViews(ViewSpec(**group.attrs["view_spec"]), ["audio", "video"], group.attrs["seed"],
                        group.attrs["num_views"])
    models = {m: load_model(p)[0].eval() for m, p in teachers.items()}
    samples = list(wds.DataPipeline(wds.SimpleShardList([str(data / "train-000001.tar")]), wds.tarfile_to_samples()))
    for sample in samples[:5]:
        item = decode(sample)
        for m, model in models.items():
            with torch.no_grad():
                logits, _ = model({m: item[m]})  # the teacher's whole forward on the V views
            cached = torch.from_numpy(group[f"logits/{m}"][item["row"]]).float()
            assert cached.shape == logits.shape == (2, 4)
            assert ((cached - logits).abs() <= logits.abs() * 2 ** -11 + 1e-4).all()  # float16 rounding


def test_kd_term_by_hand():
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    teacher = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    t = 2.0

    def softmax(row):
        e = [math.exp(v / t) for v in row]
        return [v / sum(e) for v in e]

    kl = [sum(p * math.log(p / q) for p, q in zip(softmax(tr), softmax(sr)))
          for sr, tr in zip(student.tolist(), teacher.tolist())]
    assert kd_loss(student, teacher, t).item() == pytest.approx(t * t * sum(kl) / 2, rel=1e-6)
    assert kd_loss(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-7)


def _steps(run) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_cached_and_online_logit_distillation_give_the_same_loss(data, teachers, cache):
    spec = ViewSpec(**zarr.open_group(str(cache), mode="r").attrs["view_spec"])
    mods = ("video", "audio")
    losses = {}
    for source in ({"cache": str(cache)}, {"teachers": {m: str(p) for m, p in teachers.items()}}):
        cfg = TrainConfig(data=str(data), out="", method="umt", modalities=mods, width=4, view=spec,
                          distill_targets="both", **source)
        method = method_for(cfg)
        torch.manual_seed(0)
        net = LateFusionNet(ModelConfig(mods, 4, 4, inputs=modality_inputs(load_manifest(data), mods, data),
                                        **method.model_options()))
        seed, views = method.prepare(net, torch.device("cpu"))
        batch = next(iter(make_loader(data, "train", spec, list(mods), ViewPolicy(0, 0, True, 2), 8)))
        assert (seed, views) == (0, 2) or "teachers" in source
        logits, feats = net(batch)
        losses[next(iter(source))] = method.loss(net, batch, logits, feats)[1]
    cached, online = losses["cache"], losses["teachers"]
    assert cached["distill_kl"] > 0 and cached["distill"] > 0
    assert cached["ce"] == online["ce"]  # same weights and batch
    assert cached["distill_kl"].item() == pytest.approx(online["distill_kl"].item(), rel=1e-3)  # float16 cache
    assert cached["distill"].item() == pytest.approx(online["distill"].item(), rel=1e-3)


def test_a_format_2_cache_serves_features_and_refuses_logits(data, cache, tmp_path):
    """A /2 cache's views are /3's (views.draw): its features still serve; it has no logits."""
    old = tmp_path / "old.zarr"
    shutil.copytree(cache, old)
    group = zarr.open_group(str(old), mode="r+")
    group.attrs["format"] = "umt-cache/2"
    for m in ("audio", "video"):
        del group[f"logits/{m}"]
    spec = ViewSpec(**group.attrs["view_spec"])
    rows, views = torch.tensor([0, 5, 9]), torch.tensor([1, 0, 1])
    features = CachedTargets(str(old), str(data), spec, torch.device("cpu"))({"row": rows, "view": views})
    assert set(features) == {"features"}
    assert torch.equal(features["features"]["video"],
                       torch.from_numpy(zarr.open_group(str(cache), mode="r")["features/video"][:][rows, views]).float())
    with pytest.raises(CacheError, match=r"umt-cache/2\) holds no teacher logits; distil features only, or "
                                          r"rebuild it with `umt-cache build` \(format umt-cache/3"):
        CachedTargets(str(old), str(data), spec, torch.device("cpu"), kinds=("features", "logits"))
