"""``gigastream heatmap``: attention heatmaps of slide files -> DIR/<slide_id>.png (+ .tif)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gigastream.cli import common

COMMAND = ("heatmap",)
HELP = "attention heatmaps of slides with a trained checkpoint (PNG, optional pyramidal TIFF)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_checkpoint(parser)
    common.add_out(parser)
    parser.add_argument(
        "--tiff",
        action="store_true",
        help="also write a full-resolution pyramidal TIFF overlay per slide",
    )
    parser.add_argument(
        "--lesions",
        type=Path,
        help="folder of ground-truth masks <slide_id>.png to draw as contours",
    )
    common.add_device(parser)
    common.add_workers(parser)
    common.add_progress(parser)
    common.add_slides(parser)


def run(args: argparse.Namespace) -> int:
    common.quiet_lightning(args)
    from gigastream.train.prediction import predict_slide_files

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
    )
    for path in result["heatmaps"]:
        print(path)
    for slide_id, reason in result["skipped_slides"].items():
        print(f"skipped {slide_id}: {reason}")
    return 0 if result["heatmaps"] else 1
