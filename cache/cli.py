"""`umt-cache`: build and inspect teacher-feature caches."""
from __future__ import annotations

import argparse

from umt.loaders.errors import UserError, parse_assignments, run_cli

from . import store
from .builder import build
from .verify import verify


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="umt-cache", description="Precompute frozen uni-modal teachers' "
                                     "features and logits for every training sample and view into a Zarr v3 store, so UMT "
                                     "trains at the cost of joint training.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compute teacher features and logits (resumable; runs under accelerate launch)")
    b.add_argument("--data", required=True, help="shard directory")
    b.add_argument("--teacher", action="append", default=[], metavar="MODALITY=CKPT", required=True,
                   help="uni-modal teacher checkpoint (umt-train --method unimodal), once per modality")
    b.add_argument("--out", required=True, help="cache path (a directory, e.g. cache.zarr)")
    b.add_argument("--views", type=int, default=4, help="augmented views cached per sample (default 4)")
    b.add_argument("--seed", type=int, default=0, help="view seed; training reuses it (default 0)")
    b.add_argument("--split", default="train", help="split to cache (default train)")
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--workers", type=int, default=1, help="decoding worker processes")
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
