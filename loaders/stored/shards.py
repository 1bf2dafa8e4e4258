"""WebDataset tar shards and the manifest that indexes them.

Layout of a shard set (docs/design.md, Data flow):

    DIR/manifest.json          classes, modalities, per split: shards with count, row offset, sha256
    DIR/<split>-000000.tar     members <key>.mp4, <key>.flac, <key>.json, in row order

A sample's row is its index in its split, in manifest order: shard `s` holds rows
[offset_s, offset_s + count_s). Tar members carry fixed metadata (mtime 0, no owner) so equal
content gives byte-identical shards.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
from webdataset.gopen import gopen_schemes

from ..errors import UserError

MANIFEST = "manifest.json"
FORMAT = "umt-shards/1"
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "validate": "val", "validation": "val",
                 "test": "test", "testing": "test"}
IMAGE_SET = "beton"   # manifest["container"] of an ffcv image set: one .beton per split, its only shard
PACK_SEED = 0         # packers' default seed for the order in which they write each split
MEDIA_MEMBERS = {"video": "mp4", "audio": "flac", "flow": "flow.mp4"}  # tar member of each media modality


def member(modality: str) -> str:
    """A modality's tar member extension: its media member, else `<name>.npy` (a vector view)."""
    return MEDIA_MEMBERS.get(modality, f"{modality}.npy")


class DataError(UserError):
    """A shard set is missing, incomplete or malformed."""


class ShardWriter:
    """Writes samples into one tar file with reproducible member headers.

    The tar is written under `<name>.tmp` and renamed on close, so a shard file that exists is whole.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self.count = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        for ext in sorted(members):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(members[ext])
            info.mtime, info.mode, info.uname, info.gname = 0, 0o644, "", ""
            self._tar.addfile(info, io.BytesIO(members[ext]))
        self.count += 1

    def close(self) -> dict[str, Any]:
        """Close the tar and return its manifest entry (without the row offset)."""
        self._tar.close()
        os.replace(self._tmp, self.path)
        return {"name": self.path.name, "count": self.count, "bytes": self.path.stat().st_size,
                "sha256": sha256_file(self.path)}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def with_offsets(shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each shard entry the first row it holds."""
    offset = 0
    for shard in shards:
        shard["offset"] = offset
        offset += shard["count"]
    return shards


def write_manifest(data_dir: Path, manifest: dict[str, Any]) -> Path:
    path = Path(data_dir) / MANIFEST
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return path


def is_remote(data_dir: str | Path) -> bool:
    return str(data_dir).startswith("pipe:") or "://" in str(data_dir)


def locate(data_dir: str | Path, name: str) -> str:
    """Where a member of a shard set lives, in the form webdataset opens.

    A local directory; a URL (`s3://bucket/k400`, `gs://...`, `https://...`, `file://...`), whose
    members are `URL/name`; or a command template `pipe:CMD` in which `{}` stands for the member's
    name (`pipe:aws s3 cp s3://bucket/k400/{} -`), so nodes stream shards without copying them.
    """
    text = str(data_dir)
    if text.startswith("pipe:"):
        if "{}" not in text:
            raise DataError(f"{text!r}: a pipe: data location needs {{}} where the file name goes")
        return text.replace("{}", name)
    if "://" in text:
        return text.rstrip("/") + "/" + name
    return str(Path(text) / name)


def read_member(data_dir: str | Path, name: str) -> bytes:
    """The bytes of one small member (the manifest) from any location `locate` understands."""
    url = locate(data_dir, name)
    try:
        if url.startswith("pipe:"):
            return subprocess.run(url[5:], shell=True, check=True, capture_output=True).stdout
        if "://" in url:
            with fsspec.open(url, "rb") as handle:
                return handle.read()
        return Path(url).read_bytes()
    except (OSError, subprocess.CalledProcessError) as err:
        raise DataError(f"cannot read {url}: {err}") from err


def load_manifest(data_dir: str | Path) -> dict[str, Any]:
    """Read the shard set's manifest.json, failing with a message that names the place and the problem."""
    if not is_remote(data_dir):
        if not Path(data_dir).is_dir():
            raise DataError(f"data directory {data_dir} does not exist (create one with `umt-data synth`)")
        if not (Path(data_dir) / MANIFEST).is_file():
            raise DataError(f"{Path(data_dir) / MANIFEST} is missing: {data_dir} is not a umt shard set")
    where = locate(data_dir, MANIFEST)
    try:
        manifest = json.loads(read_member(data_dir, MANIFEST))
    except json.JSONDecodeError as err:
        raise DataError(f"{where} is not valid JSON: {err}") from err
    if manifest.get("format") != FORMAT:
        raise DataError(f"{where}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def manifest_fingerprint(data_dir: str | Path) -> str:
    """Data fingerprint: the hash of the manifest, which holds every shard's sha256."""
    return "sha256:" + hashlib.sha256(read_member(data_dir, MANIFEST)).hexdigest()


def _fsspec_gopen(url: str, mode: str = "rb", bufsize: int = 8192, **_) -> Any:
    return fsspec.open(url, mode).open()


for _scheme in ("s3", "gcs", "az", "abfs", "file"):  # schemes webdataset's gopen leaves to us
    gopen_schemes.setdefault(_scheme, _fsspec_gopen)


def split_name(value: str, where: str) -> str:
    """train, val or test for a split name or alias (`validation`, `Training`, ...), or a UserError at `where`."""
    split = SPLIT_ALIASES.get(value.strip().lower())
    if split is None:
        raise UserError(f"{where}: unknown split {value!r} (expected train, val or test)")
    return split


def class_order(labels) -> list[str]:
    """The classes of these labels in label order: numeric when every label is an integer, else
    alphabetical. Label k of a shard set is the k-th of them."""
    names = {str(label) for label in labels}
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def written_order(count: int, seed: int) -> list[int]:
    """The order in which a packer writes a split's `count` accepted inputs: a seeded permutation, so
    that shards of a class-sorted annotation file mix classes and the output stays reproducible."""
    return np.random.default_rng([seed, 0x9ACC]).permutation(count).tolist()


def is_image_set(manifest: dict[str, Any]) -> bool:
    """An ffcv image set (`umt-data pack-images`) rather than a set of WebDataset tar shards."""
    return manifest.get("container") == IMAGE_SET


def split_files(data_dir: str | Path, split: str) -> tuple[list[str], list[int]]:
    """Each shard of a split: where it is (as webdataset opens it) and how many samples it holds."""
    shards = split_shards(load_manifest(data_dir), split)
    return [locate(data_dir, s["name"]) for s in shards], [s["count"] for s in shards]


def split_shards(manifest: dict[str, Any], split: str) -> list[dict[str, Any]]:
    splits = manifest["splits"]
    if split not in splits:
        raise DataError(f"split {split!r} not in the manifest (has {sorted(splits)})")
    return splits[split]["shards"]


def modality_inputs(manifest: dict[str, Any], modalities: list[str] | tuple[str, ...], where: str) -> dict[str, dict]:
    """What each requested modality is (kind: video, audio, image or vector; dim for vectors).

    Manifests of video shard sets name their modalities `video` and `audio`, which are also their
    kinds; other shard sets give each modality an explicit `kind`.
    """
    known = manifest.get("modalities", {})
    missing = [m for m in modalities if m not in known]
    if missing:
        raise DataError(f"{where} has modalities {sorted(known)}, not {missing} (choose with --modalities)")
    return {m: {k: v for k, v in (("kind", known[m].get("kind", m)), ("dim", known[m].get("dim"))) if v is not None}
            for m in modalities}
