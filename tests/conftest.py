"""Shared tiny data and teachers, generated once per test session through the real CLIs."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import psutil
import pytest
import torch

from umt.cache.cli import main as cache_main
from umt.engine.cli import main as train_main
from umt.loaders.cli import main as data_main
from umt.loaders.loading.images import ffcv_ready

# A dataset small enough that a few steps take a second: 4 train shards of 16 clips.
SYNTH_ARGS = ["--train", "64", "--val", "16", "--test", "16", "--shard-size", "16", "--size", "24",
              "--frames", "6", "--audio-seconds", "0.5", "--classes", "4"]
VIEW_ARGS = ["--frames", "3", "--stride", "2", "--crop", "16", "--audio-seconds", "0.25", "--mel-bins", "16"]
EVAL_ARGS = ["--batch-size", "8", "--workers", "0", *VIEW_ARGS]  # what `--method ume` reads of them
MODEL_ARGS = ["--width", "4", *EVAL_ARGS]


def synth(out: Path, *extra: str) -> Path:
    data_main(["synth", str(out), *SYNTH_ARGS, *extra])
    return out


def train(data: Path, out: Path, *extra: str) -> Path:
    train_main(["--data", str(data), "--out", str(out), *MODEL_ARGS, *extra])
    return out


def ume(data: Path, out: Path, members: dict[str, Path], *extra: str) -> Path:
    """`umt-train --method ume` over these uni-modal checkpoints (it trains nothing: no --width)."""
    train_main(["--data", str(data), "--out", str(out), "--method", "ume", *EVAL_ARGS,
                *[f"--member={m}={p}" for m, p in members.items()], *extra])
    return out


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    return synth(tmp_path_factory.mktemp("data") / "synth")


@pytest.fixture(scope="session")
def teachers(data, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("teachers")
    return {m: train(data, root / m, "--method", "unimodal", "--modality", m, "--epochs", "1") / "model.pt"
            for m in ("video", "audio")}


@pytest.fixture(scope="session")
def cache(data, teachers, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "cache.zarr"
    cache_main(["build", "--data", str(data), "--out", str(out), "--views", "2", "--workers", "0",
                *[f"--teacher={m}={p}" for m, p in teachers.items()]])
    return out


def free_port() -> int:
    """A free rendezvous port: two launches never collide (e.g. under pytest -n)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_command(module: str, args: Sequence[str], processes: int = 2, machines: int = 1, machine_rank: int = 0,
                   port: int | None = None) -> list[str]:
    """`accelerate launch` of `python -m module args` (or, for a path ending in .py, that script) as
    `processes` CPU processes in all (gloo DDP), this being machine `machine_rank` of `machines`."""
    target = [module] if module.endswith(".py") else ["-m", module]
    nodes = ["--machine_rank", str(machine_rank), "--main_process_ip", "127.0.0.1"] if machines > 1 else []
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", str(machines), *nodes, "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port or free_port()), *target, *args]


LAUNCH_ENV = {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}


def accelerate_launch(module: str, *args: str, processes: int = 2, env: dict[str, str] | None = None) -> None:
    """Run `python -m module args` (or, for a path ending in .py, that script) as several CPU processes
    through Accelerate (gloo DDP)."""
    subprocess.run(launch_command(module, args, processes), check=True, env={**os.environ, **LAUNCH_ENV, **(env or {})},
                   timeout=300)


def kill_when(module: str, args: list[str], ready: Callable[[], bool], timeout: float = 120,
              env: dict[str, str] | None = None, processes: int = 1) -> None:
    """Run `python -m module args` (with `env` added to the environment; with `processes` > 1 under
    accelerate launch), SIGKILL it and its processes as soon as ready() holds; fail if it finished first."""
    if processes == 1:
        # the same torch threads as this process (bitwise comparisons with runs in it; an import of ffcv, or
        # a pytest-xdist worker, can leave it with other than the default)
        command, base = [sys.executable, "-m", module, *args], {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    else:
        command, base = launch_command(module, args, processes), LAUNCH_ENV
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **base, **(env or {})})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            hit = ready()
        except Exception:  # the watched file is being created
            hit = False
        if hit:  # the launcher's workers run in sessions of their own: each is killed by its id
            for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"{module} finished before it could be killed"


