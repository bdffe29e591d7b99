"""``gigastream evaluate``: a checkpoint on the slides of a manifest -> metrics.json, predictions.csv."""

from __future__ import annotations

import argparse
from pathlib import Path

from gigastream.cli import common

COMMAND = ("evaluate",)
HELP = "evaluate a trained checkpoint on a manifest: metrics.json (auc, ...) and predictions.csv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_checkpoint(parser)
    parser.add_argument("--manifest", type=Path, required=True, help="CSV slide_id,path,label")
    common.add_out(parser)
    common.add_device(parser)
    common.add_workers(parser)
    common.add_progress(parser)
    common.add_features(
        parser,
        "feature files DIR/<slide_id>.h5 of the slides, for a checkpoint trained on cached "
        "features (default: those of its training run)",
    )


def run(args: argparse.Namespace) -> int:
    common.quiet_lightning(args)
    from gigastream.train.prediction import evaluate_manifest

    metrics = evaluate_manifest(
        args.checkpoint,
        args.manifest,
        args.out,
        device=args.device,
        progress=not args.no_progress,
        num_workers=args.workers,
        features_dir=args.features,
    )
    auc = metrics["auc"]
    print(
        f"{metrics['slides']} slides: AUC {'n/a' if auc != auc else f'{auc:.3f}'}, "
        f"accuracy {metrics['accuracy']:.3f} -> {args.out / 'metrics.json'}, "
        f"{args.out / 'predictions.csv'}"
    )
    if metrics["skipped_slides"]:
        print(f"skipped {len(metrics['skipped_slides'])} unreadable slide(s): see metrics.json")
    return 0
