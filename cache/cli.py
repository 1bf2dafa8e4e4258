"""`umt-cache`: build and inspect teacher-feature caches."""
from __future__ import annotations

import argparse

from umt.engine.checkpoint import load_model
from umt.engine.config import TrainConfig
from umt.engine.methods.umt import KINDS
from umt.loaders.errors import UserError, parse_assignments, run_cli
from umt.loaders.making.costs import TEACHER_DIM, Cluster
from umt.loaders.stored.shards import load_manifest, split_shards

from umt.loaders.stored import cache_store as store
from .builder import build
from .plan import cache_plan
from .verify import verify



def _dry_run(args) -> None:
    """The cache's plan on this cluster shape: disk, each rank's memory (resident or streamed), build hours."""
    if args.data:
        manifest = load_manifest(args.data)
        shards = split_shards(manifest, args.split)
        clips, classes, shard_size = sum(s["count"] for s in shards), len(manifest["classes"]), shards[0]["count"]
    elif args.clips and args.classes:
        clips, classes, shard_size = args.clips, args.classes, 256
    else:
        raise UserError("umt-cache build --dry-run needs --data (a packed shard set) or --clips and --classes")
    teachers = parse_assignments(args.teacher, "--teacher")
    dims = (tuple(load_model(path)[0].encoders[m].out_dim for m, path in sorted(teachers.items())) if teachers
            else (args.teacher_dim,) * args.teachers)
    cluster = Cluster(args.num_nodes, args.processes_per_node, args.cores_per_node)
    plan = cache_plan(clips, classes, cluster, args.views, dims, shard_size, args.cache_budget_gb, KINDS[args.targets])
    how = "streamed" if plan["streamed"] else "resident"
    print(f"umt-cache build --dry-run: {clips} clips x {args.views} views, teachers of "
          f"{', '.join(f'{d}-d' for d in dims)}, {classes} classes, on {cluster.nodes} node(s) x "
          f"{cluster.processes_per_node} process(es) ({cluster.world} ranks)")
    print(f"cache on disk      {store.size_text(plan['disk_bytes'])} of float16 features and logits (uncompressed)")
    print(f"each rank holds    {store.size_text(plan['rank_bytes'])} on its device: the cache is {how} (training reads "
          f"{store.size_text(plan['read_bytes'])} of {args.targets}; cache_budget_gb {args.cache_budget_gb:g})")
    if plan["streamed"]:
        print(f"each rank reads    {store.size_text(plan['streamed_bytes_per_rank_per_epoch'])} of it per epoch")
    print(f"build              at least {plan['build_hours']:.3g} h on {cluster.nodes} x {cluster.cores_per_node} CPU "
          "cores (the CPU rate measured with 512-d teachers on views of 4 frames of 32 px; a forward at training's "
          "view costs more, and a GPU build is not measured)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="umt-cache", description="Precompute frozen uni-modal teachers' "
                                     "features and logits for every training sample and view into a Zarr v3 store, so UMT "
                                     "trains at the cost of joint training.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compute teacher features and logits (resumable; runs under accelerate launch)")
    b.add_argument("--data", help="shard directory (required but with --dry-run --clips)")
    b.add_argument("--teacher", action="append", default=[], metavar="MODALITY=CKPT",
                   help="uni-modal teacher checkpoint (umt-train --method unimodal), once per modality (required)")
    b.add_argument("--out", help="cache path (a directory, e.g. cache.zarr; required)")
    b.add_argument("--views", type=int, default=4, help="augmented views cached per sample (default 4)")
    b.add_argument("--seed", type=int, default=0, help="view seed; training reuses it (default 0)")
    b.add_argument("--split", default="train", help="split to cache (default train)")
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--workers", type=int, help="worker processes (default: on a CPU one a core, and each runs the "
                   "teachers on the clips it decodes, one thread each; on a GPU one, which decodes)")
    d = b.add_argument_group("--dry-run", "print the cache's plan for a cluster shape and build nothing")
    d.add_argument("--dry-run", action="store_true", help="print disk, memory per rank (resident or streamed, "
                   "by the trainer's cache_budget_gb rule) and build hours")
    d.add_argument("--clips", type=int, help="samples, when there is no --data yet")
    d.add_argument("--classes", type=int, help="classes, when there is no --data yet")
    d.add_argument("--teachers", type=int, default=2, help="teachers, when no --teacher is given (default 2)")
    d.add_argument("--teacher-dim", type=int, default=TEACHER_DIM, help="a teacher's feature width, when no "
                   f"--teacher is given (default {TEACHER_DIM}, ResNet-18 width)")
    d.add_argument("--num-nodes", type=int, default=1, help="nodes (default 1)")
    d.add_argument("--processes-per-node", type=int, default=8, help="training ranks (GPUs) per node (default 8)")
    d.add_argument("--cores-per-node", type=int, default=100, help="CPU cores per node (default 100)")
    d.add_argument("--cache-budget-gb", type=float, default=TrainConfig.cache_budget_gb,
                   help=f"the trainer's --cache-budget-gb (default {TrainConfig.cache_budget_gb:g})")
    d.add_argument("--targets", choices=tuple(KINDS), default=TrainConfig.distill_targets,
                   help=f"the trainer's --distill-targets (default {TrainConfig.distill_targets})")
    v = sub.add_parser("verify", help="check completeness, fingerprints, finiteness; optionally recompute "
                       "random entries online (exit 0 only when every check passes)")
    v.add_argument("cache")
    v.add_argument("--data", required=True, help="the shard directory the cache was built from")
    v.add_argument("--recompute", type=int, default=0, metavar="K", help="recompute K random (row, view) pairs")
    v.add_argument("--teacher", action="append", default=[], metavar="MODALITY=CKPT",
                   help="check against these teachers (default: the checkpoints recorded in the cache)")
    v.add_argument("--seed", type=int, default=0, help="seed choosing the pairs to recompute")
    i = sub.add_parser("info", help="print what a cache holds")
    i.add_argument("cache")
    args = parser.parse_args(argv)

    def body() -> None:
        if args.command == "build":
            if args.views < 1:
                raise UserError("--views must be >= 1")
            if args.dry_run:
                return _dry_run(args)
            if not (args.data and args.teacher and args.out):
                raise UserError("umt-cache build needs --data, --teacher and --out")
            path = build(args.data, parse_assignments(args.teacher, "--teacher"), args.out, args.views, args.seed,
                         args.split, args.batch_size, args.workers)
            print(store.summary(store.open_group(path), path))
        elif args.command == "verify":
            ok, lines = verify(args.cache, args.data, args.recompute,
                               parse_assignments(args.teacher, "--teacher") or None, args.seed)
            print("\n".join(lines))
            if not ok:
                raise SystemExit(1)
        else:
            print(store.summary(store.open_group(args.cache), args.cache))

    run_cli("umt-cache", body)


if __name__ == "__main__":
    main()
