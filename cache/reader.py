"""Reading teacher targets at train time without per-sample Zarr reads (DESIGN.md §3).

A cache that fits the memory budget is read once, whole, onto the training device; a batch's
targets are then one gather by (row, view). A larger cache is streamed: each Zarr shard (one data
shard's rows) is read in one piece the first time a batch needs it and kept in a small LRU set.
Each rank's loader reads only a few shards at a time (one per worker), so the set stays small.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import zarr


class FeatureTable:
    def __init__(self, group: zarr.Group, device: torch.device, budget_bytes: int, resident_shards: int = 4):
        self.group, self.device = group, device
        self.modalities = sorted(group.attrs["teachers"])
        self.arrays = {m: group[f"features/{m}"] for m in self.modalities}
        self.shard_rows = self.arrays[self.modalities[0]].shards[0]
        self.nbytes = sum(a.nbytes for a in self.arrays.values())
        self.streaming = self.nbytes > budget_bytes
        self.resident_shards = resident_shards
        self._blocks: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()
        if not self.streaming:
            self.tables = {m: torch.from_numpy(a[:]).to(device) for m, a in self.arrays.items()}

    def dims(self) -> dict[str, int]:
        return {m: a.shape[-1] for m, a in self.arrays.items()}

    def gather(self, rows: torch.Tensor, views: torch.Tensor) -> dict[str, torch.Tensor]:
        """float32 targets [B, D] per modality for the batch's (row, view) pairs."""
        if not self.streaming:
            return {m: t[rows, views].float() for m, t in self.tables.items()}
        rows, views = rows.cpu(), views.cpu()
        shard_of = rows // self.shard_rows
        out = {m: torch.empty(len(rows), a.shape[-1], dtype=torch.float16) for m, a in self.arrays.items()}
        for shard in shard_of.unique().tolist():
            mask = shard_of == shard
            block = self._block(shard)
            local = rows[mask] - shard * self.shard_rows
            for m in self.modalities:
                out[m][mask] = block[m][local, views[mask]]
        return {m: t.to(self.device).float() for m, t in out.items()}

    def _block(self, shard: int) -> dict[str, torch.Tensor]:
        if shard in self._blocks:
            self._blocks.move_to_end(shard)
        else:
            lo = shard * self.shard_rows
            self._blocks[shard] = {m: torch.from_numpy(a[lo:lo + self.shard_rows]) for m, a in self.arrays.items()}
            while len(self._blocks) > self.resident_shards:
                self._blocks.popitem(last=False)
        return self._blocks[shard]
