"""``gigastream heatmap``: attention heatmaps of slide files -> DIR/<slide_id>.png (+ .tif),
and the attention as QuPath GeoJSON tiles DIR/<slide_id>.attention.geojson.

Lesion contours come from ``--lesions DIR`` (masks ``<slide_id>.png``), from ``--annotations
DIR`` (ASAP/CAMELYON XML or QuPath GeoJSON ``<slide_id>.xml`` / ``.geojson`` / ``.json``:
tumour minus exclusions, every file checked before any work; ``--tumour-classes NAME [NAME
...]`` chooses which classes are tumour), or, with neither, from the masks next to synthetic
slides (``<slide folder>/../lesions``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gigastream.cli import annotation_flags, common

COMMAND = ("heatmap",)
HELP = (
    "attention heatmaps of slides with a trained checkpoint (PNG, optional pyramidal TIFF, "
    "QuPath GeoJSON)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gigastream.viz.heatmap import ATTENTION_OPACITY

    common.add_checkpoint(parser)
    common.add_out(parser)
    parser.add_argument(
        "--tiff",
        action="store_true",
        help="also write a full-resolution pyramidal TIFF overlay per slide",
    )
    lesions = parser.add_mutually_exclusive_group()
    lesions.add_argument(
        "--lesions",
        type=Path,
        help="folder of ground-truth masks <slide_id>.png to draw as contours",
    )
    lesions.add_argument(
        "--annotations",
        type=Path,
        metavar="DIR",
        help="folder of annotation files <slide_id>.xml (ASAP/CAMELYON) or .geojson/.json "
        "(QuPath) whose tumour regions (minus exclusions) are drawn as contours",
    )
    annotation_flags.add_tumour_classes(parser, slides=True)
    parser.add_argument(
        "--opacity",
        type=float,
        default=ATTENTION_OPACITY,
        help="opacity of the attention colours over the slide, from 0 (invisible) to 1 "
        f"(opaque; default {ATTENTION_OPACITY})",
    )
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument(
        "--manifest",
        type=Path,
        help="CSV slide_id,path,label,...: the slides' true labels (and mpp), shown in the "
        "titles (a slide is matched by its path, else by its file name as slide_id); "
        "without SLIDE files, its slides are drawn",
    )
    labels.add_argument("--label", help="the true label of every slide, shown in the titles")
    common.add_device(parser)
    common.add_workers(parser)
    common.add_progress(parser)
    common.add_slide_mpp(parser)
    parser.add_argument(
        "slides", type=Path, nargs="*", metavar="SLIDE", help="slide files (none: --manifest's)"
    )


def run(args: argparse.Namespace) -> int:
    from gigastream.train.heatmaps import slide_labels
    from gigastream.train.prediction import predict_slide_files
    from gigastream.viz.heatmap import check_opacity

    check_opacity(args.opacity, "--opacity")  # every argument before any work
    common.check_slide_mpp(args.slide_mpp)
    classes = annotation_flags.tumour_classes(args)
    args.slides = common.slide_list(args)
    _check_lesions(args.lesions)
    if args.annotations is not None:  # every file read: a malformed one refuses here
        from gigastream.wsi.annotation_readers import read_annotation_folder

        read_annotation_folder(args.annotations, [Path(s).stem for s in args.slides])
    labels = slide_labels(args.slides, manifest=args.manifest, label=args.label)
    common.quiet_lightning(args)
    result = predict_slide_files(
        args.checkpoint,
        args.slides,
        args.out,
        device=args.device,
        progress=not args.no_progress,
        heatmaps=True,
        tiff=args.tiff,
        lesion_dir=args.lesions,
        num_workers=args.workers,
        labels=labels,
        opacity=args.opacity,
        slide_mpp=args.slide_mpp,
        annotations_dir=args.annotations,
        tumour_classes=classes,
    )
    for path in result["heatmaps"]:
        print(path)
    for slide_id, reason in result["skipped_slides"].items():
        print(f"skipped {slide_id}: {reason}")
    return 0 if result["heatmaps"] else 1


def _check_lesions(lesions: Path | None) -> None:
    """``--lesions DIR`` must be a folder: otherwise the masks next to synthetic slides
    (``lesions/``) would be drawn as the ground truth instead, silently."""
    if lesions is None or lesions.is_dir():
        return
    what = "is a file" if lesions.exists() else "not found"
    raise ValueError(
        f"--lesions {lesions}: {what}; give the folder of ground-truth masks <slide_id>.png "
        "(or drop --lesions)"
    )