def _state(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def kill_and_resume(tmp_path, args: list[str], epochs: int, kill_at: int = 4, env: dict[str, str] | None = None,
                    processes: int = 1, whole: Path | None = None) -> None:
    """Train with `args` (the killed process with `env` added), SIGKILL after step `kill_at`'s checkpoint,
    resume; the final weights equal an uninterrupted run's (`whole`, or one run here) bit for bit, and the
    log holds one record per epoch. With processes > 1, each run is an accelerate launch of that many."""
    killed = tmp_path / "killed"
    ckpt = killed / "checkpoints" / "last.pt"

    def ready() -> bool:
        return torch.load(ckpt, weights_only=False)["position"]["step"] >= kill_at

    def run(*extra: str) -> None:
        if processes == 1:
            train_main([*args, *extra])
        else:
            accelerate_launch("umt.engine.cli", *args, *extra, processes=processes)

    if processes == 1:
        kill_when("umt.engine.cli", ["--out", str(killed), *args], ready, env=env)
    else:
        kill_when("umt.engine.cli", ["--out", str(killed), *args], ready, env=env, processes=processes)
    assert torch.load(ckpt, weights_only=False)["position"]["batch"] > 0  # killed mid-epoch
    run("--out", str(killed), "--resume", "latest")
    if whole is None:
        whole = tmp_path / "whole"
        run("--out", str(whole))
    resumed, whole_state = _state(killed / "model.pt"), _state(whole / "model.pt")
    assert resumed.keys() == whole_state.keys()
    for name in whole_state:
        assert torch.equal(resumed[name], whole_state[name]), name  # bitwise on CPU
    records = [[json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"val_top1"' in l]
               for out in (killed, whole)]
    assert len(records[0]) == epochs  # one record per epoch: nothing lost, nothing repeated
    for mine, theirs in zip(*records):  # the same losses and method state, epoch by epoch
        assert mine["train_loss"] == theirs["train_loss"] and mine.get("blend_weights") == theirs.get("blend_weights")


@pytest.fixture(scope="session")
def strong_weak(tmp_path_factory) -> Path:
    """Vector views of 240 samples, 3 classes: `strong` shows the class plainly, `weak` noisily (peer-method tests)."""
    raw = tmp_path_factory.mktemp("peer-vectors")
    rng = np.random.default_rng(0)
    labels = np.arange(240) % 3
    np.save(raw / "strong.npy", np.eye(3)[labels] * 3 + rng.normal(size=(240, 3)))
    np.save(raw / "weak.npy", np.c_[np.eye(3)[labels] + rng.normal(size=(240, 3)), rng.normal(size=(240, 2))])
    (raw / "labels.csv").write_text("label\n" + "".join(f"c{y}\n" for y in labels))
    data_main(["pack-arrays", f"--view=strong={raw / 'strong.npy'}", f"--view=weak={raw / 'weak.npy'}",
               "--labels", str(raw / "labels.csv"), "--out", str(raw / "packed"), "--shard-size", "40"])
    return raw / "packed"


@pytest.fixture
def ffcv_uncompiled(monkeypatch):
    """ffcv's pipeline run as Python in this process: each ffcv Loader otherwise spends 1.5-3.5 s compiling
    on this machine, and a few training runs build dozens. The compiled pipeline is what
    tests/test_images.py's test_training_order_views_and_pixels checks; these tests are about the
    trainer, the cache and resuming, on the same pixels. (Not NUMBA_DISABLE_JIT here: numba re-reads it
    while compiling, and functions decorated afterwards would stop being compiled mid-process.)"""
    if importlib.util.find_spec("ffcv") is None:
        pytest.skip("ffcv is not installed (make install puts it in)")
    ffcv_ready()  # imported keeping this process's torch threads (ffcv's import would set them to 1)
    from ffcv.pipeline.compiler import Compiler
    monkeypatch.setattr(Compiler, "is_enabled", False)
