"""Annotation files → the list of clips to pack: (source file, label, split).

Formats:
  generic   `path,label[,split]` with a header row; paths relative to --root or absolute
  kinetics  `label,youtube_id,time_start,time_end,split` with a header row; files named
            `<youtube_id>_<start:06d>_<end:06d>.<ext>` anywhere under --root
  vggsound  `youtube_id,start_seconds,label,split` without a header; files named
            `<youtube_id>_<start:06d>.<ext>` (or `_<start>` / `_<start:06d>_<end:06d>`) under --root
  cremad    `clip[,EMOTION]` without a header, one file per split, as the split files of
            GeWu-Lab/OGM-GE_CVPR2022 and fanyunfeng-bit/Modal-Imbalance-PMR (data/CREMAD/train.csv,
            test.csv); the label is the emotion code in the clip's name (`1001_DFA_ANG_XX`: ANG, DIS,
            FEA, HAP, NEU or SAD), and a second column that disagrees with it is an error; files
            `<clip>.<ext>` under --root
  ave       `Category&VideoID&Quality&StartTime&EndTime`, AVE's official Annotations.txt /
            trainSet.txt / valSet.txt / testSet.txt (YapengTian/AVE-ECCV18; a header row is skipped);
            the whole 10 s video is packed (the event's start and end are not used, as in the peers'
            loaders) and a video listed twice in one file is packed once; files `<VideoID>.<ext>`
A file of rows without a split column is given one as `SPLIT=FILE` (`read_annotation_files`).
A clip whose file cannot be found is kept, with path None, so the packer reports it as rejected.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..stored.shards import SPLIT_ALIASES, split_name

FORMATS = ("generic", "kinetics", "vggsound", "cremad", "ave")
HEADER = {"generic": True, "kinetics": True, "vggsound": False, "cremad": False, "ave": False}
CREMAD_EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")  # CREMA-D's six emotion codes


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
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:  # -sig: CREMA-D split files start with a BOM
        rows = list(csv.reader(handle, delimiter="&" if fmt == "ave" else ","))
    numbered = [(n, r) for n, r in enumerate(rows, start=1) if r and any(c.strip() for c in r)]
    if HEADER[fmt] or (fmt == "ave" and numbered and numbered[0][1][0].strip() == "Category"):
        numbered = numbered[1:]
    files = _index_files(root) if fmt != "generic" else {}
    if flow_root is not None and not Path(flow_root).is_dir():
        raise UserError(f"flow root {flow_root} is not a directory")
    flows = _index_files(Path(flow_root)) if flow_root is not None else {}
    clips, seen = [], set()
    for n, row in numbered:
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
            elif fmt == "vggsound":
                yid, start, label, split = row[0], int(float(row[1])), row[2], split_name(row[3], where)
                source = f"{yid}_{start:06d}"
                found = next((files[s] for s in (source, f"{yid}_{start}", f"{yid}_{start:06d}_{start + 10:06d}")
                              if s in files), None)
            elif fmt == "cremad":
                source, split = row[0].strip(), default_split
                label = _cremad_label(source, row[1].strip() if len(row) > 1 else None, where)
                found = files.get(source)
            else:
                label, source, split = row[0], row[1].strip(), default_split
                if len(row) != 5:
                    raise ValueError(f"{len(row)} fields, expected 5")
                if source in seen:
                    continue
                seen.add(source)
                found = files.get(source)
        except (IndexError, ValueError) as err:
            raise UserError(f"{where}: malformed {fmt} row {row!r} ({err})") from err
        flow = flows.get(Path(found or source).stem) if flow_root is not None else None
        clips.append(ClipInput(source, found, label.strip(), split, flow))
    if not clips:
        raise UserError(f"{csv_path} lists no clips")
    return clips


def _cremad_label(clip: str, given: str | None, where: str) -> str:
    """The emotion code of a CREMA-D clip name (`ActorID_Sentence_Emotion_Level`)."""
    parts = clip.split("_")
    if len(parts) != 4 or parts[2] not in CREMAD_EMOTIONS:
        raise UserError(f"{where}: {clip!r} is not a CREMA-D clip name (ActorID_Sentence_EMOTION_Level, "
                        f"EMOTION one of {', '.join(CREMAD_EMOTIONS)})")
    if given and given != parts[2]:
        raise UserError(f"{where}: label {given!r} disagrees with the emotion code {parts[2]!r} in the name {clip!r}")
    return parts[2]


def read_classes(path: str | Path) -> list[str]:
    """A class list: one name per line; blank lines and lines starting with # are skipped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"class list {path} does not exist")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = list(dict.fromkeys(n for n in names if n and not n.startswith("#")))
    if not names:
        raise UserError(f"class list {path} names no class")
    return names


def read_annotation_files(specs: list[str], fmt: str, root: str | Path, default_split: str = "train",
                          flow_root: str | Path | None = None, classes: str | Path | None = None) -> list[ClipInput]:
    """The clips of several annotation files, each given as FILE or SPLIT=FILE (SPLIT: the split of its rows
    that carry none); with `classes`, a class-list file, only the clips of those classes (each must occur)."""
    clips = []
    for spec in specs:
        head, sep, tail = spec.partition("=")
        split = SPLIT_ALIASES.get(head.strip().lower()) if sep else None
        clips += read_annotations(tail if split else spec, fmt, root, split or default_split, flow_root)
    if classes is None:
        return clips
    wanted = read_classes(classes)
    missing = sorted(set(wanted) - {c.label for c in clips})
    if missing:
        raise UserError(f"class list {classes}: {len(missing)} classes occur in no annotation row: "
                        + ", ".join(repr(m) for m in missing))
    wanted = set(wanted)
    return [c for c in clips if c.label in wanted]
