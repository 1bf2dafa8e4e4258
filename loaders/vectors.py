"""In-memory loader for shard sets whose modalities are all vectors (`umt-data pack-arrays`).

Pre-extracted features are small next to video, and a tiny MLP step is faster than parsing a tar
sample, so each process reads its shards once, keeps them as tensors, and cuts batches by
indexing. The rules match the streaming loader's: a rank reads the shards `rank_shards` deals it,
the order is a permutation seeded by (seed, epoch, rank), training drops the last partial batch
and caps every rank at the smallest rank's count, and `skip` resumes mid-epoch.
"""
from __future__ import annotations

import functools
import io
import json
import random
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import webdataset as wds

from .shards import DataError
from .views import VIEW_FIELDS


@functools.lru_cache(maxsize=None)
def read_shard(path: str, modalities: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """One shard's rows, labels and vectors as tensors, read once per process."""
    rows, labels, vectors = [], [], {m: [] for m in modalities}
    for sample in wds.DataPipeline(wds.SimpleShardList([path]), wds.tarfile_to_samples()):
        meta = json.loads(sample["json"])
        rows.append(meta["row"])
        labels.append(meta["label"])
        for m in modalities:
            member = sample.get(f"{m}.npy")
            if member is None:
                raise DataError(f"{path} sample {sample['__key__']}: no {m}.npy member "
                                f"(the shard set lacks modality {m!r})")
            vectors[m].append(np.load(io.BytesIO(member), allow_pickle=False))
    return {"row": torch.tensor(rows), "label": torch.tensor(labels),
            **{m: torch.from_numpy(np.stack(v)) for m, v in vectors.items()}}


class VectorLoader:
    """One epoch of one rank's batches, from memory; the epoch's tensors are gathered when iterated
    (the trainer asks every epoch's length up front)."""

    def __init__(self, paths: Sequence[str], modalities: Sequence[str], view_of: Callable[[int], int],
                 batch_size: int, order_seed: str | None, num_batches: int, skip: int = 0):
        self.paths, self.modalities, self.view_of, self.batch_size = list(paths), tuple(modalities), view_of, batch_size
        self.order_seed, self.num_batches, self.skip = order_seed, num_batches, skip

    def __len__(self) -> int:
        return self.num_batches - self.skip

    def __iter__(self) -> Iterator[dict]:
        if self.num_batches <= self.skip:
            return
        shards = [read_shard(p, self.modalities) for p in self.paths]
        data = {k: torch.cat([s[k] for s in shards]) for k in ("row", "label", *self.modalities)}
        order = list(range(len(data["row"])))
        if self.order_seed is not None:
            random.Random(self.order_seed).shuffle(order)
        order = torch.tensor(order, dtype=torch.long)
        for b in range(self.skip, self.num_batches):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            batch = {k: v[index] for k, v in data.items()}
            batch["view"] = torch.tensor([self.view_of(int(r)) for r in batch["row"]])
            batch["params"] = torch.zeros(len(index), len(VIEW_FIELDS), dtype=torch.int32)
            yield batch


def batch_count(count: int, batch_size: int, train: bool) -> int:
    return count // batch_size if train else -(-count // batch_size)
