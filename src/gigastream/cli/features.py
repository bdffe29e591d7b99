"""``gigastream features``: the patch features of a manifest's slides with a frozen encoder,
one ``OUT/<slide_id>.h5`` per slide (CLAM/TRIDENT layout), resumable; stage one of the
two-stage baseline (stage two: ``gigastream train --features OUT``).

Example (ResNet-18 ImageNet features of 224 px patches at 0.5 um/px)::

    gigastream features --manifest M.csv --out features/r18 --encoder resnet18 \\
        --weights imagenet --patch-size 224 --mpp 0.5 --chunk-size 128 --device cuda

With ``--roi DIR`` (``DIR/<slide_id>.xml`` / ``.geojson`` / ``.json``, one per slide, checked
before any work) only the patches inside each slide's annotated regions are encoded; an
edited ROI file makes its slide's file stale (recomputed on the next run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gigastream.cli import annotation_flags, common

COMMAND = ("features",)
HELP = (
    "extract patch features of a manifest's slides with a frozen encoder: OUT/<slide_id>.h5 "
    "(CLAM/TRIDENT layout), resumable"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--manifest", type=Path, required=True, help="CSV slide_id,path,label[,case_id,split,mpp]"
    )
    common.add_out(parser, "folder of the feature files (<slide_id>.h5, features.json)")
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML file of settings (its patches: and data: sections; flags override it)",
    )
    parser.add_argument(
        "--encoder",
        help="patch encoder: a registered trunk (resnet18, ...), small_cnn or timm:<model name>",
    )
    parser.add_argument("--weights", help="encoder weights: imagenet (torchvision) or a local file")
    parser.add_argument("--patch-size", type=int, help="patch edge in pixels at --mpp")
    parser.add_argument("--mpp", type=float, help="resolution patches are read at (um/px)")
    parser.add_argument("--min-tissue", type=float, help="tissue fraction a patch needs (0-1)")
    parser.add_argument("--chunk-size", type=int, help="patches encoded at a time")
    annotation_flags.add_roi(parser, "extract patch features")
    common.add_slide_mpp(parser)
    common.add_device(parser)
    parser.add_argument(
        "--precision",
        choices=["32", "64", "bf16-mixed", "16-mixed"],
        default="32",
        help="numeric precision of the encoder (the files hold float32)",
    )
    common.add_progress(parser)


def _settings(args: argparse.Namespace):
    """The run's ``data`` and ``patches`` settings: defaults < ``--config`` < flags."""
    from gigastream.train.config_files import load_config

    roi = None if args.roi is None else str(args.roi)
    overrides = {"patches": common.patch_section(args), "data": {"mpp": args.mpp, "roi_dir": roi}}
    config = load_config(args.config if args.config else {}, overrides)
    return config.data, config.patches


def run(args: argparse.Namespace) -> int:
    from gigastream.train.features import extract_features
    from gigastream.train.selection import with_slide_mpp
    from gigastream.wsi.manifest import read_manifest

    common.check_slide_mpp(args.slide_mpp)
    data, patches = _settings(args)
    rows = read_manifest(args.manifest, check_files=False).rows  # a missing slide: a failure
    rows = with_slide_mpp(rows, args.slide_mpp, data.backend)  # part of each file's key
    summary = extract_features(
        rows,
        args.out,
        data,
        patches,
        device=args.device or "auto",
        precision=args.precision,
        progress=not args.no_progress,
    )
    print(
        f"{len(summary.written)} written, {len(summary.skipped)} up to date, "
        f"{len(summary.failed)} failed ({summary.feature_dim} features per patch, "
        f"{summary.seconds:.0f} s) -> {args.out}/<slide_id>.h5, {args.out / 'features.json'}"
    )
    if summary.failed:
        names = ", ".join(list(summary.failed)[:10])
        more = f" and {len(summary.failed) - 10} more" if len(summary.failed) > 10 else ""
        print(
            f"gigastream features: error: {len(summary.failed)} of {len(rows)} slides failed: {names}"
            f"{more} (reasons in {args.out / 'failures.csv'})",
            file=sys.stderr,
        )
        return 1
    return 0
