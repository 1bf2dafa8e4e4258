"""Check the dali backend on a GPU machine: one epoch through the cpu and the dali backends.

Not yet run on a GPU (README, Status): tests/test_dali_audio.py covers everything in the dali backend
on the CPU except H.264 through NVDEC. Run it on a machine with a
CUDA GPU and nvidia-dali-cuda130==2.4.0 (exit 0: the backends agree; 1: they do not; 2: no GPU/DALI):

    python benchmarks/check_dali_gpu.py --out benchmarks/results/dali_check_gpu.json

It synthesises a shard set, loads the same training epoch with both backends (the cpu backend with
one worker and no shuffle buffer, so both read samples in the same order) and checks:

- label, row, view and params identical: both backends derive views from views.make_view.
- video: H.264 decoding is bit-exact by the standard, so NVDEC and FFmpeg give the same YUV
  planes; only YUV→RGB differs. Both use BT.601 limited range, but DALI interpolates chroma
  bilinearly where the cpu kernel takes the nearest chroma sample. The luma of the RGB frames
  (0.299 R + 0.587 G + 0.114 B) cancels chroma, so it is held tight: mean <= 0.5 and 99th
  percentile <= 1.5 levels; whole RGB mean <= 8 levels. Calibrated on the synthetic frames, whose
  strong per-channel noise makes chroma vary from pixel to pixel: a numpy emulation of DALI's GPU
  conversion kernel at --size 64 gave luma mean 0.22, p99 0.65, RGB mean 4.6; DALI's own CPU
  decoder on the same clips as VP9 (tests/test_dali_audio.py) luma 0.22, p99 0.66, RGB 3.9.
  A wrong frame, crop box or flip gives a luma mean of about 30.
- audio: log-mel max difference <= 1e-3 (DALI on the CPU: 1e-5; cuFFT sums in another order).

Frames are 64 pixels square by default: NVDEC refuses frames below a minimum size (its decoder
capabilities report it; 48 x 16 for H.264 on recent GPUs), which the tests' 24-pixel clips miss.
It also prints clips/s of both backends (medians over interleaved passes).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from umt.loaders.loading.dali import choose_backend
from umt.loaders.errors import UserError
from umt.loaders.loading.loader import dali_loader, make_loader
from umt.loaders.making.synth import SynthConfig, write_synth
from umt.loaders.stored.views import ViewPolicy, ViewSpec

from common import median, write_json

LUMA = torch.tensor([0.299, 0.587, 0.114])
LIMITS = {"luma_mean": 0.5, "luma_p99": 1.5, "rgb_mean": 8.0, "log_mel_max": 1e-3}   # see the docstring


def loaders(data: Path, spec: ViewSpec, batch_size: int, workers: int, epoch: int) -> dict:
    policy = ViewPolicy(seed=0, epoch=epoch, train=True)
    return {"cpu": make_loader(data, "train", spec=spec, modalities=["video", "audio"], policy=policy,
                               batch_size=batch_size, num_workers=workers),
            "dali": dali_loader(data, "train", spec, ["video", "audio"], policy, batch_size, device_id=0)}


def compare(cpu_loader, dali_loader) -> tuple[dict, list[str]]:
    """Differences between the two backends' batches of one epoch, and the checks that failed."""
    cpu, dali = list(cpu_loader), list(dali_loader)
    failures = [] if len(cpu) == len(dali) else [f"{len(cpu)} cpu batches against {len(dali)} dali batches"]
    luma, rgb, mel = [], [], []
    for index, (a, b) in enumerate(zip(cpu, dali)):
        failures += [f"batch {index}: {key} differs" for key in ("label", "row", "view", "params")
                     if not torch.equal(a[key], b[key].cpu())]
        if a["video"].shape != b["video"].shape or a["audio"].shape != b["audio"].shape:
            failures.append(f"batch {index}: shapes {a['video'].shape}/{a['audio'].shape} (cpu) against "
                            f"{b['video'].shape}/{b['audio'].shape} (dali)")
            continue
        video_a, video_b = a["video"].float(), b["video"].cpu().float()
        luma.append((video_a @ LUMA - video_b @ LUMA).abs().flatten())
        rgb.append((video_a - video_b).abs().flatten())
        mel.append((a["audio"] - b["audio"].cpu()).abs().max())
    if not luma:
        return {}, failures + ["no batches to compare"]
    luma, rgb = torch.cat(luma), torch.cat(rgb)
    stats = {"luma_mean": luma.mean().item(), "luma_p99": float(np.percentile(luma.numpy(), 99)),
             "rgb_mean": rgb.mean().item(), "log_mel_max": max(mel).item()}
    failures += [f"{key} {stats[key]:.4g} > {limit}" for key, limit in LIMITS.items() if stats[key] > limit]
    return stats, failures


def clips_per_second(loader) -> float:
    start, clips = time.perf_counter(), 0
    for batch in loader:
        clips += len(batch["video"])
    if torch.cuda.is_available():
        torch.cuda.synchronize()   # the dali backend's copies into torch tensors are asynchronous
    return clips / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write the measurements here as JSON")
    p.add_argument("--clips", type=int, default=128, help="training clips to synthesise")
    p.add_argument("--size", type=int, default=64, help="frame height and width")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=4, help="cpu backend workers in the timed passes")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    try:
        choose_backend("dali")
    except UserError as err:
        print(f"check_dali_gpu: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    spec = ViewSpec(frames=8, stride=2, crop=args.size * 3 // 4, audio_seconds=1.0, mel_bins=40)
    data = Path(tempfile.mkdtemp(prefix="umt-dali-check-")) / "synth"
    write_synth(data, SynthConfig(train=args.clips, val=8, test=8, frames=24, size=args.size, audio_seconds=2.0,
                                  shard_size=max(1, args.clips // 4)), progress=False)

    stats, failures = compare(*loaders(data, spec, args.batch_size, workers=1, epoch=0).values())
    speed = {"cpu": [], "dali": []}
    for r in range(args.repeats):   # interleaved passes; a new epoch each, so no pass reads cached views
        runs = list(loaders(data, spec, args.batch_size, args.workers, epoch=r + 1).items())
        for name, loader in runs if r % 2 == 0 else runs[::-1]:
            speed[name].append(clips_per_second(loader))
        print(f"repeat {r}: cpu {speed['cpu'][-1]:.1f} clips/s, dali {speed['dali'][-1]:.1f} clips/s")
    record = {"agree": not failures, "differences": stats, "failures": failures,
              "limits": LIMITS,
              "clips_per_s": {name: median(runs) for name, runs in speed.items()},
              "settings": {**vars(args), "view": spec.to_dict()}}
    if args.out:
        write_json(args.out, record)
    else:
        print(record)
    if failures:
        sys.exit("check_dali_gpu: the dali backend disagrees with the cpu backend:\n  " + "\n  ".join(failures))
    print("check_dali_gpu: the dali and cpu backends agree")


if __name__ == "__main__":
    main()
