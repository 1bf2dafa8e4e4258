"""`umt-data pack`: annotation file + videos → WebDataset shards + manifest.json, resumably.

Each split's clips are written in a seeded random order (`written_order`; the seed is in the
manifest), so the shards of a class-sorted annotation file (Kinetics, UCF101) mix classes; clips are
transcoded in parallel worker processes but written in that order, so the same inputs, options and
seed always give the same shards. Each split's accepted clips fill shards of exactly
`shard_size` samples (the last may be smaller; equal sizes keep one data shard per cache shard).
A shard is written to a temporary name and renamed when complete; `pack-state.jsonl` records each
finished shard's sha256 and the inputs it consumed, so a rerun verifies the finished shards by
checksum and continues after the last good one.

Across nodes (`nodes.py`) the transcoding is shared out and this module's shard writing reads the
nodes' transcoded clips instead of transcoding them: the same writer in the same order, so the
same shards.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

from tqdm import tqdm

from .inputs import ClipInput
from ..stored.shards import (FORMAT, PACK_SEED, SPLITS, ShardWriter, class_order, sha256_file, with_offsets, write_manifest,
                     written_order)
from .transcode import PackOptions, Rejected, sample_json, transcode

STATE = "pack-state.jsonl"
WHOLE_STATE = "pack-state.json"  # the state as one JSON document, as packs wrote it before: converted on resume


def _work(job: tuple[int, ClipInput, PackOptions]) -> tuple[int, object]:
    index, clip, opts = job
    try:
        return index, transcode(clip.path, opts, clip.flow)
    except Rejected as why:
        return index, str(why)
    except Exception as err:  # a decoder crash on one file must not end the run
        return index, f"unexpected error: {type(err).__name__}: {err}"


def pack_fingerprint(clips: list[ClipInput], opts: PackOptions, shard_size: int, seed: int) -> str:
    """What a pack's output depends on: a changed input, option, shard size or seed starts afresh."""
    text = json.dumps([[asdict(c) for c in clips], opts.to_dict(), shard_size, seed], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def load_state(out: Path, fingerprint: str) -> dict:
    """Finished shards that still verify; anything after the first bad one is redone.

    The state is a JSON-lines file: the fingerprint, then one line per finished shard appended as it
    closes (rewriting the whole state per shard would cost the square of the shard count); a line
    cut short by a kill is dropped."""
    path = out / STATE
    if not path.is_file() and (out / WHOLE_STATE).is_file():
        _rewrite_state(out, json.loads((out / WHOLE_STATE).read_text()))
        (out / WHOLE_STATE).unlink()
    lines = path.read_text().splitlines() if path.is_file() else []
    if not lines or _parse(lines[0]).get("fingerprint") != fingerprint:
        state = {"fingerprint": fingerprint, "splits": {}}
        _rewrite_state(out, state)
        return state
    state, records = {"fingerprint": fingerprint, "splits": {}}, [_parse(line) for line in lines[1:]]
    for record in records:
        if record:
            state["splits"].setdefault(record.pop("split"), []).append(record)
    kept = sum(map(len, state["splits"].values()))
    for split, shards in state["splits"].items():
        for n, shard in enumerate(shards):
            if shard["name"] is None:  # rejects after the split's last shard
                continue
            file = out / shard["name"]
            if not file.is_file() or sha256_file(file) != shard["sha256"]:
                del shards[n:]
                break
    if sum(map(len, state["splits"].values())) != kept or kept != len(records):
        _rewrite_state(out, state)
    return state


def _parse(line: str) -> dict:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return {}


def state_fingerprint(out: Path) -> str | None:
    """The fingerprint of the pack whose state is in `out`, if any."""
    path = out / STATE
    if not path.is_file():
        return None
    with open(path) as handle:
        return _parse(handle.readline()).get("fingerprint")


def _rewrite_state(out: Path, state: dict) -> None:
    tmp = out / (STATE + ".tmp")
    lines = [json.dumps({"fingerprint": state["fingerprint"]})]
    lines += [json.dumps({"split": split, **shard}, sort_keys=True) for split, shards in state["splits"].items()
              for shard in shards]
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out / STATE)


def record_shard(out: Path, state: dict, split: str, shard: dict) -> None:
    """Add a finished shard to the state, in memory and on disk (one appended line)."""
    state["splits"].setdefault(split, []).append(shard)
    with open(out / STATE, "a") as handle:
        handle.write(json.dumps({"split": split, **shard}, sort_keys=True) + "\n")


def transcoding_pool(workers: int):
    """One pool of transcoding processes for the whole pack (None: transcode in this process)."""
    return multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None


def transcoded(pool, clips: list[ClipInput], indices: list[int], opts: PackOptions) -> Iterator[tuple[int, object]]:
    """(input index, transcoded clip or reject reason), in input order."""
    jobs = [(i, clips[i], opts) for i in indices]
    return pool.imap(_work, jobs) if pool is not None else map(_work, jobs)


