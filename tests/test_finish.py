"""Views finished on the trainer's device (loaders/loading/finish.py) against views finished in the workers."""
import numpy as np
import pytest
import torch

from umt.loaders.loading.finish import finish_video, plane_blocks, shipped_shape
from umt.loaders.loading.kernels import resize_to_rgb
from umt.loaders.loading.loader import make_loader
from umt.loaders.making.inputs import ClipInput
from umt.loaders.making.pack import pack
from umt.loaders.making.transcode import PackOptions
from umt.loaders.stored.views import ViewPolicy, ViewSpec

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
        return list(make_loader(mixed, "train", spec, ["video", "audio"], ViewPolicy(3, 1, True), 4, 2,
                                finish_on=finish_on))
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


def test_finished_frames_of_a_smaller_sample_ignore_the_padding():
    """A frame smaller than the batch's largest fills its blocks' top-left; what lies beyond (other samples'
    leftovers in pooled memory) must not reach its view."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (2, 24, 16), dtype=np.uint8)            # 2 frames of 16 x 16, packed planes
    shipped = np.full((2, *shipped_shape(1, [(16, 16), (20, 24)])), 255, np.uint8)  # batch of 2: room for 20 x 24
    for t in range(2):
        y, u, v = plane_blocks(shipped[t, 0])
        y[:16, :16] = small[t, :16]
        u[:8, :8], v[:8, :8] = small[t, 16:].reshape(2, 8, 8)
    for box, flip in [((2, 3, 11, 13), 0), ((0, 0, 16, 16), 1), ((4, 1, 12, 6), 1)]:
        params = torch.tensor([[0, *box, flip, 0]] * 2, dtype=torch.int32)
        out = finish_video(torch.from_numpy(shipped), params, torch.tensor([[16, 16]] * 2), 8)
        for t in range(2):
            assert np.array_equal(out[t, 0].numpy(), resize_to_rgb(small[t:t + 1], box, 8, bool(flip))[0])


def test_finished_views_equal_the_kernel_on_random_boxes():
    """Noise frames of two sizes in one batch, 64 random boxes from 3x3 to the whole frame (enlarging and shrinking
    up to 5x, 1 to 11 taps), flipped or not: each view equals the worker kernel's to the bit."""
    rng = np.random.default_rng(1)
    sizes, crop = [(40, 56), (30, 20)], 12
    frames = [rng.integers(0, 256, (2, h * 3 // 2, w), dtype=np.uint8) for h, w in sizes]
    for _ in range(32):
        shipped = np.zeros((2, *shipped_shape(2, sizes)), np.uint8)
        params = []
        for i, ((h, w), packed) in enumerate(zip(sizes, frames)):
            for t in range(2):
                y, u, v = plane_blocks(shipped[i, t])
                y[:h, :w] = packed[t, :h]
                u[:h // 2, :w // 2], v[:h // 2, :w // 2] = packed[t, h:].reshape(2, h // 2, w // 2)
            bh, bw = int(rng.integers(3, h + 1)), int(rng.integers(3, w + 1))
            params.append([0, int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1)), bh, bw,
                           int(rng.integers(0, 2)), 0])
        out = finish_video(torch.from_numpy(shipped), torch.tensor(params), torch.tensor(sizes), crop)
        for i, (_, y0, x0, bh, bw, flip, _) in enumerate(params):
            assert np.array_equal(out[i].numpy(), resize_to_rgb(frames[i], (y0, x0, bh, bw), crop, bool(flip)))
