"""Annotation files → the list of clips to pack: (source file, label, split).

Formats:
  generic   `path,label[,split]` with a header row; paths relative to --root or absolute
  kinetics  `label,youtube_id,time_start,time_end,split` with a header row; files named
            `<youtube_id>_<start:06d>_<end:06d>.<ext>` anywhere under --root
  vggsound  `youtube_id,start_seconds,label,split` without a header; files named
            `<youtube_id>_<start:06d>.<ext>` (or `_<start>` / `_<start:06d>_<end:06d>`) under --root
A clip whose file cannot be found is kept, with path None, so the packer reports it as rejected.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..stored.shards import split_name

FORMATS = ("generic", "kinetics", "vggsound")


@dataclass(frozen=True)
class ClipInput:
    source: str          # as named in the annotation file
    path: str | None     # the file found on disk, or None
    label: str
    split: str
    flow: str | None = None  # the clip's optical-flow video, when packing with --flow-root


def _index_files(root: Path) -> dict[str, str]:
    """File stem → path for every file under root (Kinetics/VGG-Sound trees nest by split and class)."""
    return {p.stem: str(p) for p in sorted(root.rglob("*")) if p.is_file()}


def read_annotations(csv_path: str | Path, fmt: str, root: str | Path, default_split: str = "train",
                     flow_root: str | Path | None = None) -> list[ClipInput]:
    """The clips an annotation file lists; with `flow_root`, each clip's flow video is the file
    under it with the clip file's stem (None when there is none: the packer rejects the clip)."""
    csv_path, root = Path(csv_path), Path(root)
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if not csv_path.is_file():
        raise UserError(f"annotation file {csv_path} does not exist")
    if not root.is_dir():
        raise UserError(f"video root {root} is not a directory")
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.reader(handle) if r and any(c.strip() for c in r)]
    if fmt != "vggsound":
        rows = rows[1:]  # header
    files = _index_files(root) if fmt != "generic" else {}
    if flow_root is not None and not Path(flow_root).is_dir():
        raise UserError(f"flow root {flow_root} is not a directory")
    flows = _index_files(Path(flow_root)) if flow_root is not None else {}
    clips = []
    for n, row in enumerate(rows, start=2 if fmt != "vggsound" else 1):
        where = f"{csv_path}:{n}"
        try:
            if fmt == "generic":
                source, label = row[0], row[1]
                split = split_name(row[2], where) if len(row) > 2 and row[2].strip() else default_split
                path = Path(source) if Path(source).is_absolute() else root / source
                found = str(path) if path.is_file() else None
            elif fmt == "kinetics":
                label, yid, start, end, split = row[0], row[1], int(float(row[2])), int(float(row[3])), split_name(row[4], where)
                source = f"{yid}_{start:06d}_{end:06d}"
                found = files.get(source)
            else:
                yid, start, label, split = row[0], int(float(row[1])), row[2], split_name(row[3], where)
                source = f"{yid}_{start:06d}"
                found = next((files[s] for s in (source, f"{yid}_{start}", f"{yid}_{start:06d}_{start + 10:06d}")
                              if s in files), None)
        except (IndexError, ValueError) as err:
            raise UserError(f"{where}: malformed {fmt} row {row!r} ({err})") from err
        flow = flows.get(Path(found or source).stem) if flow_root is not None else None
        clips.append(ClipInput(source, found, label.strip(), split, flow))
    if not clips:
        raise UserError(f"{csv_path} lists no clips")
    return clips
