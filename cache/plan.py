"""A cache's plan before it is built: its size, each rank's memory for it, and the build's hours.

The size is `store.payload_bytes`; whether a rank holds the cache whole or streams it is the
trainer's own rule (`reader.streams`, `TrainConfig.cache_budget_gb`); the hours come from the
per-clip cost model (`loaders.making.costs`).
"""
from __future__ import annotations

from umt.engine.config import TrainConfig
from umt.engine.methods.umt import KINDS
from umt.loaders.making.costs import TEACHER_DIM, Cluster, build_hours

from umt.loaders.stored import cache_store as store
from umt.loaders.stored.cache_reader import rank_bytes, streams


def cache_plan(clips: int, classes: int, cluster: Cluster, views: int = 4, dims: tuple[int, ...] = (TEACHER_DIM,) * 2,
               shard_size: int = 256, budget_gb: float = TrainConfig.cache_budget_gb,
               kinds: tuple[str, ...] = KINDS[TrainConfig.distill_targets]) -> dict:
    """Disk, per-rank memory (resident or streamed) and build hours of a cache of `clips` clips, one teacher
    of each feature width in `dims`."""
    read_widths = [width for dim in dims for width in ((dim,) if "features" in kinds else ()) +
                   ((classes,) if "logits" in kinds else ())]
    disk = store.payload_bytes(clips, views, [dim + classes for dim in dims])
    read = store.payload_bytes(clips, views, read_widths)
    shard = store.payload_bytes(min(shard_size, clips), views, read_widths)
    budget = int(budget_gb * 2**30)
    return {"clips": clips, "views": views, "disk_bytes": disk, "read_bytes": read,
            "streamed": streams(read, budget), "rank_bytes": rank_bytes(read, shard, budget),
            "streamed_bytes_per_rank_per_epoch": -(-read // cluster.world),
            "build_hours": build_hours(clips, cluster.nodes * cluster.cores_per_node)}
