"""Helpers shared by the benchmark scripts: medians, machine description, JSON output."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch


def machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def write_json(path: str | Path, record: dict) -> None:
    record = {**record, "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
