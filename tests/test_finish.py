"""Views finished on the trainer's device (loaders/loading/finish.py) against views finished in the workers."""
import json

import numpy as np
import pytest
import torch

from umt.loaders.loading.finish import finish_video, pack_shipped, region
from umt.loaders.loading.kernels import resize_to_rgb
from umt.loaders.loading.loader import make_loader
from umt.loaders.making.inputs import ClipInput
from umt.loaders.making.pack import pack
from umt.loaders.making.transcode import PackOptions
from umt.loaders.stored.views import ViewPolicy, ViewSpec

from conftest import _state, train
from media_factory import write_video


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Packed clips of three aspect ratios (stored frames 32x48, 32x32, 48x32): a batch holds several sizes."""
    root = tmp_path_factory.mktemp("mixed")
    sizes = [(48, 32), (32, 32), (32, 48)]
    clips = [ClipInput(f"c{i}.mp4", str(write_video(root / f"c{i}.mp4", "mp4", "libx264", "aac", seconds=1.5,
                                                    size=sizes[i % 3], hue=20 * i)), f"k{i % 2}", "train")
             for i in range(9)]
    pack(clips, root / "packed", PackOptions(short_side=32, fps=12), shard_size=4, progress=False)
    return root / "packed"


@pytest.mark.parametrize("spec", [ViewSpec(frames=4, stride=2, crop=24, audio_seconds=0.5, mel_bins=16),
                                  ViewSpec(frames=3, stride=1, crop=16, audio_seconds=0.25, mel_bins=8,
                                           crop_mode="cut")], ids=["resized", "cut"])
def test_views_finished_on_the_device_equal_views_finished_in_the_workers(mixed, spec):
    """Random-resized (shrinking and enlarging boxes) and cut crops, flips, frames of several sizes in one batch,
    through DataLoader workers: the video is the same to the bit, the log-mel the same function's."""
    def batches(finish_on):
        return list(make_loader(mixed, "train", spec=spec, modalities=["video", "audio"], policy=ViewPolicy(3, 1, True),
                                batch_size=4, num_workers=2, finish_on=finish_on))
    workers, device = batches(None), batches(torch.device("cpu"))
    assert len(workers) == len(device) == 2
    flips = set()
    for a, b in zip(workers, device):
        assert a.keys() == b.keys()
        for key in ("label", "row", "view", "params"):
            assert torch.equal(a[key], b[key])
        assert torch.equal(a["video"], b["video"])
        torch.testing.assert_close(a["audio"], b["audio"], rtol=1e-5, atol=1e-5)
        flips |= set(a["params"][:, 5].tolist())
    assert flips == {0, 1}


def test_finished_views_equal_the_kernel_on_random_boxes():
    """Noise frames of three sizes in one batch, random boxes from 3x3 to the whole frame (enlarging, and shrinking
    up to 5x: 1 to 11 taps), flipped or not, each shipped as the region its filter reads: each view equals the
    worker kernel's to the bit."""
    rng = np.random.default_rng(1)
    sizes, crop = [(40, 56), (30, 20), (8, 8)], 12
    frames = [rng.integers(0, 256, (2, h * 3 // 2, w), dtype=np.uint8) for h, w in sizes]
    for _ in range(32):
        params = []
        for h, w in sizes:
            bh, bw = int(rng.integers(3, h + 1)), int(rng.integers(3, w + 1))
            params.append([0, int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1)), bh, bw,
                           int(rng.integers(0, 2)), 0])
        flat, layout = pack_shipped(frames, [tuple(p[1:5]) for p in params], crop)
        out = finish_video(flat, layout, torch.tensor(params), 2, crop)
        for i, (_, y0, x0, bh, bw, flip, _) in enumerate(params):
            assert np.array_equal(out[i].numpy(), resize_to_rgb(frames[i], (y0, x0, bh, bw), crop, bool(flip)))


def test_a_view_ships_only_the_region_its_filter_reads():
    """A box in the middle of a large frame ships a region a little larger than the box, not the frame; a box
    at the frame's corner ships from the corner."""
    assert region((100, 200, 50, 60), 224, (256, 456)) == (98, 198, 54, 64)   # enlarging: one pixel of reach
    r0, c0, h, w = region((100, 200, 120, 150), 32, (256, 456))               # shrinking: the triangle's reach
    assert (r0, c0) <= (100, 200) and 120 <= h <= 132 and 150 <= w <= 162 and h % 2 == w % 2 == 0
    assert region((0, 0, 256, 456), 224, (256, 456)) == (0, 0, 256, 456)


def test_training_with_views_finished_on_the_device_equals_training_with_them_finished_in_the_workers(data, tmp_path):
    """`umt-train --finish device` (on this CPU) against `--finish workers`: the same weights and test accuracy,
    so the trainer's and the evaluation's loaders take the setting and nothing else changes."""
    runs = {f: train(data, tmp_path / f, "--method", "joint", "--epochs", "2", "--workers", "2", "--finish", f)
            for f in ("workers", "device")}
    weights = {f: _state(run / "model.pt") for f, run in runs.items()}
    assert weights["workers"].keys() == weights["device"].keys() and weights["workers"]
    assert all(torch.equal(weights["workers"][k], weights["device"][k]) for k in weights["workers"])
    results = {f: json.loads((run / "results.json").read_text()) for f, run in runs.items()}
    assert results["workers"]["test_top1"] == results["device"]["test_top1"]
