"""Helpers shared by the benchmark scripts: medians, torch's thread count for a block, machine description, JSON
output."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch


def machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `threads` (None: left as they are) for the block, restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def write_json(path: str | Path, record: dict) -> None:
    record = {**record, "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
