"""Raw tar samples of a shard set in the order an epoch plan asks for them.

Shards are streamed in the order the rows first need them; of each, only the asked rows are kept
(encoded bytes, nothing decoded), and reading stops once a shard's last asked row has been seen.
The plan reads shards in runs, so at most two shards' asked rows are held at once.
"""
from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import webdataset as wds

from ..stored.shards import DataError


def tar_samples(path: str) -> Iterator[dict]:
    """One shard's samples (members grouped by key), in stored order."""
    return iter(wds.DataPipeline(wds.SimpleShardList([path]), wds.tarfile_to_samples()))


@dataclass(frozen=True)
class Unreadable:
    """A planned row its shard could not give (a damaged or short tar), in the row's place in the stream."""

    url: str
    key: str
    reason: str


def planned_samples(paths: Sequence[str], offsets: np.ndarray, rows: np.ndarray,
                    tolerate: bool = False) -> Iterator[dict | Unreadable]:
    """The tar sample of each global row of `rows`, in that order (shard s holds rows
    [offsets[s], offsets[s + 1]) in stored order; each sample's JSON row is checked against it).

    A shard that breaks off, or holds a sample out of place, is a DataError naming it; with
    `tolerate`, each row it cannot give comes as an `Unreadable` instead, so the caller decides.
    """
    shard_of = np.searchsorted(offsets, rows, side="right") - 1
    first_need = np.unique(shard_of, return_index=True)
    held: dict[int, dict | Unreadable] = {}
    emitted = 0
    for shard in first_need[0][np.argsort(first_need[1])].tolist():
        wanted = set((rows[shard_of == shard] - offsets[shard]).tolist())
        count, position, broken = int(offsets[shard + 1] - offsets[shard]), -1, None
        try:
            for position, sample in enumerate(tar_samples(paths[shard])):
                if position in wanted:
                    row = int(offsets[shard]) + position
                    if _json_row(sample) != row:
                        problem = Unreadable(paths[shard], sample["__key__"], f"is not row {row}: the shard does "
                                             "not match the manifest")
                        if not tolerate:
                            raise DataError(f"{paths[shard]}: sample {problem.key} {problem.reason}")
                    held[row] = sample if _json_row(sample) == row else problem
                    wanted.discard(position)
                    if not wanted:
                        break
        except (tarfile.TarError, OSError, ValueError) as err:  # a damaged tar header or a short read
            broken = f"the tar breaks off after {position + 1} of {count} samples ({err})"
            if not tolerate:
                raise DataError(f"{paths[shard]}: {broken}") from err
        if wanted and not tolerate:
            raise DataError(f"{paths[shard]} ended after {position + 1} samples; the manifest says "
                            f"{count}: the data changed since it was written")
        short = broken or f"missing: the shard ends after {position + 1} of {count} samples"
        for missing in wanted:
            held[int(offsets[shard]) + missing] = Unreadable(paths[shard], f"row {int(offsets[shard]) + missing}", short)
        while emitted < len(rows) and int(rows[emitted]) in held:
            yield held.pop(int(rows[emitted]))
            emitted += 1


def _json_row(sample: dict) -> int | None:
    """The row a sample's JSON member says it is (None when it has no readable one)."""
    try:
        return json.loads(sample["json"]).get("row")
    except (KeyError, ValueError, AttributeError):
        return None
