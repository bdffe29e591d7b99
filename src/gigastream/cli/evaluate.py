"""``gigastream evaluate``: a checkpoint on the slides of a manifest -> metrics.json, predictions.csv.

By default the slides whose ``split`` is not ``train`` are scored (all of them when the
manifest has no split column); ``--split val|test|all`` chooses. The output says which
slides were scored, the class order and the positive class (the checkpoint's), the AUC,
the accuracy at p = 0.5 (and at the checkpoint's stored decision threshold, when it has
one) and the calibration of p(positive): Brier score and ECE.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gigastream.cli import common

COMMAND = ("evaluate",)
HELP = (
    "evaluate a trained checkpoint on a manifest's slides (default: those not in the train "
    "split): metrics.json (auc, accuracy, brier, ece, ...) and predictions.csv"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gigastream.train.selection import EVAL_SPLITS  # not prediction: it imports Lightning

    common.add_checkpoint(parser)
    parser.add_argument("--manifest", type=Path, required=True, help="CSV slide_id,path,label")
    parser.add_argument(
        "--split",
        choices=EVAL_SPLITS,
        help="which slides are scored: val, test or all (default: the slides whose split is "
        "not train when the manifest has a split column, else all)",
    )
    common.add_out(parser)
    common.add_slide_mpp(parser)
    common.add_device(parser)
    common.add_workers(parser)
    common.add_progress(parser)
    common.add_features(
        parser,
        "feature files DIR/<slide_id>.h5 of the slides, for a checkpoint trained on cached "
        "features (default: those of its training run)",
    )


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def run(args: argparse.Namespace) -> int:
    common.check_slide_mpp(args.slide_mpp)
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
        split=args.split,
        slide_mpp=args.slide_mpp,
    )
    from gigastream.train.data import describe_skipped

    classes = metrics["class_names"]
    print(
        f"scored {metrics['scored_slides']} slide(s) of {args.manifest}, split "
        f"{metrics['split']}; classes {classes} (the checkpoint's order), positive class "
        f"{metrics['positive_class']!r}"
    )
    seen = metrics["training_slides_scored"]
    if seen:
        print(
            f"warning: {len(seen)} of the {metrics['scored_slides']} scored slides are slides "
            "the checkpoint was trained on (the metrics are optimistic): score held-out slides "
            "(--split val/test, or a manifest of other slides)"
        )
    threshold = metrics["threshold"]
    at_threshold = (
        ""
        if threshold is None
        else f", {_number(metrics['accuracy_at_threshold'])} at the checkpoint's threshold "
        f"{threshold:.4g}"
    )
    at_half = " at 0.5" if len(classes) == 2 else ""
    print(
        f"{metrics['slides']} slides: AUC {_number(metrics['auc'])}, accuracy "
        f"{_number(metrics['accuracy'])}{at_half}{at_threshold}; Brier "
        f"{_number(metrics['brier'])}, ECE {_number(metrics['ece'])} -> "
        f"{args.out / 'metrics.json'}, {args.out / 'predictions.csv'}"
    )
    skipped = metrics["skipped_slides"]
    if skipped:
        print(f"skipped {len(skipped)} slide(s): {describe_skipped(skipped)} (see metrics.json)")
    return 0
