"""`umt-data`: make and inspect shard sets."""
from __future__ import annotations

import argparse
import os
from collections import Counter
from dataclasses import fields
from pathlib import Path

from tqdm import tqdm

from .making.arrays import pack_arrays
from .errors import UserError, parse_assignments, run_cli
from .making.image_pack import add_pack_images_parser, pack_images_command
from .making.inputs import FORMATS, read_annotation_files
from .making.costs import CLIP_SECONDS, PACK_CORE_S_PER_SOURCE_S, Cluster, pack_plan, pack_worker_bytes
from .making.nodes import assemble, pack_share
from .making.pack import pack
from .stored.integrity import verify_shards
from .stored.shards import PACK_SEED, is_remote, load_manifest
from .making.realav import CLASSES, DEBIAN_PACKAGE, STAMPS, RealAVConfig, write_realav
from .making.synth import SynthConfig, write_synth
from .making.synth_vectors import VectorSynthConfig, write_raw
from .making.transcode import PackOptions


CUE_HELPS = {"video_cue": "probability that the video symbol equals the label (non-paired samples)",
             "audio_cue": "probability that the audio symbol equals the label (non-paired samples)",
             "paired": "share of samples labelled by the paired cue (video + audio symbol mod K)"}


def _synth_parser(sub) -> None:
    p = sub.add_parser("synth", help="write the procedural audio-visual dataset as shards",
                       description="Procedural audio-visual clips (H.264 video, FLAC audio) whose label is "
                                   "carried by a video cue, an audio cue and, on a share of samples, a paired "
                                   "cue readable only from both modalities together (label = sum of the two "
                                   "symbols mod K). The same seed gives byte-identical shards.")
    p.add_argument("out", help="output directory for the shards and manifest.json")
    helps = {**CUE_HELPS, "video_noise": "pixel noise, as a share of full scale", "audio_noise": "noise-to-tone amplitude ratio",
             "size": "frame height and width (even)", "frames": "frames per clip",
             "shard_size": "samples per shard", "train": "training clips", "val": "validation clips",
             "test": "test clips"}
    _config_arguments(p, SynthConfig, helps)


def _config_arguments(parser, config: type, helps: dict[str, str]) -> None:
    """One --option per field of a generator's config dataclass."""
    for f in fields(config):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                            help=f"{helps.get(f.name, f.name.replace('_', ' '))} (default {f.default})")


def _synth_arrays_parser(sub) -> None:
    p = sub.add_parser("synth-arrays", help="write the generator's feature-level model as .npy views + labels.csv",
                       description="The label model of `umt-data synth` (video and audio symbols; a share of samples "
                                   "labelled by their sum mod K) with each symbol rendered as a vector (a fixed random "
                                   "prototype, or a product code, plus Gaussian noise). Writes vfeat.npy, afeat.npy and "
                                   "labels.csv for `umt-data pack-arrays`.")
    p.add_argument("out", help="output directory")
    _config_arguments(p, VectorSynthConfig, {
        **CUE_HELPS, "dim": "coordinates per symbol vector", "video_noise": "noise std of the video symbol's vector",
        "audio_noise": "noise std of the audio symbol's vector",
        "video_encoding": "prototype (noise makes it unreliable) or product (symbol only in coordinate products: "
                          "slow to learn)", "audio_encoding": "as --video-encoding, for the audio symbol"})


def _realav_parser(sub) -> None:
    p = sub.add_parser("realav", help="write the real audio-visual benchmark's clips + CSV for `umt-data pack`",
                       description=f"Clips of {len(CLASSES)} classes ({', '.join(CLASSES)}) made from the real "
                                   f"photographs and recordings of Tux Paint's stamps (Debian {DEBIAN_PACKAGE}): "
                                   "a camera pan and zoom over a photo of the class, the class's recording at a "
                                   "random offset in a babble of real voices at a random SNR. Each photo, "
                                   "recording and voice belongs to one split. Writes clips/<split>/*.mkv, "
                                   "realav.csv (path,label,split: pack it with `umt-data pack --format generic`), "
                                   "sources.csv and provenance.csv; the same settings give the same bytes, and "
                                   "a rerun keeps the clips already written. Recipe: configs/realav.yaml.")
    p.add_argument("out", help="output directory")
    p.add_argument("--stamps", default=STAMPS, help=f"Tux Paint's stamps folder (default {STAMPS}, from "
                   f"`apt-get install {DEBIAN_PACKAGE}`)")
    _config_arguments(p, RealAVConfig, {
        "train": "training clips", "val": "validation clips", "test": "test clips",
        "size": "frame height and width (even)", "frames": "frames per clip", "fps": "frame rate (clip length "
        "= frames / fps)", "scale_min": "smallest share of the frame side the photo's long side fills at the "
        "first frame", "scale_max": "largest such share", "zoom": "the camera zooms by a factor in "
        "[1/zoom, zoom] over the clip", "pan": "largest offset of the photo's centre from the frame's, as a "
        "share of the side", "snr_min": "lowest recording-to-babble ratio, dB", "snr_max": "highest such "
        "ratio, dB", "talkers": "voices in the babble", "val_share": "share of each class's sources held "
        "out for val", "test_share": "share held out for test", "crf": "x264 quality of the written clips"})


