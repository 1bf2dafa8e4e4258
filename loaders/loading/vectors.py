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

from .plan import EpochPlan, PlannedLoader
from ..stored.shards import DataError, member
from .stream import tar_samples
from ..stored.views import VIEW_FIELDS, ViewPolicy


@functools.lru_cache(maxsize=None)
def read_shard(path: str, modalities: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """One shard's rows, labels and vectors as tensors, read once per process."""
    rows, labels, vectors = [], [], {m: [] for m in modalities}
    for sample in tar_samples(path):
        meta = json.loads(sample["json"])
        rows.append(meta["row"])
        labels.append(meta["label"])
        for m in modalities:
            data = sample.get(member(m))
            if data is None:
                raise DataError(f"{path} sample {sample['__key__']}: no {member(m)} member "
                                f"(the shard set lacks modality {m!r})")
            vectors[m].append(np.load(io.BytesIO(data), allow_pickle=False))
    return {"row": torch.tensor(rows), "label": torch.tensor(labels),
            **{m: torch.from_numpy(np.stack(v)) for m, v in vectors.items()}}


class VectorLoader(PlannedLoader):
    """One epoch of one rank's batches, from memory; the split's tensors are gathered when iterated
    (the trainer asks every epoch's length up front)."""

    def __init__(self, paths: Sequence[str], plan: EpochPlan, policy: ViewPolicy, modalities: Sequence[str]):
        super().__init__(plan, policy)
        self.paths, self.modalities = list(paths), tuple(modalities)

    def __iter__(self) -> Iterator[dict]:
        if not len(self.plan):
            return
        shards = [read_shard(p, self.modalities) for p in self.paths]
        data = {k: torch.cat([s[k] for s in shards]) for k in ("row", "label", *self.modalities)}
        if not torch.equal(data.pop("row"), torch.arange(len(data["label"]))):
            raise DataError(f"{self.paths[0]}...: the shards do not hold rows 0..{len(data['label']) - 1} in order")
        rows, views = self.samples()
        for start in range(0, len(rows), self.plan.batch_size):
            index = torch.from_numpy(rows[start:start + self.plan.batch_size])
            batch = {k: v[index] for k, v in data.items()}
            batch.update(row=index, view=torch.from_numpy(views[start:start + len(index)]),
                         params=torch.zeros(len(index), len(VIEW_FIELDS), dtype=torch.int32))
            yield batch
