"""`umt-data pack --num-nodes N [--node-rank R]`: one pack shared out over N machines.

A shard's rows and boundaries depend on how many clips before it were rejected, which only
transcoding tells, so nodes cannot write final shards independently. What they share is the
transcoding, nearly all of a pack's cost: each split's written order is cut into blocks of
`shard_size` inputs, and node R transcodes blocks R, R + N, R + 2N, ... (counted over all splits)
into `OUT/parts-<fingerprint>/<split>-<block>.tar` (a part is written under a temporary name and
renamed when whole, so a node killed mid-way and rerun redoes only its unfinished part). The
command without --node-rank then writes the shards from the parts with `pack.py`'s writer, in the
same order as a single-node pack, so the shards are byte-identical to one; it resumes like a
single-node pack, and removes the parts once the manifest is written.
"""
from __future__ import annotations

import itertools
import json
import shutil
import tarfile
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from ..errors import UserError
from ..stored.shards import MANIFEST, ShardWriter, load_manifest
from .inputs import ClipInput
from .pack import transcoding_pool, transcoded, pack, pack_fingerprint, split_orders, state_fingerprint
from .transcode import PackOptions

RESULT = "result.json"  # a part's member holding a clip's metadata and flags, or its reject reason


def blocks(clips: list[ClipInput], seed: int, shard_size: int) -> list[tuple[str, int]]:
    """Every (split, block) of a pack, in the order the nodes share them out."""
    return [(split, b) for split, order in split_orders(clips, seed).items()
            for b in range(-(-len(order) // shard_size))]


def share(all_blocks: list[tuple[str, int]], num_nodes: int, node_rank: int) -> list[tuple[str, int]]:
    """Node `node_rank`'s blocks: every num_nodes-th, so each node has a like mix of splits."""
    return all_blocks[node_rank::num_nodes]


def parts_dir(out: Path, fingerprint: str) -> Path:
    """Where the nodes' parts go: named by the pack's fingerprint, so changed inputs never mix."""
    return out / f"parts-{fingerprint[:16]}"


def _assembled(out: Path, fingerprint: str) -> bool:
    """The manifest of this very pack is written (its parts are gone: nothing is left to do)."""
    return (out / MANIFEST).is_file() and state_fingerprint(out) == fingerprint


def _part(parts: Path, split: str, block: int) -> Path:
    return parts / f"{split}-{block:06d}.tar"


def pack_share(clips: list[ClipInput], out: str | Path, opts: PackOptions, shard_size: int, num_nodes: int,
               node_rank: int, workers: int = 1, seed: int = 0, progress: bool = True) -> list[Path] | None:
    """Transcode node `node_rank`'s blocks into parts (skipping finished ones); returns its parts, or None
    when the shards are written already (the parts are gone)."""
    if not 0 <= node_rank < num_nodes:
        raise UserError(f"--node-rank {node_rank} is not in [0, --num-nodes {num_nodes})")
    out, fingerprint = Path(out), pack_fingerprint(clips, opts, shard_size, seed)
    parts = parts_dir(out, fingerprint)
    if _assembled(out, fingerprint):
        return None
    parts.mkdir(parents=True, exist_ok=True)
    orders = split_orders(clips, seed)
    mine = share(blocks(clips, seed, shard_size), num_nodes, node_rank)
    todo = [(split, b) for split, b in mine if not _part(parts, split, b).is_file()]
    inputs = [orders[split][b * shard_size:(b + 1) * shard_size] for split, b in todo]
    bar = tqdm(total=sum(map(len, inputs)), unit="clip", desc=f"pack node {node_rank}/{num_nodes}",
               disable=not progress)
    # one stream of jobs over every block, so that workers never wait at a block's end
    where = [(k, j) for k, indices in enumerate(inputs) for j in range(len(indices))]
    pool, writer = transcoding_pool(workers), None
    try:
        for (k, j), (_, result) in zip(where, transcoded(pool, clips, [i for ind in inputs for i in ind], opts)):
            split, b = todo[k]
            writer = writer or ShardWriter(_part(parts, split, b))
            if isinstance(result, str):
                media, record = {}, {"rejected": result}
            else:
                media, meta, flags = result
                record = {"meta": meta, "flags": flags}
            writer.write(f"{b * shard_size + j:07d}", {**media, RESULT: json.dumps(record).encode()})
            bar.update()
            if j == len(inputs[k]) - 1:
                writer.close()
                writer = None
    finally:
        if pool is not None:
            pool.terminate()
    bar.close()
    return [_part(parts, split, b) for split, b in mine]


def missing_parts(clips: list[ClipInput], parts: Path, shard_size: int, num_nodes: int,
                  seed: int = 0) -> dict[int, list[str]]:
    """Node rank → names of its parts in `parts` not yet written (empty when every node has finished)."""
    missing: dict[int, list[str]] = {}
    for n, (split, b) in enumerate(blocks(clips, seed, shard_size)):
        if not _part(parts, split, b).is_file():
            missing.setdefault(n % num_nodes, []).append(_part(parts, split, b).name)
    return missing


def _read_part(path: Path) -> Iterator[tuple[int, object]]:
    """(position, transcoded clip or reject reason) of each clip in a part, in order."""
    with tarfile.open(path) as tar:
        for key, infos in itertools.groupby(tar, key=lambda info: info.name.split(".", 1)[0]):
            members = {info.name.split(".", 1)[1]: tar.extractfile(info).read() for info in infos}
            result = json.loads(members.pop(RESULT))
            yield int(key), result["rejected"] if "rejected" in result else (members, result["meta"], result["flags"])


def assemble(clips: list[ClipInput], out: str | Path, opts: PackOptions, shard_size: int, num_nodes: int,
             source: dict | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Write the shards and manifest from every node's parts; a UserError names unfinished nodes' parts."""
    out, fingerprint = Path(out), pack_fingerprint(clips, opts, shard_size, seed)
    if _assembled(out, fingerprint):
        return load_manifest(out)
    parts = parts_dir(out, fingerprint)
    missing = missing_parts(clips, parts, shard_size, num_nodes, seed)
    if missing:
        lines = [f"  node {r}: {len(names)} part(s) missing, e.g. {', '.join(names[:3])}"
                 for r, names in sorted(missing.items())]
        raise UserError(f"{parts}: the pack's share of "
                        f"{len(missing)} node(s) is not finished; run `umt-data pack ... --num-nodes {num_nodes} "
                        f"--node-rank R` for each R below, then this command again:\n" + "\n".join(lines))

    def results(split: str, order: list[int], start: int) -> Iterator[tuple[int, object]]:
        for b in range(start // shard_size, -(-len(order) // shard_size)):
            for position, result in _read_part(_part(parts, split, b)):
                if position >= start:
                    yield order[position], result

    manifest = pack(clips, out, opts, shard_size, source=source, progress=progress, seed=seed, results=results)
    shutil.rmtree(parts)
    return manifest
