"""``gigastream train``: train a slide classifier (StreamingCLAM by default) on a manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from gigastream.cli import common

COMMAND = ("train",)
HELP = "train a slide classifier end to end on the slides of a manifest (Lightning)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", type=Path, help="CSV slide_id,path,label[,case_id,split,mpp]")
    common.add_out(parser, "run folder (checkpoints, config.yaml, metrics.json, logs, plots)")
    parser.add_argument("--splits", type=Path, help="folds CSV written by gigastream splits")
    parser.add_argument("--fold", type=int, help="validation fold of --splits")
    parser.add_argument("--folds", choices=["all"], help="all: cross-validate every fold")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate everything and print the streaming plan; train nothing",
    )
    common.add_training(parser)


def run(args: argparse.Namespace) -> int:
    common.quiet_lightning(args)
    from gigastream.train.config import load_config
    from gigastream.train.engine import fit, fit_folds, prepare

    overrides = common.run_overrides(args)
    overrides.update(
        manifest=str(args.manifest) if args.manifest else None,
        splits=str(args.splits) if args.splits else None,
        fold=args.fold if args.folds is None else (args.fold if args.fold is not None else 0),
    )
    config = load_config(args.config, overrides) if args.config else load_config({}, overrides)
    if args.folds == "all":
        summary = fit_folds(config, args.out, resume=args.resume, overwrite=args.overwrite)
        for row in summary["folds"]:
            print(f"fold {row['fold']}: validation AUC {row['val_auc']:.3f}")
        print(
            f"cross-validation AUC {summary['val_auc_mean']:.3f} ± {summary['val_auc_sd']:.3f}"
            f" over {len(summary['folds'])} folds -> {args.out / 'cv_metrics.json'}"
        )
        return 0
    prepared = prepare(config)
    print(
        f"{len(prepared.train_rows)} training and {len(prepared.val_rows)} validation slides, "
        f"classes {prepared.class_names}"
    )
    if args.dry_run:
        return _dry_run(prepared)
    metrics = fit(config, args.out, resume=args.resume, overwrite=args.overwrite, prepared=prepared)
    if "final" not in metrics:  # a DDP worker (rank > 0): rank 0 reports
        return 0
    final = metrics["final"]
    auc = final["val_auc"]
    print(
        f"done in {metrics['seconds']:.0f} s: validation AUC "
        f"{'n/a' if auc is None else f'{auc:.3f}'}, accuracy {final['val_accuracy']:.3f} "
        f"({final['slides']} slides); best checkpoint {args.out / metrics['best_checkpoint']}"
    )
    if metrics["skipped_slides"]:
        print(f"skipped {len(metrics['skipped_slides'])} slide(s): see metrics.json")
    return 0


def _dry_run(prepared) -> int:
    """Print the streaming plan of the largest training slide (nothing is written)."""
    from gigastream.train.engine import build_model
    from gigastream.wsi.reader import SlideError, SlideReader
    from gigastream.wsi.source import SlideSource

    config = prepared.config
    shapes = []
    for row in prepared.train_rows + prepared.val_rows:
        try:
            with SlideReader.open(row.path, mpp=row.mpp, backend=config.data.backend) as slide:
                shapes.append((tuple(SlideSource(slide, mpp=config.data.mpp).shape), row.slide_id))
        except SlideError as exc:
            print(f"unreadable: {exc}")
    if not shapes:
        print("no readable slide")
        return 1
    shape, slide_id = max(shapes, key=lambda s: s[0][2] * s[0][3])
    model = build_model(config, len(prepared.class_names))
    plan = model.trunk.plan(shape, lazy_input=True)
    print(f"largest input: {slide_id} {shape[2]}x{shape[3]} px at {config.data.mpp} um/px")
    print(plan)
    return 0
