"""Ways a packed shard gets damaged in place (bit rot, partial copies, truncation), for tests."""
from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np


def members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        return [(info, tar.extractfile(info).read()) for info in tar]


def rewrite(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def zero_inside(path: Path, member: str, length: int = 4096) -> None:
    """Zero a range in the middle of one member's bytes, in place (as bit rot leaves it)."""
    with tarfile.open(path) as tar:
        info = tar.getmember(member)
    start = info.offset_data + info.size // 4
    with open(path, "r+b") as handle:
        handle.seek(start)
        handle.write(bytes(min(length, info.size // 2)))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 2 // 3])


def drop(path: Path, member: str) -> None:
    rewrite(path, [(i, d) for i, d in members(path) if i.name != member])


def garbage(path: Path, member: str) -> None:
    rng = np.random.default_rng(0)
    rewrite(path, [(i, rng.integers(0, 256, len(d), dtype=np.uint8).tobytes() if i.name == member else d)
                    for i, d in members(path)])


def copy_set(data: Path, tmp_path: Path) -> Path:
    out = tmp_path / "set"
    shutil.copytree(data, out)
    return out


def spoil_image(beton: Path, row: int, view: str) -> None:
    """Zero the header of one stored image of an ffcv image set, in place (ffcv's decoder would not notice)."""
    from ffcv.reader import Reader

    reader = Reader(str(beton))
    ptr = int(reader.metadata[f"f{reader.field_names.index(view)}"]["data_ptr"][row])
    with open(beton, "r+b") as handle:
        handle.seek(ptr)
        handle.write(bytes(64))
