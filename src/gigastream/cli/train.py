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
    # a dry run plans without the device and without loading trunk weights
    prepared = prepare(config, check_plan=not args.dry_run, check_device=not args.dry_run)
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
    """Print the streaming plan of the largest training slide, with the expected device
    memory and time per slide, on a GPU and on this machine (nothing is written)."""
    import statistics
    from dataclasses import replace

    import torch

    from gigastream.streaming.planner import format_bytes
    from gigastream.streaming.throughput import expected_seconds, precision_kind
    from gigastream.train.engine import build_model
    from gigastream.wsi.reader import SlideError, SlideReader
    from gigastream.wsi.source import SlideSource

    config = prepared.config
    shapes = []
    train_ids = {row.slide_id for row in prepared.train_rows}
    for row in prepared.train_rows + prepared.val_rows:
        try:
            with SlideReader.open(row.path, mpp=row.mpp, backend=config.data.backend) as slide:
                shapes.append((tuple(SlideSource(slide, mpp=config.data.mpp).shape), row.slide_id))
        except SlideError as exc:
            print(f"unreadable: {exc}")
    if not shapes:
        print("no readable slide")
        return 1
    shapes.sort(key=lambda s: s[0][2] * s[0][3])
    weights = config.model.weights
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise ValueError(f"model.weights: {weights}: no such file (a local state_dict file)")
    model = build_model(replace(config, model=replace(config.model, weights=None)), 2)
    precision = config.train.precision
    dtype = {"bf16": torch.bfloat16, "fp64": torch.float64}.get(
        precision_kind(precision), torch.float32
    )
    # the configured device; on a machine without one, also this CPU
    devices = ["cuda"] if prepared.accelerator == "gpu" else ["cuda", "cpu"]
    pixels = sum(s[0][2] * s[0][3] for s in shapes if s[1] in train_ids)
    median = shapes[len(shapes) // 2]
    largest = shapes[-1]
    print(f"precision {precision}; trunk {config.model.arch}; tiles/budget from model settings")
    for title, (shape, slide_id) in (("largest", largest), ("median", median)):
        print(f"{title} slide: {slide_id} {shape[2]}x{shape[3]} px at {config.data.mpp} um/px")
        for device in devices:
            plan = model.trunk.plan(shape, dtype, lazy_input=True, device=device)
            if title == "largest" and device == devices[0]:
                print(plan)
            where = "a GPU" if device == "cuda" else "this machine's CPU"
            line = (
                f"  on {where}: device memory <= {format_bytes(plan.est_peak_bytes)} "
                "(planner upper bound)"
            )
            if plan.est_host_bytes:
                line += f", host memory {format_bytes(plan.est_host_bytes)}"
            estimate = expected_seconds(plan, device, precision)
            if estimate is not None:
                seconds, measured = estimate
                line += f", ~{seconds:.3g} s per slide (forward+backward; at the throughput "
                line += f"measured on {measured.measured_on})"
                if title == "median":
                    area = shape[2] * shape[3]
                    epoch = seconds * pixels / area
                    line += f"; ~{epoch / 60:.3g} min of trunk compute per epoch"
            print(line)
    sizes = [s[0][2] * s[0][3] for s in shapes]
    print(
        f"{len(shapes)} slides: {statistics.median(sizes) / 1e6:.1f} Mpx median, "
        f"{max(sizes) / 1e6:.1f} Mpx largest (estimates scale with the pixels; other "
        "trunks and GPUs run at other speeds)"
    )
    return 0
