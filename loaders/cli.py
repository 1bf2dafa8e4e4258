"""`umt-data`: make and inspect shard sets."""
from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import fields
from pathlib import Path

from .errors import run_cli
from .shards import load_manifest
from .synth import SynthConfig, write_synth


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


def _info(data: str) -> None:
    manifest = load_manifest(data)
    print(f"shard set   {Path(data).resolve()}")
    print(f"classes     {len(manifest['classes'])}: {', '.join(manifest['classes'][:6])}"
          f"{'…' if len(manifest['classes']) > 6 else ''}")
    for split, info in manifest["splits"].items():
        size = sum(s["bytes"] for s in info["shards"])
        print(f"{split:<11} {info['num_samples']} samples in {len(info['shards'])} shards, {size / 2**20:.1f} MiB")
    print(f"source      {manifest['source'].get('generator', manifest['source'])}")
    reasons = Counter(r["reason"] for r in manifest.get("rejected", []))
    print(f"rejected    {sum(reasons.values())}" + "".join(f"\n  {n} x {r}" for r, n in reasons.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="umt-data", description="Make and inspect umt shard sets "
                                     "(WebDataset tars of H.264 video, FLAC audio and JSON labels).")
    sub = parser.add_subparsers(dest="command", required=True)
    _synth_parser(sub)
    info = sub.add_parser("info", help="summarise a shard set")
    info.add_argument("data", help="shard directory (holds manifest.json)")
    args = parser.parse_args(argv)

    def body() -> None:
        if args.command == "synth":
            cfg = SynthConfig(**{f.name: getattr(args, f.name) for f in fields(SynthConfig)})
            print(f"umt-data: wrote {write_synth(args.out, cfg)}")
        else:
            _info(args.data)

    run_cli("umt-data", body)


if __name__ == "__main__":
    main()
