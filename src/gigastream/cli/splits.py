"""``gigastream splits``: validate a manifest and write stratified patient-level k-fold splits."""

from __future__ import annotations

import argparse
from pathlib import Path

from gigastream.cli import common
from gigastream.wsi.manifest import read_manifest, write_splits

COMMAND = ("splits",)
HELP = "validate a slide manifest CSV and write stratified patient-level k-fold splits"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--manifest", type=Path, required=True, help="CSV slide_id,path,label[,case_id,...]"
    )
    common.add_out(parser, "splits CSV to write")
    parser.add_argument("--folds", type=int, default=5, help="number of folds")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the assignment of cases to folds"
    )
    common.add_task(parser)
    parser.add_argument(
        "--no-check-files", action="store_true", help="do not require the slide files"
    )


def run(args: argparse.Namespace) -> int:
    manifest = read_manifest(args.manifest, check_files=not args.no_check_files)
    if args.task == "regression":  # folds with similar spreads of the values
        from gigastream.train.selection import check_targets, target_strata

        check_targets(manifest.rows, args.manifest)
        strata = [r.label for r in target_strata(manifest.rows)]
        write_splits(manifest, args.out, folds=args.folds, seed=args.seed, strata=strata)
        what = f"values stratified in {len(set(strata))} quantile strata"
    else:
        write_splits(manifest, args.out, folds=args.folds, seed=args.seed)
        what = f"labels {manifest.label_to_index}"
    print(f"{len(manifest)} slides, {what}; {args.folds} folds -> {args.out}")
    return 0
