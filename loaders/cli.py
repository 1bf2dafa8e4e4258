"""`umt-data`: make and inspect shard sets."""
from __future__ import annotations

import argparse
import os
from collections import Counter
from dataclasses import fields
from pathlib import Path

from .errors import run_cli
from .inputs import FORMATS, read_annotations
from .pack import pack
from .shards import is_remote, load_manifest
from .synth import SynthConfig, write_synth
from .transcode import PackOptions


def _synth_parser(sub) -> None:
    p = sub.add_parser("synth", help="write the procedural audio-visual dataset as shards",
                       description="Procedural audio-visual clips (H.264 video, FLAC audio) whose label is "
                                   "carried by a video cue, an audio cue and, on a share of samples, a paired "
                                   "cue readable only from both modalities together (label = sum of the two "
                                   "symbols mod K). The same seed gives byte-identical shards.")
    p.add_argument("out", help="output directory for the shards and manifest.json")
    helps = {"video_cue": "probability that the video symbol equals the label (non-paired samples)",
             "audio_cue": "probability that the audio symbol equals the label (non-paired samples)",
             "paired": "share of samples labelled by the paired cue (video + audio symbol mod K)",
             "video_noise": "pixel noise, as a share of full scale", "audio_noise": "noise-to-tone amplitude ratio",
             "size": "frame height and width (even)", "frames": "frames per clip",
             "shard_size": "samples per shard", "train": "training clips", "val": "validation clips",
             "test": "test clips"}
    for f in fields(SynthConfig):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                       help=f"{helps.get(f.name, f.name.replace('_', ' '))} (default {f.default})")


def _pack_parser(sub) -> None:
    d = PackOptions()
    p = sub.add_parser("pack", help="videos + annotation CSV → shards (resumable, parallel)",
                       description="Transcode videos to H.264 (fixed fps, short side, short GOP) and mono FLAC "
                                   "into WebDataset shards. Broken inputs are packed with a flag or rejected with "
                                   "a reason in the manifest; an interrupted pack resumes where it stopped.")
    p.add_argument("--annotations", required=True, help="CSV file (see --format)")
    p.add_argument("--format", choices=FORMATS, default="generic",
                   help="generic: path,label[,split] (header); kinetics: label,youtube_id,time_start,time_end,split "
                        "(header); vggsound: youtube_id,start_seconds,label,split (no header)")
    p.add_argument("--root", required=True, help="directory holding the video files")
    p.add_argument("--out", required=True, help="output shard directory")
    p.add_argument("--split", default="train", help="split for generic rows without one (default train)")
    p.add_argument("--short-side", type=int, default=d.short_side, help=f"default {d.short_side}")
    p.add_argument("--fps", type=int, default=d.fps, help=f"output frame rate (default {d.fps})")
    p.add_argument("--gop", type=int, default=d.gop, help=f"keyframe interval in frames (default {d.gop})")
    p.add_argument("--crf", type=int, default=d.crf, help=f"x264 quality (default {d.crf})")
    p.add_argument("--sample-rate", type=int, default=d.sample_rate)
    p.add_argument("--max-seconds", type=float, help="keep at most this much of each clip")
    p.add_argument("--shard-size", type=int, default=256, help="clips per shard (default 256; ~0.5-1 GB at "
                   "256 px for 10 s clips)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="transcoding processes")


def _pack(args) -> None:
    clips = read_annotations(args.annotations, args.format, args.root, args.split)
    opts = PackOptions(args.short_side, args.fps, args.gop, args.crf, args.sample_rate, args.max_seconds)
    pack(clips, args.out, opts, args.shard_size, args.workers,
                    {"annotations": str(args.annotations), "format": args.format})
    print(f"umt-data: packed into {args.out}")
    _info(args.out)


def _info(data: str) -> None:
    manifest = load_manifest(data)
    print(f"shard set   {data if is_remote(data) else Path(data).resolve()}")
    print(f"classes     {len(manifest['classes'])}: {', '.join(manifest['classes'][:6])}"
          f"{'…' if len(manifest['classes']) > 6 else ''}")
    for split, info in manifest["splits"].items():
        size = sum(s["bytes"] for s in info["shards"])
        print(f"{split:<11} {info['num_samples']} samples in {len(info['shards'])} shards, {size / 2**20:.1f} MiB, "
              f"{info.get('video_hours', 0):.2f} h of video")
    print(f"source      {manifest['source'].get('generator', manifest['source'])}")
    flags = manifest.get("flags", {})
    print(f"flags       " + (", ".join(f"{n} {f}" for f, n in flags.items()) or "none"))
    reasons = Counter(r["reason"] for r in manifest.get("rejected", []))
    print(f"rejected    {sum(reasons.values())}" + "".join(f"\n  {n} x {r}" for r, n in reasons.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="umt-data", description="Make and inspect umt shard sets "
                                     "(WebDataset tars of H.264 video, FLAC audio and JSON labels).")
    sub = parser.add_subparsers(dest="command", required=True)
    _synth_parser(sub)
    _pack_parser(sub)
    info = sub.add_parser("info", help="summarise a shard set")
    info.add_argument("data", help="shard directory (holds manifest.json)")
    args = parser.parse_args(argv)

    def body() -> None:
        if args.command == "synth":
            cfg = SynthConfig(**{f.name: getattr(args, f.name) for f in fields(SynthConfig)})
            print(f"umt-data: wrote {write_synth(args.out, cfg)}")
        elif args.command == "pack":
            _pack(args)
        else:
            _info(args.data)

    run_cli("umt-data", body)


if __name__ == "__main__":
    main()
