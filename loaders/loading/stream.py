"""Raw tar samples of a shard set in the order an epoch plan asks for them.

Shards are streamed in the order the rows first need them; of each, only the asked rows are kept
(encoded bytes, nothing decoded), and reading stops once a shard's last asked row has been seen.
The plan reads shards in runs, so at most two shards' asked rows are held at once.
"""
from __future__ import annotations

import json
from typing import Iterator, Sequence

import numpy as np
import webdataset as wds

from ..stored.shards import DataError


def tar_samples(path: str) -> Iterator[dict]:
    """One shard's samples (members grouped by key), in stored order."""
    return iter(wds.DataPipeline(wds.SimpleShardList([path]), wds.tarfile_to_samples()))


def planned_samples(paths: Sequence[str], offsets: np.ndarray, rows: np.ndarray) -> Iterator[dict]:
    """The tar sample of each global row of `rows`, in that order (shard s holds rows
    [offsets[s], offsets[s + 1]) in stored order; each sample's JSON row is checked against it)."""
    shard_of = np.searchsorted(offsets, rows, side="right") - 1
    first_need = np.unique(shard_of, return_index=True)
    held: dict[int, dict] = {}
    emitted = 0
    for shard in first_need[0][np.argsort(first_need[1])].tolist():
        wanted = set((rows[shard_of == shard] - offsets[shard]).tolist())
        position = -1
        for position, sample in enumerate(tar_samples(paths[shard])):
            if position in wanted:
                row = int(offsets[shard]) + position
                if "json" in sample and json.loads(sample["json"]).get("row") != row:
                    raise DataError(f"{paths[shard]}: sample {sample['__key__']} is not row {row}: the shard "
                                    "does not match the manifest")
                held[row] = sample
                wanted.discard(position)
                if not wanted:
                    break
        if wanted:
            raise DataError(f"{paths[shard]} ended after {position + 1} samples; the manifest says "
                            f"{int(offsets[shard + 1] - offsets[shard])}: the data changed since it was written")
        while emitted < len(rows) and int(rows[emitted]) in held:
            yield held.pop(int(rows[emitted]))
            emitted += 1
