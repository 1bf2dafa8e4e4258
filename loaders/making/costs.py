"""The per-clip cost model: what packing and caching one clip costs, from measurements on record.

Every figure is a measurement of this code (benchmarks/RESULTS.md names the command); the plans
multiply them by a dataset's size and divide by a cluster's cores. They are CPU figures from a
2-core development machine: a cluster's cores may differ by a small factor either way.
"""
from __future__ import annotations

from dataclasses import dataclass

# core-seconds of `umt-data pack` per second of source video, by source resolution (transcode to short side
# 256, 25 fps, GOP 8, and FLAC); a worker's FFmpeg decodes on every core, so wall time x cores is charged
PACK_CORE_S_PER_SOURCE_S = {
    "256p": 2 * 55.3 / (96 * 10),  # loader_cpu_realistic.json: 96 clips of 10 s, 456x256, in 55.3 s on 2 workers
    "720p": 2 / 1.44 / 4,          # cost_curves_cpu.json "pack": 1.44 clips/s of 4 s 720p, 1 worker on 2 cores
    "1080p": 2 / 0.71 / 4,         # cost_curves_cpu.json "pack": 0.71 clips/s of 4 s 1080p, 1 worker on 2 cores
}
# bytes of shard per second of packed clip (H.264 at short side 256, 25 fps, GOP 8, CRF 23, plus FLAC):
# loader_cpu_realistic.json packed_kbit_per_s 368, on generated clips; camera video compresses less
SHARD_BYTES_PER_S = 368_000 / 8
# core-seconds of `umt-cache build` per clip: 37.6 clips/s on 2 cores, 4 views, width-64 (512-d) teachers,
# views of 4 frames of 32 px, the teachers run in the decoding workers, one a core, which keep the memory they free
# (train_throughput_cpu.json `width_64.cache_build`, RESULTS.md "The cache build's forward in its workers" and "The
# batch's log-mel in one call", issue 31; 31.6 before the workers kept it, 15.1 before the forward ran in them); a
# teacher's forward at training's view size (16 frames of 224 px) costs more, and on a GPU less: not measured here
BUILD_CORE_S_PER_CLIP = 2 / 37.6
CLIP_SECONDS = 10.0   # Kinetics' and VGG-Sound's clip length
TEACHER_DIM = 512     # a ResNet-18-width teacher's feature (--width 64)


@dataclass(frozen=True)
class Cluster:
    """The shape a job runs on."""
    nodes: int = 1
    processes_per_node: int = 1   # ranks (GPUs) per node, for training and the cache build
    cores_per_node: int = 100     # CPU cores per node, for the pack

    @property
    def world(self) -> int:
        return self.nodes * self.processes_per_node


def pack_plan(clips: int, cluster: Cluster, source: str = "720p", clip_seconds: float = CLIP_SECONDS) -> dict:
    """Disk and hours of packing `clips` clips of `clip_seconds` from `source` videos on `cluster`."""
    core_s = clips * clip_seconds * PACK_CORE_S_PER_SOURCE_S[source]
    shards = clips * clip_seconds * SHARD_BYTES_PER_S
    return {"clips": clips, "source": source, "shard_bytes": round(shards),
            "parts_bytes": round(shards) if cluster.nodes > 1 else 0,  # nodes' parts, copied by the final step
            "core_hours": round(core_s / 3600, 2),
            "hours": round(core_s / 3600 / (cluster.nodes * cluster.cores_per_node), 3)}


def pack_worker_bytes(clip_seconds: float, fps: int, short_side: int, aspect: float = 16 / 9) -> int:
    """A transcoding process's largest buffer: the clip's output frames, held whole before encoding
    (RGB, short side `short_side`, `aspect` wide); an estimate from the code, not a measurement."""
    return round(clip_seconds * fps) * short_side * round(short_side * aspect) * 3


def build_hours(clips: int, cores: int) -> float:
    """Hours of `umt-cache build` for `clips` clips on `cores` CPU cores (the measured CPU rate)."""
    return round(clips * BUILD_CORE_S_PER_CLIP / 3600 / cores, 3)
