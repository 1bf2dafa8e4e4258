"""Other process counts and machines, in one shared set of runs on 168 training vectors:

- elastic resume: runs with a global batch of 8 (2 epochs of 21 global batches) are killed mid-epoch on one
  number of processes and resumed on the other; each consumes the same (row, view) pairs, batch for batch, as an
  uninterrupted run on the number it started with (UMT_SAMPLE_TRACE);
- two machines for real: two `accelerate launch` processes as nodes 0 and 1 of one job on this host over gloo
  (the README's SLURM recipe minus the scheduler) build a cache, each node from the train shards it owns (the
  only ones its local copy holds), then train UMT on it in step; the same launch resumes the 1 -> 2 run.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from umt.loaders.stored import cache_store as store
from umt.engine.cli import main as train_main

from conftest import LAUNCH_ENV, free_port, kill_when, launch_command

SEVERAL = str(Path(__file__).parent / "several_runs.py")
COMMON = "--modality strong --modality weak --width 4 --workers 0 --no-probe --log-with none"
ELASTIC = f"--method joint --fusion mlp --epochs 2 --global-batch 8 --num-views 3 --checkpoint-every 1 {COMMON}"
TRACE = {"UMT_SAMPLE_TRACE": "1"}


def node_copy(data: Path, root: Path, node: int) -> Path:
    """What node `node` of 2 holds locally: the manifest, the other splits and the train shards it owns in a
    cache build (node, node + 2, ...): a read of another train shard fails."""
    local = shutil.copytree(data, root / f"node{node}")
    for i, shard in enumerate(sorted(local.glob("train-*.tar"))):
        if i % 2 != node:
            shard.unlink()
    return local


@pytest.fixture(scope="module")
def runs(strong_weak, tmp_path_factory) -> tuple[Path, dict[int, dict]]:
    root = tmp_path_factory.mktemp("nodes")
    elastic = f"--data {strong_weak} {ELASTIC}"

    def killed_at(world: int, step: int) -> dict:
        ckpt = root / f"from{world}" / "checkpoints" / "last.pt"
        kill_when("umt.engine.cli", [*elastic.split(), "--out", str(root / f"from{world}")], processes=world,
                  env=TRACE, ready=lambda: torch.load(ckpt, weights_only=False)["position"]["step"] >= step)
        return torch.load(ckpt, weights_only=False)["position"]

    with ThreadPoolExecutor(2) as pool:  # both at once: mostly process start-up
        # 2 -> 1 killed in its second epoch, 1 -> 2 in its first
        killed = dict(zip((2, 1), pool.map(killed_at, (2, 1), (24, 5))))
    for m in ("strong", "weak"):
        train_main(["--data", str(strong_weak), "--out", str(root / m), "--method", "unimodal", "--modality", m,
                    "--epochs", "1", "--max-steps", "3", "--batch-size", "8", "--width", "4", "--workers", "0",
                    "--no-probe", "--log-with", "none"])
    port, nodes = free_port(), []
    for node in (0, 1):
        build = (f"umt-cache build --data {node_copy(strong_weak, root, node)} --out {root / 'cache.zarr'} --views 2 "
                 f"--workers 0 --teacher strong={root / 'strong' / 'model.pt'} --teacher weak={root / 'weak' / 'model.pt'}")
        umt = (f"--data {strong_weak} --out {root / 'umt'} --method umt --cache {root / 'cache.zarr'} --epochs 1 "
               f"--global-batch 8 --num-views 2 {COMMON}")
        commands = [build, umt, f"{elastic} --out {root / 'from1'} --resume latest", f"{elastic} --out {root / 'whole2'}"]
        nodes.append(subprocess.Popen(launch_command(SEVERAL, commands, processes=2, machines=2, machine_rank=node,
                                                     port=port), env={**os.environ, **LAUNCH_ENV, **TRACE}))
    assert [p.wait(timeout=300) for p in nodes] == [0, 0]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UMT_SAMPLE_TRACE", "1")
        train_main([*elastic.split(), "--out", str(root / "from2"), "--resume", "latest"])
        train_main([*elastic.split(), "--out", str(root / "whole1")])
    return root, killed


def _consumed(run: Path, attempt: int) -> list[tuple[tuple[int, int], list[tuple[int, int]]]]:
    """One attempt's global batches in order: ((epoch, batch), its (row, view) pairs over the ranks in rank order)."""
    lines = [json.loads(l) for f in sorted((run / "trace").glob("rank*.jsonl")) for l in f.read_text().splitlines()]
    lines = [l for l in lines if l["from_step"] == attempt]
    batches: dict[tuple[int, int], list] = {}
    for l in sorted(lines, key=lambda l: (l["epoch"], l["batch"], l["rank"])):
        batches.setdefault((l["epoch"], l["batch"]), []).extend(zip(l["rows"], l["views"]))
    assert {l["world"] for l in lines} == ({len({l["rank"] for l in lines})} if lines else set())
    return sorted(batches.items())


@pytest.mark.parametrize("start", [2, 1])
def test_killed_run_resumed_on_another_number_of_processes_reads_the_same_global_batches(runs, start):
    """The killed attempt up to its checkpoint, then the attempt resumed on the other process count, consumed
    exactly the global batches of an uninterrupted run on `start` processes, in its order."""
    root, killed = runs
    run, whole, position = root / f"from{start}", root / f"whole{start}", killed[start]
    assert position["world"] == start and position["batch"] > 0  # killed mid-epoch
    done, resumed, want = _consumed(run, 0), _consumed(run, position["step"]), _consumed(whole, 0)
    assert [b for b in done if b[0] <= (position["epoch"], position["batch"])] + resumed == want
    assert len(want) == 2 * 168 // 8 and all(len(b[1]) == 8 for b in want)
    assert json.loads((run / "results.json").read_text())["processes"] == 3 - start
    final, same = (torch.load(r / "model.pt", weights_only=True)["state_dict"] for r in (run, whole))
    for name in same:  # the same steps; only the reduction order of the gradients differs
        torch.testing.assert_close(final[name], same[name], rtol=1e-5, atol=1e-6)


def test_two_nodes_build_a_cache_from_their_own_shards_and_train_on_it_in_step(runs):
    root, _ = runs
    assert store.open_group(str(root / "cache.zarr"))["done"][:].tolist() == [True] * 5  # each node built its own
    results = json.loads((root / "umt" / "results.json").read_text())
    assert results["processes"] == 2 and results["replica_max_abs_diff"] == 0.0 and results["steps"] == 168 // 8
    trace = [[json.loads(l) for l in (root / "umt" / "trace" / f"rank{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)]
    assert [len(t) for t in trace] == [21, 21] and {l["world"] for t in trace for l in t} == {2}
    assert sorted(r for t in trace for l in t for r in l["rows"]) == list(range(168))  # each half of every batch
