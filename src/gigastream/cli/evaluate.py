"""``gigastream evaluate``: a checkpoint on the slides of a manifest -> metrics.json, predictions.csv.

By default the slides whose ``split`` is not ``train`` are scored (all of them when the
manifest has no split column); ``--split val|test|all`` chooses. The output says which
slides were scored, the class order and the positive class (the checkpoint's), the AUC,
the accuracy at p = 0.5 (and at the checkpoint's stored decision threshold, when it has
one) and the calibration of p(positive): Brier score and ECE. With ``--annotations DIR``
(ASAP/CAMELYON XML or QuPath GeoJSON ``<slide_id>.xml`` / ``.geojson`` / ``.json``) it also
measures how much attention lies inside the annotated tumour, per slide and over the slides
(:mod:`gigastream.train.annotation_eval`; ``annotations`` in metrics.json); ``--tumour-classes
NAME [NAME ...]`` chooses which of the files' classes are tumour.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gigastream.cli import annotation_flags, common

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
    parser.add_argument(
        "--annotations",
        type=Path,
        metavar="DIR",
        help="annotation files <slide_id>.xml (ASAP/CAMELYON) or .geojson/.json (QuPath): the "
        "attention mass and instance-level AUC inside their tumour, per slide and overall",
    )
    annotation_flags.add_tumour_classes(parser)


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def _print_values(metrics: dict, args: argparse.Namespace) -> None:
    """The summary of a regression checkpoint's evaluation."""
    from gigastream.train.data import describe_skipped

    print(
        f"scored {metrics['scored_slides']} slide(s) of {args.manifest}, split "
        f"{metrics['split']}; regression of the label's value"
    )
    print(
        f"{metrics['slides']} slides: Spearman {_number(metrics['spearman'])}, Pearson "
        f"{_number(metrics['pearson'])}, MAE {_number(metrics['mae'], 4)}, RMSE "
        f"{_number(metrics['rmse'], 4)}, R² {_number(metrics['r2'])} -> "
        f"{args.out / 'metrics.json'}, {args.out / 'predictions.csv'}"
    )
    skipped = metrics["skipped_slides"]
    if skipped:
        print(f"skipped {len(skipped)} slide(s): {describe_skipped(skipped)} (see metrics.json)")


def _check_annotations(folder: Path | None, manifest: Path) -> None:
    """``--annotations DIR``: every annotation file of the manifest's slides is read before
    any work (a malformed one refuses); at least one slide must have one."""
    if folder is None:
        return
    from gigastream.wsi.annotation_readers import read_annotation_folder
    from gigastream.wsi.manifest import read_manifest

    ids = [row.slide_id for row in read_manifest(manifest, check_files=False).rows]
    if ids and not read_annotation_folder(folder, ids):
        raise ValueError(
            f"--annotations {folder}: no annotation file for any of the {len(ids)} slides of "
            f"{manifest} (looked for e.g. {folder / ids[0]}.xml, .geojson, .json); name the "
            "files after the manifest's slide_id"
        )


def run(args: argparse.Namespace) -> int:
    common.check_slide_mpp(args.slide_mpp)
    classes = annotation_flags.tumour_classes(args)
    _check_annotations(args.annotations, args.manifest)
    common.quiet_lightning(args)
    from gigastream.train.evaluation import evaluate_manifest

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
        annotations_dir=args.annotations,
        tumour_classes=classes,
    )
    from gigastream.train.data import describe_skipped

    if metrics.get("task") == "regression":
        _print_values(metrics, args)
        _print_annotations(metrics)
        return 0
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
    _print_annotations(metrics)
    return 0


def _print_annotations(metrics: dict) -> None:
    """The one summary line of ``--annotations`` (``annotations`` in metrics.json)."""
    if "annotations" in metrics:
        from gigastream.train.annotation_eval import describe

        print(describe(metrics["annotations"]))
