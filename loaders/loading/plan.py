"""The epoch plan: which samples one rank reads in an epoch, in which order, in which batches.

Pure arithmetic on global facts (the split's shard counts, seed, epoch, rank, world size, batch
size), so every rank and every backend derives the same plan without talking to the others.

Training: the epoch's global order takes the shards in a (seed, epoch) permutation and the samples
of each shard in a (seed, epoch, shard) permutation. A global batch of G = world * B samples (B per
rank) is taken from each of C streams: stream c is the contiguous slice [c*M, (c+1)*M) of that order
with M = floor(N / G) * G / C, and global batch k is the concatenation of every stream's k-th run of
G/C samples; rank r reads positions [r*B, (r+1)*B) of each global batch. So every rank has exactly
floor(N / G) batches, no sample is read twice and fewer than G are left out. C defaults to the world
size, where rank r's samples are exactly stream r (a shard is shared by two ranks only where a
stream ends inside it: the ranks open at most S + world - 1 shards in all, so a streaming backend
reads about its share). The global batches depend on (counts, seed, epoch, G, C) only, not on the
world size: a run started on W processes (C = W) and resumed on W' (same G and C, B = G / W')
reads the same global batches, each split W' ways (elastic resume). Resuming at batch k reads the
same slice from global batch k. For world = 1 = C the order does not depend on B (a shorter or
longer prefix of one order).

Evaluation: every sample once, in row order, rank r reading rows [r*N//world, (r+1)*N//world) with a
partial last batch; gathering the ranks' results in rank order gives the split in row order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from ..stored.views import ViewPolicy


@dataclass(frozen=True)
class EpochPlan:
    """One rank's samples of one epoch, from batch `start` on: global rows in reading order."""

    rows: np.ndarray        # int64 global rows (row = shard offset + position in shard), reading order
    batch_size: int
    offsets: np.ndarray     # int64 [S + 1]: shard s holds rows [offsets[s], offsets[s + 1])

    def __len__(self) -> int:
        """Batches left (the last may be partial in evaluation)."""
        return -(-len(self.rows) // self.batch_size)

    def batches(self) -> list[np.ndarray]:
        """The rows of each batch, in order."""
        return [self.rows[i:i + self.batch_size] for i in range(0, len(self.rows), self.batch_size)]

    def shards(self, rows: np.ndarray | None = None) -> np.ndarray:
        """The shard index of each row (of `rows`, default this plan's rows)."""
        return np.searchsorted(self.offsets, self.rows if rows is None else rows, side="right") - 1


def epoch_order(counts: Sequence[int], seed: int, epoch: int) -> np.ndarray:
    """The epoch's global training order: shards permuted, then each shard's samples permuted."""
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    shard_order = np.random.default_rng([seed, epoch]).permutation(len(counts))
    return np.concatenate([offsets[s] + np.random.default_rng([seed, epoch, s]).permutation(counts[s])
                           for s in shard_order] or [np.zeros(0, np.int64)]).astype(np.int64)


def plan_epoch(counts: Sequence[int], seed: int, epoch: int, rank: int, world: int, batch_size: int,
               train: bool, start: int = 0, streams: int | None = None) -> EpochPlan:
    """Rank `rank` of `world`'s plan for an epoch over shards of these sample counts, from batch `start`;
    `streams` (training only) is C above, by default `world`, and must divide the global batch."""
    streams = world if streams is None else streams
    if batch_size < 1 or world < 1 or not 0 <= rank < world or start < 0 or streams < 1:
        raise ValueError(f"batch size {batch_size}, rank {rank} of {world}, start {start}, {streams} streams: "
                         "out of range")
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    total = int(offsets[-1])
    if train:
        glob = world * batch_size
        if glob % streams:
            raise ValueError(f"a global batch of {glob} does not split into {streams} streams")
        used = total // glob * glob
        runs = epoch_order(counts, seed, epoch)[:used].reshape(streams, used // glob, glob // streams)
        rows = runs.transpose(1, 0, 2).reshape(-1, glob)[:, rank * batch_size:(rank + 1) * batch_size].reshape(-1)
    else:
        rows = np.arange(rank * total // world, (rank + 1) * total // world, dtype=np.int64)
    return EpochPlan(rows[start * batch_size:], batch_size, offsets)


class PlannedLoader:
    """What every backend's epoch loader is: the batches of a plan, each sample cut to the view its
    policy gives. Subclasses supply `__iter__` (dict batches: label, row, view, params, modalities)."""

    def __init__(self, plan: EpochPlan, policy: ViewPolicy):
        self.plan, self.policy = plan, policy

    def __len__(self) -> int:
        return len(self.plan)

    def samples(self) -> tuple[np.ndarray, np.ndarray]:
        """(row, view index) of every sample this loader yields, in order."""
        return self.plan.rows, self.policy.indices(self.plan.rows)

    def __iter__(self) -> Iterator[dict]:
        raise NotImplementedError