def _pack_parser(sub) -> None:
    d = PackOptions()
    p = sub.add_parser("pack", help="videos + annotation CSV → shards (resumable, parallel)",
                       description="Transcode videos to H.264 (fixed fps, short side, short GOP) and mono FLAC "
                                   "into WebDataset shards. Broken inputs are packed with a flag or rejected with "
                                   "a reason in the manifest; an interrupted pack resumes where it stopped.")
    p.add_argument("--annotations", required=True, action="append", metavar="[SPLIT=]FILE",
                   help="annotation file (see --format); repeat for several; SPLIT= gives the split of its rows "
                        "that carry none (cremad and ave split files: train=train.csv test=test.csv)")
    p.add_argument("--format", choices=FORMATS, default="generic",
                   help="generic: path,label[,split] (header); kinetics: label,youtube_id,time_start,time_end,split "
                        "(header); vggsound: youtube_id,start_seconds,label,split (no header); cremad: clip[,EMOTION] "
                        "(no header; the label is the emotion code in the clip's name); ave: AVE's "
                        "Category&VideoID&Quality&StartTime&EndTime")
    p.add_argument("--classes", metavar="FILE", help="keep only clips of the classes listed in FILE, one per line "
                   "(# comments); each must occur (e.g. configs/kinetics-sounds-classes.txt)")
    p.add_argument("--root", required=True, help="directory holding the video files")
    p.add_argument("--out", required=True, help="output shard directory")
    p.add_argument("--flow-root", help="directory of optical-flow videos named like the clips (any extension; "
                   "x-flow in red, y-flow in green, as UCF101's TV-L1 flow is usually stored): packed as the "
                   "`flow` modality, cut with the same crop as the video; a clip without one is rejected")
    p.add_argument("--split", default="train",
                   help="split of rows that carry none, in files given without SPLIT= (default train)")
    p.add_argument("--short-side", type=int, default=d.short_side, help=f"default {d.short_side}")
    p.add_argument("--fps", type=int, default=d.fps, help=f"output frame rate (default {d.fps})")
    p.add_argument("--gop", type=int, default=d.gop, help=f"keyframe interval in frames (default {d.gop})")
    p.add_argument("--crf", type=int, default=d.crf, help=f"x264 quality (default {d.crf})")
    p.add_argument("--sample-rate", type=int, default=d.sample_rate)
    p.add_argument("--max-seconds", type=float, help="keep at most this much of each clip")
    p.add_argument("--shard-size", type=int, default=256, help="clips per shard (default 256; ~0.5-1 GB at "
                   "256 px for 10 s clips)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="transcoding processes")
    p.add_argument("--seed", type=int, default=PACK_SEED, help="seed of the order in which each split's clips are "
                   f"written (default {PACK_SEED}): shards of a class-sorted list mix classes")
    p.add_argument("--num-nodes", type=int, help="share the transcoding out over this many machines that see --out "
                   "(a shared file system): each runs the command with its --node-rank, then one runs it without "
                   "--node-rank to write the shards and manifest, identical to a one-machine pack's")
    p.add_argument("--node-rank", type=int, help="with --num-nodes: this machine's share, 0 to N-1 (e.g. "
                   "$SLURM_ARRAY_TASK_ID); a node rerun after it stopped redoes only its unfinished part")
    p.add_argument("--dry-run", action="store_true", help="print the plan (clips, disk, hours on --num-nodes x "
                   "--workers cores, memory per process) from the per-clip cost model, and pack nothing")
    p.add_argument("--source", choices=tuple(PACK_CORE_S_PER_SOURCE_S), default="720p",
                   help="with --dry-run: the source videos' resolution, for their measured transcoding cost "
                        "(default 720p)")


def _pack_arrays_parser(sub) -> None:
    p = sub.add_parser("pack-arrays", help="vector views (.npy / .csv) + labels → shards",
                       description="Pack one feature matrix per view (rows aligned with the labels file) into "
                                   "shards that umt-train reads like video shards. Features are standardised "
                                   "with the training split's mean and std (recorded in the manifest); rows "
                                   "with non-finite values are rejected with a reason.")
    p.add_argument("--view", action="append", required=True, metavar="NAME=FILE",
                   help="a view: its name and its [N, D] .npy or .csv file (repeat for each view)")
    p.add_argument("--labels", required=True, help="CSV with a header naming a `label` column and optionally `split`")
    p.add_argument("--out", required=True, help="output shard directory")
    p.add_argument("--split-fractions", default="0.7,0.1,0.2",
                   help="train,val,test shares per class when the labels file has no split column (default 0.7,0.1,0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified split and of the order in which each "
                   "split's rows are written (default 0)")
    p.add_argument("--shard-size", type=int, default=4096, help="samples per shard (default 4096)")
    p.add_argument("--no-standardise", action="store_true", help="store the features as given")


def _pack_arrays(args) -> None:
    views = parse_assignments(args.view, "--view")
    try:
        fractions = tuple(float(x) for x in args.split_fractions.split(","))
    except ValueError:
        raise UserError(f"--split-fractions expects three numbers, got {args.split_fractions!r}") from None
    pack_arrays(views, args.labels, args.out, args.shard_size, fractions, args.seed, not args.no_standardise)
    print(f"umt-data: packed into {args.out}")
    _info(args.out)


def _pack(args) -> None:
    clips = read_annotation_files(args.annotations, args.format, args.root, args.split, args.flow_root, args.classes)
    opts = PackOptions(args.short_side, args.fps, args.gop, args.crf, args.sample_rate, args.max_seconds,
                       flow=args.flow_root is not None)
    source = {"annotations": args.annotations, "format": args.format,
              **({"classes": str(args.classes)} if args.classes else {})}
    if args.num_nodes is not None and args.num_nodes < 1:
        raise UserError(f"--num-nodes must be at least 1, got {args.num_nodes}")
    if args.dry_run:
        _pack_dry_run(args, clips)
        return
    if args.node_rank is not None:
        if args.num_nodes is None:
            raise UserError("--node-rank needs --num-nodes")
        parts = pack_share(clips, args.out, opts, args.shard_size, args.num_nodes, args.node_rank, args.workers,
                           args.seed)
        print(f"umt-data: node {args.node_rank} of {args.num_nodes} has its {len(parts)} part(s); when every node "
              "has, run the same command without --node-rank" if parts is not None else
              f"umt-data: {args.out} is packed already")
        return
    if args.num_nodes is not None:
        assemble(clips, args.out, opts, args.shard_size, args.num_nodes, source, args.seed)
    else:
        pack(clips, args.out, opts, args.shard_size, args.workers, source, seed=args.seed)
    print(f"umt-data: packed into {args.out}")
    _info(args.out)


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def _pack_dry_run(args, clips: list) -> None:
    """The pack's plan on this cluster shape, from the per-clip cost model (loaders/making/costs.py)."""
    nodes = args.num_nodes or 1
    seconds = min(args.max_seconds or CLIP_SECONDS, CLIP_SECONDS)
    plan = pack_plan(len(clips), Cluster(nodes, 1, args.workers), args.source, seconds)
    splits = Counter(c.split for c in clips)
    missing = sum(c.path is None for c in clips)
    print(f"umt-data pack --dry-run: {len(clips)} clips ({', '.join(f'{s} {n}' for s, n in splits.items())}; "
          f"{missing} file(s) not found, to be rejected), {seconds:g} s each from {args.source} sources")
    print(f"shards on disk     {_gib(plan['shard_bytes'])} in {-(-len(clips) // args.shard_size)} shards of "
          f"{args.shard_size}" + (f", plus {_gib(plan['parts_bytes'])} of node parts until the final step"
                                  if nodes > 1 else ""))
    print(f"hours              {plan['hours']:.2f} h on {nodes} node(s) x {args.workers} workers "
          f"({plan['core_hours']:.0f} core-hours)" + (f"; then the final step copies {_gib(plan['parts_bytes'])}"
                                                       if nodes > 1 else ""))
    print(f"memory             about {pack_worker_bytes(seconds, args.fps, args.short_side) / 2**20:.0f} MiB per "
          f"worker process (a clip's frames at short side {args.short_side}, estimated), "
          f"{args.workers} per node")
    print("the per-clip costs are CPU measurements (benchmarks/RESULTS.md, \"Kinetics on a cluster\"); packed "
          "bytes were measured on generated clips, camera video compresses less")


def _info(data: str) -> None:
    manifest = load_manifest(data)
    print(f"shard set   {data if is_remote(data) else Path(data).resolve()}")
    print(f"classes     {len(manifest['classes'])}: {', '.join(manifest['classes'][:6])}"
          f"{'…' if len(manifest['classes']) > 6 else ''}")
    for split, info in manifest["splits"].items():
        size = sum(s["bytes"] for s in info["shards"])
        hours = f", {info['video_hours']:.2f} h of video" if "video_hours" in info else ""
        print(f"{split:<11} {info['num_samples']} samples in {len(info['shards'])} shards, {size / 2**20:.1f} MiB{hours}")
    print("modalities  " + ", ".join(f"{m} ({v.get('kind', m)}{', ' + str(v['dim']) + '-d' if 'dim' in v else ''})"
                                     for m, v in manifest["modalities"].items()))
    print(f"source      {manifest['source'].get('generator', manifest['source'])}")
    flags = manifest.get("flags", {})
    print("flags       " + (", ".join(f"{n} {f}" for f, n in flags.items()) or "none"))
    reasons = Counter(r["reason"] for r in manifest.get("rejected", []))
    print(f"rejected    {sum(reasons.values())}" + "".join(f"\n  {n} x {r}" for r, n in reasons.items()))


def _verify_parser(sub) -> None:
    p = sub.add_parser("verify", help="check every shard against the manifest; exit 0 only when all is well",
                       description="Check a shard set against its manifest: each shard's sha256, that its tar reads "
                                   "to the end, the number of samples, each sample's members and row; with --decode "
                                   "also that every member decodes to the length its JSON gives. Prints each problem "
                                   "with the shard and sample it is in; exit status 0 only when there are none, 1 "
                                   "when there are. Image sets (.beton) are checked by sha256.")
    p.add_argument("data", help="shard directory or location (holds manifest.json)")
    p.add_argument("--split", action="append", help="check only this split (repeatable; default all)")
    p.add_argument("--decode", action="store_true", help="also decode every member (as slow as one epoch)")


def _verify(args) -> None:
    bar = tqdm(total=sum(len(s["shards"]) for n, s in load_manifest(args.data)["splits"].items()
                         if not args.split or n in args.split), unit="shard", desc="verify", leave=False)
    problems = verify_shards(args.data, args.split, args.decode, progress=lambda name: bar.update())
    bar.close()
    for problem in problems:
        print(f"FAIL {problem}")
    damaged = len({p.shard for p in problems})
    print(f"umt-data verify: {damaged} damaged shard(s), {len(problems)} problem(s)" if problems else
          f"umt-data verify: {bar.n} shard(s) ok" + (", every member decoded" if args.decode else ""))
    if problems:
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="umt-data", description="Make and inspect umt shard sets "
                                     "(WebDataset tars of H.264 video, FLAC audio and JSON labels).")
    sub = parser.add_subparsers(dest="command", required=True)
    _synth_parser(sub)
    _realav_parser(sub)
    _pack_parser(sub)
    _synth_arrays_parser(sub)
    _pack_arrays_parser(sub)
    add_pack_images_parser(sub)
    _verify_parser(sub)
    info = sub.add_parser("info", help="summarise a shard set")
    info.add_argument("data", help="shard directory (holds manifest.json)")
    args = parser.parse_args(argv)

    def body() -> None:
        if args.command == "synth":
            cfg = SynthConfig(**{f.name: getattr(args, f.name) for f in fields(SynthConfig)})
            print(f"umt-data: wrote {write_synth(args.out, cfg)}")
        elif args.command == "realav":
            cfg = RealAVConfig(**{f.name: getattr(args, f.name) for f in fields(RealAVConfig)})
            print(f"umt-data: wrote {write_realav(args.out, cfg, args.stamps)}")
        elif args.command == "synth-arrays":
            cfg = VectorSynthConfig(**{f.name: getattr(args, f.name) for f in fields(VectorSynthConfig)})
            print(f"umt-data: wrote {', '.join(str(p) for p in write_raw(args.out, cfg).values())}")
        elif args.command == "pack":
            _pack(args)
        elif args.command == "pack-arrays":
            _pack_arrays(args)
        elif args.command == "verify":
            _verify(args)
        elif args.command == "pack-images":
            pack_images_command(args)
            _info(args.out)
        else:
            _info(args.data)

    run_cli("umt-data", body)


if __name__ == "__main__":
    main()
