"""A debug trace of what each rank trains on, for checking sharding and resume from outside a run.

With the environment variable UMT_SAMPLE_TRACE=1, every rank appends one JSON line per micro-batch to
OUT/trace/rank<r>.jsonl: {"epoch", "batch" (1-based global batch index in the epoch), "rank",
"world", "from_step" (the optimiser step this attempt started or resumed at), "rows", "views"}.
A killed attempt's lines after its last checkpoint are batches the resumed attempt repeats.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

ENV = "UMT_SAMPLE_TRACE"


class SampleTrace:
    """Appends (row, view) of each consumed batch to this rank's trace file; a no-op unless ENV is 1."""

    def __init__(self, out: str | Path, rank: int, world: int, from_step: int):
        self.path = Path(out) / "trace" / f"rank{rank}.jsonl" if os.environ.get(ENV) == "1" else None
        self.head = {"rank": rank, "world": world, "from_step": from_step}
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, epoch: int, batch: int, rows: torch.Tensor, views: torch.Tensor) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as handle:  # a line at a time: a killed run leaves whole lines
            handle.write(json.dumps({"epoch": epoch, "batch": batch, **self.head, "rows": rows.tolist(),
                                     "views": views.tolist()}) + "\n")