def split_orders(clips: list[ClipInput], seed: int) -> dict[str, list[int]]:
    """Each split's input indices in the order its clips are written."""
    by_split = {}
    for split in SPLITS:
        indices = [i for i, c in enumerate(clips) if c.split == split]
        by_split[split] = [indices[j] for j in written_order(len(indices), seed)]
    return by_split


# A source of transcoded clips: (split, that split's written order, first position) →
# (input index, transcoded clip or reject reason) from that position on.
Results = Callable[[str, list[int], int], Iterator[tuple[int, object]]]


def pack(clips: list[ClipInput], out: str | Path, opts: PackOptions, shard_size: int = 256,
         workers: int = 1, source: dict | None = None, progress: bool = True, seed: int = PACK_SEED,
         results: Results | None = None) -> dict:
    """Pack `clips` into `out`, each split in a `seed`ed random order; returns the manifest.

    `results`: where transcoded clips come from (default: transcode them here, in `workers` processes)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = load_state(out, pack_fingerprint(clips, opts, shard_size, seed))
    classes = class_order(c.label for c in clips)
    label_of = {name: i for i, name in enumerate(classes)}
    done_inputs = sum(shards[-1]["consumed"] if shards else 0 for shards in state["splits"].values())
    bar = tqdm(total=len(clips), initial=done_inputs, unit="clip", desc="pack", disable=not progress)
    pool = transcoding_pool(workers) if results is None else None
    try:
        for split, indices in split_orders(clips, seed).items():
            _pack_split(results or (lambda _, order, start: transcoded(pool, clips, order[start:], opts)),
                        clips, split, indices, state, out, shard_size, label_of, bar)
    finally:
        if pool is not None:
            pool.terminate()
    bar.close()
    return _write_manifest(out, state, classes, opts, shard_size, {**(source or {}), "seed": seed})


def _pack_split(results: Results, clips: list[ClipInput], split: str, indices: list[int], state: dict, out: Path,
                shard_size: int, label_of: dict[str, int], bar) -> None:
    """Write one split's remaining inputs as shards, recording each finished shard in the state."""
    shards = state["splits"].setdefault(split, [])
    start = shards[-1]["consumed"] if shards else 0
    row = sum(s["count"] for s in shards)
    writer, rejected = None, []
    for position, (index, result) in enumerate(results(split, indices, start), start=start):
        bar.update()
        clip = clips[index]
        if isinstance(result, str):
            rejected.append({"source": clip.source, "path": clip.path, "split": split, "reason": result})
        else:
            members, meta, flags = result
            if writer is None:
                writer, flag_counts, seconds = ShardWriter(out / f"{split}-{len(shards):06d}.tar"), Counter(), 0.0
            flag_counts.update(flags)
            seconds += meta["duration"]
            key = f"{split}_{row:07d}"
            writer.write(key, {**members, "json": sample_json(
                meta, key=key, row=row, split=split, label=label_of[clip.label], **{"class": clip.label},
                source=clip.source, flags=flags)})
            row += 1
        last = position == len(indices) - 1
        if writer is not None and (writer.count == shard_size or last):
            record_shard(out, state, split, {**writer.close(), "consumed": position + 1, "rejected": rejected,
                                        "flags": dict(flag_counts), "seconds": round(seconds, 3)})
            writer, rejected = None, []
    if rejected:  # rejects after the last shard: keep them in the state too
        record_shard(out, state, split, {"name": None, "consumed": len(indices), "rejected": rejected, "flags": {}})


def _write_manifest(out: Path, state: dict, classes: list[str], opts: PackOptions, shard_size: int,
                    source: dict) -> dict:
    splits, rejected, flags = {}, [], Counter()
    for split in SPLITS:
        entries = state["splits"].get(split, [])
        rejected += [r for e in entries for r in e["rejected"]]
        for e in entries:
            flags.update(e["flags"])
        shards = [{k: e[k] for k in ("name", "count", "bytes", "sha256")} for e in entries if e["name"]]
        if shards:
            splits[split] = {"num_samples": sum(s["count"] for s in shards), "shards": with_offsets(shards),
                             "video_hours": round(sum(e.get("seconds", 0) for e in entries) / 3600, 4)}
    manifest = {"format": FORMAT, "classes": classes,
                "modalities": {"video": {"codec": "h264", "fps": opts.fps, "gop": opts.gop,
                                         "short_side": opts.short_side},
                               "audio": {"codec": "flac", "sample_rate": opts.sample_rate},
                               **({"flow": {"kind": "video", "codec": "h264", "fps": opts.fps, "gop": opts.gop}}
                                  if opts.flow else {})},
                "splits": splits, "source": {"generator": "umt-data pack", **source,
                                             "options": opts.to_dict(), "shard_size": shard_size},
                "flags": dict(sorted(flags.items())), "rejected": rejected}
    write_manifest(out, manifest)
    return manifest
