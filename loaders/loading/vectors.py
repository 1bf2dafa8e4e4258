"""In-memory loader for shard sets whose modalities are all vectors (`umt-data pack-arrays`).

Pre-extracted features are small next to video, and a tiny MLP step is faster than parsing a tar
sample, so each process reads the split's shards once, keeps them as tensors, and cuts batches by
indexing. Being in memory, the whole split is one shard to the epoch plan: training order is one
(seed, epoch) permutation of all rows, whatever the shards' sizes or order on disk.
"""
from __future__ import annotations

import functools
import io
import json
from typing import Iterator, Sequence

import numpy as np
import torch

from .bad import BadSamples, Skipped, Streak, filled
from .plan import EpochPlan, PlannedLoader
from ..stored.shards import DataError, member
from .stream import Unreadable, planned_samples
from ..stored.views import VIEW_FIELDS, ViewPolicy


@functools.lru_cache(maxsize=None)
def read_shard(path: str, modalities: tuple[str, ...], offset: int, count: int,
               tolerate: bool) -> tuple[dict[str, torch.Tensor], dict[int, Skipped]]:
    """One shard's labels and vectors (rows offset..offset+count-1) as tensors, read once per process, and
    its damaged rows, each named by its `Skipped` record (zeros in the tensors). Without `tolerate`,
    a damaged sample is a DataError naming shard and sample."""
    labels, vectors, damaged = [], {m: [] for m in modalities}, {}
    rows = np.arange(offset, offset + count, dtype=np.int64)
    for row, sample in zip(rows.tolist(), planned_samples([path], np.array([offset, offset + count]), rows, tolerate)):
        try:
            if isinstance(sample, Unreadable):
                raise DataError(sample.reason)
            label = json.loads(sample["json"])["label"]
            got = {m: np.load(io.BytesIO(_member(sample, m)), allow_pickle=False) for m in modalities}
        except (DataError, KeyError, ValueError, OSError) as err:
            key = sample.key if isinstance(sample, Unreadable) else sample.get("__key__", f"row {row}")
            if not tolerate:
                raise DataError(f"{path} sample {key}: {err}") from err
            damaged[row] = Skipped(path, key, str(err))
            label, got = None, None
        labels.append(label)
        for m in modalities:
            vectors[m].append(None if got is None else got[m])
    good = next((i for i, label in enumerate(labels) if label is not None), None)
    if good is None:
        raise DataError(f"{path}: no sample of the shard is readable ({next(iter(damaged.values()), '')})")
    data = {"label": torch.tensor([0 if label is None else label for label in labels])}
    for m, vs in vectors.items():
        zero = np.zeros_like(vs[good])
        data[m] = torch.from_numpy(np.stack([zero if v is None else v for v in vs]))
    return data, damaged


def _member(sample: dict, modality: str) -> bytes:
    if member(modality) not in sample:
        raise DataError(f"no {member(modality)} member (the shard set lacks modality {modality!r})")
    return sample[member(modality)]


class VectorLoader(PlannedLoader):
    """One epoch of one rank's batches, from memory; the split's tensors are gathered when iterated
    (the trainer asks every epoch's length up front). Damaged samples follow `bad` (loaders/loading/bad.py)."""

    def __init__(self, paths: Sequence[str], counts: Sequence[int], plan: EpochPlan, policy: ViewPolicy,
                 modalities: Sequence[str], bad: BadSamples = BadSamples()):
        super().__init__(plan, policy)
        self.paths, self.modalities, self.bad = list(paths), tuple(modalities), bad
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])  # the shards' (the plan sees one)

    def __iter__(self) -> Iterator[dict]:
        if not len(self.plan):
            return
        edges = self.offsets.tolist()
        shards = [read_shard(p, self.modalities, edges[i], edges[i + 1] - edges[i], self.bad.skip)
                  for i, p in enumerate(self.paths)]
        data = {k: torch.cat([s[0][k] for s in shards]) for k in ("label", *self.modalities)}
        damaged = {row: name for s in shards for row, name in s[1].items()}
        rows, views = self.samples()
        streak = Streak(self.bad)
        for start in range(0, len(rows), self.plan.batch_size):
            index = np.arange(start, min(start + self.plan.batch_size, len(rows)))
            skipped = []
            for i in index.tolist():
                if int(rows[i]) in damaged:
                    skipped.append(damaged[int(rows[i])])
                    streak.damaged(skipped[-1])
                else:
                    streak.good()
            take = torch.from_numpy(np.array(filled([i for i in index.tolist() if int(rows[i]) not in damaged],
                                                    skipped), np.int64))
            row = torch.from_numpy(rows)[take]
            batch = {k: v[row] for k, v in data.items()}
            batch.update(row=row, view=torch.from_numpy(views)[take],
                         params=torch.zeros(len(take), len(VIEW_FIELDS), dtype=torch.int32))
            yield {**batch, **({"bad_samples": skipped} if self.bad.skip else {})}
