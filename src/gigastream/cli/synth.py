"""``gigastream synth``: write a labelled dataset of synthetic pyramidal slides."""

from __future__ import annotations

import argparse
import logging
import time

from gigastream.cli import common
from gigastream.wsi.synth import SynthConfig, synthesize_dataset
from gigastream.wsi.synth_targets import TARGETS

logger = logging.getLogger(__name__)

COMMAND = ("synth",)
HELP = "write synthetic pyramidal H&E slides with planted lesions, a manifest and lesion masks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SynthConfig()
    common.add_out(parser)
    parser.add_argument("--slides", type=int, default=defaults.slides, help="number of slides")
    parser.add_argument("--size", type=int, default=defaults.size, help="level-0 edge in pixels")
    parser.add_argument("--mpp", type=float, default=defaults.mpp, help="microns per level-0 pixel")
    parser.add_argument(
        "--lesion-size", type=int, default=defaults.lesion_size, help="lesion diameter (px)"
    )
    parser.add_argument(
        "--min-lesions",
        type=int,
        default=defaults.min_lesions,
        help="fewest lesions per positive slide",
    )
    parser.add_argument(
        "--max-lesions",
        type=int,
        default=defaults.max_lesions,
        help="most lesions per positive slide",
    )
    parser.add_argument(
        "--max-lesion-fraction",
        type=float,
        default=defaults.max_lesion_fraction,
        help="lesions cover at most this fraction of a positive slide's tissue",
    )
    parser.add_argument(
        "--lesion-contrast",
        type=float,
        default=defaults.lesion_contrast,
        help="strength of the lesions' nuclear pattern (0: invisible)",
    )
    parser.add_argument(
        "--positive-fraction",
        type=float,
        default=defaults.positive_fraction,
        help="fraction of slides with lesions",
    )
    parser.add_argument(
        "--block-size", type=int, default=defaults.block_size, help="texture block edge (px)"
    )
    parser.add_argument(
        "--feather", type=int, default=defaults.feather, help="cross-fade between blocks (px)"
    )
    parser.add_argument(
        "--target",
        choices=TARGETS,
        default=defaults.target,
        help="the manifest's label: class (positive/negative), subtype (negative or the "
        "lesion subtype: multi-class), lesion_count or lesion_area (%% of the tissue: "
        f"regression targets; default {defaults.target})",
    )
    parser.add_argument(
        "--subtypes",
        type=int,
        default=defaults.subtypes,
        help=f"lesion subtypes of --target subtype (default {defaults.subtypes})",
    )
    parser.add_argument("--tile-size", type=int, default=defaults.tile_size, help="TIFF tile edge")
    parser.add_argument("--quality", type=int, default=defaults.quality, help="JPEG quality")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the dataset")
    common.add_sources(parser)
    common.add_progress(parser)


def run(args: argparse.Namespace) -> int:
    config = SynthConfig(
        slides=args.slides,
        size=args.size,
        mpp=args.mpp,
        lesion_size=args.lesion_size,
        min_lesions=args.min_lesions,
        max_lesions=args.max_lesions,
        max_lesion_fraction=args.max_lesion_fraction,
        lesion_contrast=args.lesion_contrast,
        positive_fraction=args.positive_fraction,
        block_size=args.block_size,
        feather=args.feather,
        tile_size=args.tile_size,
        quality=args.quality,
        target=args.target,
        subtypes=args.subtypes,
        seed=args.seed,
    )
    config.validate()
    sources = args.sources or common.find_shared_data("images", "slides")
    if not sources:
        raise ValueError(
            "no H&E images found (images/ or slides/ of ../shared/data): pass --sources"
        )
    start = time.perf_counter()
    manifest = synthesize_dataset(args.out, config, sources, progress=not args.no_progress)
    print(
        f"wrote {config.slides} slides of {config.size}^2 px to {args.out} "
        f"in {time.perf_counter() - start:.1f} s; manifest: {manifest}"
    )
    return 0
