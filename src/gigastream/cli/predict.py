"""``gigastream predict``: class probabilities of slide files -> predictions.csv."""

from __future__ import annotations

import argparse

from gigastream.cli import common

COMMAND = ("predict",)
HELP = (
    "predict slide classes (or values) with a trained checkpoint: predictions.csv (p_<class> "
    "columns, or prediction)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_checkpoint(parser)
    common.add_out(parser)
    common.add_device(parser)
    common.add_workers(parser)
    common.add_progress(parser)
    common.add_slide_mpp(parser)
    common.add_features(
        parser,
        "feature files DIR/<slide_id>.h5, for a checkpoint trained on cached features; a "
        "SLIDE is named by its file's stem (the slide or its .h5 file)",
    )
    common.add_slides(parser, manifest=True)


def _row(prediction: dict, class_names: list[str]) -> dict[str, str]:
    """A slide's line of the printed table: ``p_<class>`` columns, or a regression's value."""
    if "prediction" in prediction:
        return {"slide_id": prediction["slide_id"], "prediction": f"{prediction['prediction']:.4g}"}
    probs = zip(class_names, prediction["probs"], strict=True)
    return {"slide_id": prediction["slide_id"], **{f"p_{c}": f"{v:.4f}" for c, v in probs}}


def run(args: argparse.Namespace) -> int:
    common.check_slide_mpp(args.slide_mpp)
    common.quiet_lightning(args)
    from gigastream.train.heatmaps import slide_labels
    from gigastream.train.prediction import predict_slide_files

    slides = common.slide_list(args)
    labels = slide_labels(slides, manifest=args.manifest) if args.manifest else None
    result = predict_slide_files(
        args.checkpoint,
        slides,
        args.out,
        device=args.device,
        progress=not args.no_progress,
        num_workers=args.workers,
        features_dir=args.features,
        slide_mpp=args.slide_mpp,
        labels=labels,
    )
    rows = [_row(p, result["class_names"]) for p in result["predictions"]]
    if rows:
        common.print_table(rows, list(rows[0]))
    for slide_id, reason in result["skipped_slides"].items():
        print(f"skipped {slide_id}: {reason}")
    print(f"-> {args.out / 'predictions.csv'}")
    return 0 if result["predictions"] else 1
