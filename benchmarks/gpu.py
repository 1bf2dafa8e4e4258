"""Training throughput on a GPU: joint, UMT with online teachers, UMT from the cache (issue 14, part 4).

Needs only torch and umt (no DALI or PyAV: clips are generated in memory, so the figure is the
training step's cost, not the loader's). ResNet-18-width encoders (width 64, 512-d features) on
8x112x112 video and 128-mel audio, bf16 autocast, batch 64. The three runs use umt's own pieces:
the model (`LateFusionNet`), the method objects' loss (`Method`, `Umt`), the online teachers
(`OnlineTeachers`, from saved checkpoints) and the cache reader (`FeatureTable` over a Zarr cache
made by `store.create`, held on the GPU as training holds it); only the cache's checks against
real data are skipped, since there is no data. Repeats are interleaved; medians and spread go to JSON.

It also times `--finish device` (loaders/loading/finish.py) on the GPU: a batch of views as the cpu backend's
workers ship them (16 frames of 256 x 456 noise, random boxes to 224 px, 10 s of int16 audio) finished on the
device, ms per batch (synchronised), and checks its views against the workers' kernel to the bit.

    python benchmarks/gpu.py --out benchmarks/results/gpu_h100.json                 # one GPU, ~3 min
    accelerate launch --num_processes 2 benchmarks/gpu.py --out benchmarks/results/gpu_2x.json  # NCCL DDP
    python benchmarks/gpu.py --smoke --out /tmp/gpu_smoke.json                       # CPU, tiny: a check of the script
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, write_json  # noqa: E402

from umt.loaders.stored import cache_store as store  # noqa: E402
from umt.loaders.stored.cache_reader import FeatureTable  # noqa: E402
from umt.engine.checkpoint import save_model  # noqa: E402
from umt.engine.config import TrainConfig  # noqa: E402
from umt.engine.methods import Method  # noqa: E402
from umt.engine.methods.umt import Umt  # noqa: E402
from umt.engine.models import LateFusionNet, ModelConfig  # noqa: E402
from umt.engine.targets import OnlineTeachers  # noqa: E402
from umt.loaders.loading.finish import REGION, finish, pack_shipped  # noqa: E402
from umt.loaders.loading.kernels import resize_to_rgb  # noqa: E402
from umt.loaders.stored.views import ViewSpec  # noqa: E402

MODALITIES = ("video", "audio")


def batch_of(args, rows: int, generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """One in-memory batch shaped like the loader's: uint8 clips, log-mel audio, labels, (row, view)."""
    frames = 1 + int(args.audio_seconds * 16000) // 160
    return {"video": torch.randint(0, 256, (args.batch_size, args.frames, args.size, args.size, 3), dtype=torch.uint8,
                                   generator=generator).to(device),
            "audio": torch.randn(args.batch_size, 1, args.mels, frames, generator=generator).to(device),
            "label": torch.randint(0, args.classes, (args.batch_size,), generator=generator).to(device),
            "row": torch.randint(0, rows, (args.batch_size,), generator=generator).to(device),
            "view": torch.randint(0, args.views, (args.batch_size,), generator=generator).to(device)}


def teachers(args, spec: ViewSpec, root: Path) -> dict[str, str]:
    """Uni-modal checkpoints of the student's width (random weights: only their cost matters here)."""
    paths = {}
    for m in MODALITIES:
        paths[m] = str(root / f"{m}.pt")
        save_model(paths[m], LateFusionNet(ModelConfig((m,), args.classes, args.width)), {"view": spec.to_dict()})
    return paths


def cache(args, rows: int, dims: dict[str, int], root: Path, device: torch.device) -> FeatureTable:
    """A cache of random float16 features in umt's Zarr layout, read whole onto the device."""
    attrs = {"format": store.FORMAT, "split": "train", "num_samples": rows, "num_views": args.views, "seed": 0,
             "teachers": {m: {"dim": d} for m, d in dims.items()}, "shards": ["memory"]}
    group = store.create(root / "cache.zarr", attrs, dims, [{"name": "memory", "count": rows}], {})
    rng = np.random.default_rng(0)
    for m, d in dims.items():
        group[f"features/{m}"][:] = rng.standard_normal((rows, args.views, d)).astype(np.float16)
    return FeatureTable(group, device, budget_bytes=1 << 40)


def throughput(args, name: str, method: Method, accelerator: Accelerator, rows: int) -> float:
    """Samples/s (all processes) of `args.steps` training steps after `args.warmup` untimed ones."""
    torch.manual_seed(0)
    net = LateFusionNet(ModelConfig(MODALITIES, args.classes, args.width, "linear"))
    model = accelerator.prepare(net.to(accelerator.device))
    optimizer = accelerator.prepare(torch.optim.AdamW(model.parameters(), lr=1e-3))
    generator = torch.Generator().manual_seed(accelerator.process_index)
    batches = [batch_of(args, rows, generator, accelerator.device) for _ in range(4)]
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if accelerator.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        batch = batches[step % len(batches)]
        logits, feats = model(batch)
        loss, _ = method.loss(net, batch, logits.float(), {m: f.float() for m, f in feats.items()})
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize()
    rate = args.steps * args.batch_size * accelerator.num_processes / (time.perf_counter() - start)
    accelerator.print(f"{name}: {rate:.1f} samples/s")
    return rate


