"""``gigastream train``: train a slide classifier on a manifest: a streamed trunk + MIL head
over whole slides, (``--model-kind patches``) a patch encoder + MIL head over the slides'
tissue patches, or (``--features DIR``) a MIL head on their cached patch features.

Example (a patch-bag model on 32 px patches at 0.5 um/px)::

    gigastream train --manifest M.csv --out runs/patches --model-kind patches \
        --encoder small_cnn --patch-size 32 --mpp 0.5 --bag-strategy accumulate --head abmil

Example (the two-stage baseline: features written by ``gigastream features``)::

    gigastream train --manifest M.csv --out runs/abmil --features features/r18 --head abmil
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from gigastream.cli import annotation_flags, common

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
        help="validate everything and print the streaming plan (patch models: the patch bags "
        "and chunks); train nothing",
    )
    common.add_training(parser)
    annotation_flags.add_roi(parser)
    common.add_patches(parser)
    common.add_features(
        parser,
        "train a MIL head on cached patch features DIR/<slide_id>.h5 (gigastream features, "
        "CLAM or TRIDENT): model.kind features, data.features_dir",
    )


def _config(args: argparse.Namespace):
    """The run: defaults < ``--config`` < flags (validated)."""
    from gigastream.train.config_files import load_config, read_yaml

    if args.folds == "all" and args.splits is None:
        if not args.config or read_yaml(args.config).get("splits") is None:
            raise ValueError("--folds all needs --splits S.csv (written by gigastream splits)")
    overrides = common.run_overrides(args)
    overrides.update(
        manifest=str(args.manifest) if args.manifest else None,
        splits=str(args.splits) if args.splits else None,
        fold=args.fold if args.folds is None else (args.fold if args.fold is not None else 0),
    )
    return load_config(args.config, overrides) if args.config else load_config({}, overrides)


def run(args: argparse.Namespace) -> int:
    common.quiet_lightning(args)
    if args.verbose == 0:  # one line per epoch (loss, validation AUC), as the demo prints
        import logging

        logging.getLogger("gigastream.train.recorder").setLevel(logging.INFO)
    from gigastream.train.crossval import fit_folds
    from gigastream.train.dry_run import DryRunReport, dry_run
    from gigastream.train.fitting import fit
    from gigastream.train.plan_check import warn_costly_plan
    from gigastream.train.preparation import prepare

    if args.folds == "all" and args.dry_run:
        raise ValueError("--dry-run plans one run: drop --folds all (or --dry-run)")
    config = _config(args)
    if config.data.roi_dir is not None and config.model.kind == "features":
        raise ValueError(
            "--roi restricts the slides' instances, but a head on cached features reads no "
            "slide (its patches were chosen by gigastream features): drop --roi"
        )
    if not args.dry_run:  # a dry run plans without the trunk's weights
        common.check_weights_file(config.model.weights)
    if args.folds == "all":
        _check_roi(config)
        summary = fit_folds(config, args.out, resume=args.resume, overwrite=args.overwrite)
        _print_folds(summary, args.out)
        return 0
    # a dry run plans without the device and without loading trunk weights
    prepared = prepare(config, check_plan=not args.dry_run, check_device=not args.dry_run)
    _check_roi(config, [*prepared.train_rows, *prepared.val_rows])
    if prepared.config.task == "regression":
        mean, std = prepared.config.target.scale()
        what = f"regression of the label's value (training slides: mean {mean:.4g}, sd {std:.4g})"
    else:
        what = f"classes {prepared.class_names}, positive class {prepared.class_names[-1]!r}"
    print(
        f"{len(prepared.train_rows)} training and {len(prepared.val_rows)} validation slides, {what}"
    )
    if args.dry_run:
        report = dry_run(prepared)
        print(report)
        if isinstance(report, DryRunReport) and report.slides:  # the largest slide's plan
            warn_costly_plan(report.slides[0].plan, config.model)
        return 0 if report.ok else 1
    metrics = fit(config, args.out, resume=args.resume, overwrite=args.overwrite, prepared=prepared)
    if "final" in metrics:  # else a DDP worker (rank > 0): rank 0 reports
        _print_run(metrics, args.out)
    return 0


def _check_roi(config, rows=None) -> None:
    """``data.roi_dir`` (``--roi``): every slide trained or validated on (``rows``; all the
    manifest's with ``--folds all``) has a readable, non-empty ROI file, before any work."""
    if config.data.roi_dir is None:
        return
    from gigastream.train.roi import check_roi_files

    if rows is None:
        from gigastream.wsi.manifest import read_manifest

        rows = read_manifest(config.manifest, check_files=False).rows
    check_roi_files(config.data.roi_dir, [row.slide_id for row in rows])


def _print_folds(summary: dict, out: Path) -> None:
    from gigastream.train.recorder import auc_words, scores_words

    if summary.get("task") == "regression":
        for row in summary["folds"]:
            print(f"fold {row['fold']}: validation {scores_words(row)}")
        mean, sd = summary["val_spearman_mean"], summary["val_spearman_sd"]
        both = all(v is not None and math.isfinite(v) for v in (mean, sd))
        print(
            f"cross-validation Spearman {f'{mean:.3f} ± {sd:.3f}' if both else 'n/a'}"
            f" over {len(summary['folds'])} folds -> {out / 'cv_metrics.json'}"
        )
        return
    for row in summary["folds"]:
        print(f"fold {row['fold']}: validation AUC {auc_words(row['val_auc'])}")
    mean, sd = summary["val_auc_mean"], summary["val_auc_sd"]
    both = all(v is not None and math.isfinite(v) for v in (mean, sd))
    print(
        f"cross-validation AUC {f'{mean:.3f} ± {sd:.3f}' if both else auc_words(mean)}"
        f" over {len(summary['folds'])} folds -> {out / 'cv_metrics.json'}"
    )


def _print_run(metrics: dict, out: Path) -> None:
    from gigastream.train.recorder import scores_words

    final = metrics["final"]
    print(
        f"done in {metrics['seconds']:.0f} s: validation {scores_words(final)} "
        f"({final['slides']} slides); best checkpoint {out / metrics['best_checkpoint']}"
    )
    if metrics["skipped_slides"]:
        print(f"skipped {len(metrics['skipped_slides'])} slide(s): see metrics.json")
