"""Reading teacher targets at train time without per-sample Zarr reads (docs/design.md, Invariants).

A cache that fits the memory budget is read once, whole, onto the training device; a batch's
targets are then one gather by (row, view). A larger cache is streamed: each Zarr shard (one data
shard's rows) is read in one piece the first time a batch needs it and kept in a small LRU set.
Each rank's loader reads only a few shards at a time (one per worker), so the set stays small.
Only the asked-for kinds (store.KINDS: teacher features, logits) are read.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import zarr

Targets = dict[str, dict[str, torch.Tensor]]  # kind (features, logits) → modality → [B, ...] float32
RESIDENT_SHARDS = 4  # Zarr shards a streaming rank keeps in memory


def streams(nbytes: int, budget_bytes: int) -> bool:
    """The trainer's rule: a cache whose read arrays exceed the budget is streamed, else held whole."""
    return nbytes > budget_bytes


def rank_bytes(nbytes: int, shard_bytes: int, budget_bytes: int, resident_shards: int = RESIDENT_SHARDS) -> int:
    """What one rank holds of a cache of `nbytes` read bytes, `shard_bytes` per Zarr shard."""
    return resident_shards * shard_bytes if streams(nbytes, budget_bytes) else nbytes


class FeatureTable:
    def __init__(self, group: zarr.Group, device: torch.device, budget_bytes: int,
                 resident_shards: int = RESIDENT_SHARDS,
                 kinds: tuple[str, ...] = ("features",)):
        self.group, self.device = group, device
        self.modalities = sorted(group.attrs["teachers"])
        self.names = [(k, m) for k in kinds for m in self.modalities]
        self.arrays = {(k, m): group[f"{k}/{m}"] for k, m in self.names}
        self.shard_rows = self.arrays[self.names[0]].shards[0]
        self.nbytes = sum(a.nbytes for a in self.arrays.values())
        self.streaming = streams(self.nbytes, budget_bytes)
        self.resident_shards = resident_shards
        self._blocks: OrderedDict[int, dict[tuple[str, str], torch.Tensor]] = OrderedDict()
        if not self.streaming:
            self.tables = {name: torch.from_numpy(a[:]).to(device) for name, a in self.arrays.items()}

    def dims(self) -> dict[str, int]:
        """Each teacher's feature dimension."""
        return {m: self.group[f"features/{m}"].shape[-1] for m in self.modalities}

    def gather(self, rows: torch.Tensor, views: torch.Tensor) -> Targets:
        """float32 targets [B, D] per kind and modality for the batch's (row, view) pairs."""
        if not self.streaming:
            return self._nest({name: t[rows, views].float() for name, t in self.tables.items()})
        rows, views = rows.cpu(), views.cpu()
        shard_of = rows // self.shard_rows
        out = {name: torch.empty(len(rows), a.shape[-1], dtype=torch.float16) for name, a in self.arrays.items()}
        for shard in shard_of.unique().tolist():
            mask = shard_of == shard
            block = self._block(shard)
            local = rows[mask] - shard * self.shard_rows
            for name in self.names:
                out[name][mask] = block[name][local, views[mask]]
        return self._nest({name: t.to(self.device).float() for name, t in out.items()})

    @staticmethod
    def _nest(flat: dict[tuple[str, str], torch.Tensor]) -> Targets:
        nested: Targets = {}
        for (kind, m), t in flat.items():
            nested.setdefault(kind, {})[m] = t
        return nested

    def _block(self, shard: int) -> dict[tuple[str, str], torch.Tensor]:
        if shard in self._blocks:
            self._blocks.move_to_end(shard)
        else:
            lo = shard * self.shard_rows
            self._blocks[shard] = {name: torch.from_numpy(a[lo:lo + self.shard_rows])
                                   for name, a in self.arrays.items()}
            while len(self._blocks) > self.resident_shards:
                self._blocks.popitem(last=False)
        return self._blocks[shard]