def shipped_batch(size: int, frames: int, crop: int, frame: tuple[int, int], seconds: float,
                  rng: np.random.Generator) -> tuple[dict, list[np.ndarray]]:
    """A batch as the workers ship it (noise frames, random boxes, flips) and each view's packed planes."""
    height, width = frame
    packed = [rng.integers(0, 256, (frames, height * 3 // 2, width), dtype=np.uint8) for _ in range(size)]
    params = []
    for _ in packed:
        h, w = int(rng.integers(crop // 2, height + 1)), int(rng.integers(crop // 2, width + 1))
        params.append((0, int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w,
                       int(rng.integers(0, 2)), 0))
    flat, layout = pack_shipped(packed, [p[1:5] for p in params], crop)
    audio = rng.integers(-2 ** 15, 2 ** 15, (size, int(seconds * 16000)), dtype=np.int16)
    return {"video": flat, REGION: layout, "params": torch.tensor(params, dtype=torch.int32),
            "audio": torch.from_numpy(audio)}, packed


def finish_cost(args, device: torch.device) -> dict:
    """ms per batch of finishing shipped views on `device` (medians of args.repeats x args.steps), and whether the
    views equal the workers' kernel (checked on the first 4)."""
    spec = ViewSpec(frames=args.finish_frames, crop=args.finish_crop, audio_seconds=args.finish_audio_seconds,
                    mel_bins=args.mels)
    batch, packed = shipped_batch(args.batch_size, spec.frames, spec.crop, tuple(args.finish_frame), spec.audio_seconds,
                                  np.random.default_rng(0))
    out = finish(batch, spec, ["video"], 16000, device)
    params = batch["params"].tolist()
    equal = all(np.array_equal(out["video"][i].cpu().numpy(), resize_to_rgb(packed[i], tuple(params[i][1:5]), spec.crop,
                                                                           bool(params[i][5]))) for i in range(4))
    runs = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            finish(batch, spec, ["video"], 16000, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        runs.append((time.perf_counter() - start) / args.steps * 1e3)
    return {"finish_ms_per_batch": median(runs), "finish_runs_ms": [round(r, 2) for r in runs],
            "finish_equals_kernel": equal, "finish_settings": {**spec.to_dict(), "frame": args.finish_frame,
                                                                "batch_size": args.batch_size}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on any device: checks the script, measures nothing")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--mels", type=int, default=128)
    p.add_argument("--audio-seconds", type=float, default=1.0)
    p.add_argument("--classes", type=int, default=400)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "no"))
    p.add_argument("--finish-frames", type=int, default=16, help="--finish device timing: frames per view")
    p.add_argument("--finish-crop", type=int, default=224)
    p.add_argument("--finish-frame", type=int, nargs=2, default=(256, 456), metavar=("H", "W"))
    p.add_argument("--finish-audio-seconds", type=float, default=10.0)
    args = p.parse_args()
    if args.smoke:
        args.repeats, args.steps, args.warmup, args.batch_size, args.width = 2, 2, 1, 4, 4
        args.frames, args.size, args.mels, args.precision = 2, 32, 16, "no"
        args.finish_frames, args.finish_crop, args.finish_frame, args.finish_audio_seconds = 2, 16, (24, 40), 0.5
    accelerator = Accelerator(mixed_precision=args.precision)
    spec = ViewSpec(frames=args.frames, crop=args.size, audio_seconds=args.audio_seconds, mel_bins=args.mels)
    rows = 4096
    cfg = TrainConfig(data="", out="", method="umt", modalities=MODALITIES, width=args.width, view=spec)
    joint = Method(TrainConfig(data="", out="", modalities=MODALITIES, width=args.width, view=spec))
    with tempfile.TemporaryDirectory() as tmp:
        online, cached = Umt(cfg), Umt(cfg)
        online.targets = OnlineTeachers(teachers(args, spec, Path(tmp)), accelerator.device, spec)
        table = cache(args, rows, online.targets.dims(), Path(tmp), accelerator.device)
        cached.targets = lambda batch: table.gather(batch["row"], batch["view"])  # as CachedTargets does
        runs: dict[str, list[float]] = {"joint": [], "umt_online": [], "umt_cached": []}
        methods = {"joint": joint, "umt_online": online, "umt_cached": cached}
        for repeat in range(args.repeats):
            order = list(runs)[repeat % 3:] + list(runs)[:repeat % 3]  # rotated, so drift hits all alike
            for name in order:
                runs[name].append(throughput(args, name, methods[name], accelerator, rows))
    if accelerator.is_main_process:
        medians = {name: median(values) for name, values in runs.items()}
        write_json(args.out, {"samples_per_s": medians, "runs": runs, **finish_cost(args, accelerator.device),
                              "spread": {n: [round(min(v), 1), round(max(v), 1)] for n, v in runs.items()},
                              "ratio_cached_vs_joint": round(medians["umt_cached"] / medians["joint"], 3),
                              "ratio_cached_vs_online": round(medians["umt_cached"] / medians["umt_online"], 3),
                              "settings": vars(args), "processes": accelerator.num_processes,
                              "device": str(accelerator.device)})


if __name__ == "__main__":
    main()
