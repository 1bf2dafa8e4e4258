"""Is a packed shard set still what its manifest says? (`umt-data verify`, and `umt-cache build`'s pre-check)

Packing rejects bad inputs, but once packed a shard can still be damaged: a partial copy, bit rot on a
cluster file system, a truncated download. One streaming pass over each shard checks, and names, every
problem: the sha256 against the manifest, that the tar reads to its end, that each sample holds the
members its modalities need with the row the manifest implies, and (with `decode`) that every member
decodes to the length its JSON promises. Reading a shard is cheap next to decoding it, so the cache
builder checks sha256 before it computes anything.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

import numpy as np
from webdataset.gopen import gopen

from .media import MediaError, decode_flac, decode_h264
from .shards import is_image_set, load_manifest, locate, member, split_shards

JSON = "json"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a shard set: where (shard, sample key or None) and what."""

    shard: str
    key: str | None
    reason: str

    def __str__(self) -> str:
        return f"{self.shard}" + (f" sample {self.key}" if self.key else "") + f": {self.reason}"




class _Hashing(io.RawIOBase):
    """A read-only stream that hashes every byte read through it (one pass: sha256 and tar parse)."""

    def __init__(self, stream: BinaryIO):
        self.stream, self.digest, self.size = stream, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read(len(buffer))
        buffer[:len(data)] = data
        self.digest.update(data)
        self.size += len(data)
        return len(data)


def _drain(hashing: _Hashing) -> None:
    """Read (and hash) whatever the tar reader left: its end-of-archive padding, or the rest after an error."""
    for block in iter(lambda: hashing.stream.read(1 << 20), b""):
        hashing.digest.update(block)
        hashing.size += len(block)


def check_shard(url: str, entry: dict, members: dict[str, str], decode: bool = False,
                checksum_only: bool = False) -> list[Problem]:
    """Every problem of one shard (its manifest `entry`: name, count, offset, sha256, bytes)."""
    name = entry["name"]
    try:
        stream = gopen(url, "rb")
    except Exception as err:  # gopen raises OSError, ValueError or a subprocess error by scheme
        return [Problem(name, None, f"cannot open {url}: {err}")]
    hashing = _Hashing(stream)
    problems: list[Problem] = []
    seen = [0]  # samples read whole, for the message when the tar breaks off
    try:
        if checksum_only:
            _drain(hashing)
        else:
            problems += _check_samples(hashing, entry, members, decode, seen)
            _drain(hashing)
    except (tarfile.TarError, OSError, EOFError) as err:
        problems.append(Problem(name, None, f"the tar breaks off after {seen[0]} of {entry['count']} samples "
                                f"({hashing.size} bytes): {err}"))
        try:
            _drain(hashing)
        except OSError:
            pass
    finally:
        stream.close()
    if hashing.digest.hexdigest() != entry["sha256"]:
        problems.insert(0, Problem(name, None, f"sha256 {hashing.digest.hexdigest()[:12]}… ≠ manifest's "
                                   f"{entry['sha256'][:12]}… ({hashing.size} bytes read, manifest says "
                                   f"{entry.get('bytes', '?')}): damaged or replaced since packing"))
    return problems


def _samples(stream: BinaryIO) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample, in tar order; a sample is a run of members with one key."""
    key, group = None, {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            stem, _, ext = info.name.partition(".")
            if stem != key and key is not None:
                yield key, group
                group = {}
            key = stem
            group[ext] = tar.extractfile(info).read()
    if key is not None:
        yield key, group


def _check_samples(stream: BinaryIO, entry: dict, members: dict[str, str], decode: bool,
                   seen: list[int]) -> list[Problem]:
    name, problems = entry["name"], []
    for key, group in _samples(stream):
        row = entry.get("offset", 0) + seen[0]
        seen[0] += 1
        problems += [Problem(name, key, reason) for reason in _sample_problems(group, members, row, decode)]
    if seen[0] != entry["count"]:
        problems.append(Problem(name, None, f"holds {seen[0]} samples, the manifest says {entry['count']}"))
    return problems


def _sample_problems(group: dict[str, bytes], members: dict[str, str], row: int, decode: bool) -> list[str]:
    missing = [ext for ext in (JSON, *members.values()) if ext not in group]
    if JSON in missing:
        return [f"no {JSON} member"]
    try:
        meta = json.loads(group[JSON])
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return [f"unreadable json member: {err}"]
    reasons = [f"no {ext} member" for ext in missing]
    if not isinstance(meta, dict) or meta.get("row") != row:
        reasons.append(f"json says row {meta.get('row') if isinstance(meta, dict) else meta!r}, "
                       f"its place in the manifest is row {row}")
    if decode:
        reasons += [f"{ext}: {reason}" for ext in members.values() if ext in group
                    for reason in _decode_problems(ext, group[ext], meta)]
    return reasons


def _decode_problems(ext: str, data: bytes, meta: dict) -> list[str]:
    """Decode a member whole; what is wrong with it (empty when it decodes as its JSON says)."""
    try:
        if ext.endswith("mp4"):
            decode_h264(data, 0, int(meta["frames"]))
        elif ext == "flac":
            got = len(decode_flac(data))
            if got != int(meta["audio_samples"]):
                return [f"decodes to {got} audio samples, the json says {meta['audio_samples']}"]
        elif ext.endswith(".npy"):
            array = np.load(io.BytesIO(data), allow_pickle=False)
            if array.ndim != 1 or not np.isfinite(array).all():
                return [f"not a finite vector (shape {array.shape})"]
    except MediaError as err:
        return [str(err)]
    except (KeyError, ValueError, OSError) as err:
        return [f"undecodable: {err}"]
    return []


def verify_shards(data_dir: str | Path, splits: Iterable[str] | None = None, decode: bool = False,
                  checksum_only: bool = False,
                  progress: Callable[[str], None] = lambda name: None) -> list[Problem]:
    """Every problem of the shard set's shards (all splits, or `splits`), in manifest order."""
    manifest = load_manifest(data_dir)
    if is_image_set(manifest):  # an ffcv image set: the file's checksum is all there is
        members, decode = {}, False
        checksum_only = True
    else:
        members = {name: member(name) for name in manifest.get("modalities", {})}
    problems = []
    for split in splits or manifest["splits"]:
        for entry in split_shards(manifest, split):
            progress(entry["name"])
            problems += check_shard(locate(data_dir, entry["name"]), entry, members, decode, checksum_only)
    return problems


def damaged_shards(data_dir: str | Path, entries: list[dict]) -> list[Problem]:
    """The shards among `entries` whose bytes are not the packed ones (sha256; one read each)."""
    return [p for e in entries for p in check_shard(locate(data_dir, e["name"]), e, {}, checksum_only=True)]


@functools.lru_cache(maxsize=None)
def damaged_samples(url: str, name: str, count: int, offset: int, sha256: str,
                    members: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """Key → reason of each sample of one shard that lacks one of `members` ((modality, extension)
    pairs) or does not decode whole; {} after one checksum read when the shard is the packed one. For
    decoders that cannot say which sample of a batch failed (DALI): once per process and shard."""
    entry = {"name": name, "count": count, "offset": offset, "sha256": sha256}
    if not check_shard(url, entry, {}, checksum_only=True):
        return {}
    return {p.key: p.reason for p in check_shard(url, entry, dict(members), decode=True) if p.key}
