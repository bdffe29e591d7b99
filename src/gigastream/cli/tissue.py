"""``gigastream tissue``: compute tissue masks of slides and save them as PNG, each with an
overlay of the mask on the slide's thumbnail to check it by eye."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from gigastream.cli import common
from gigastream.wsi.reader import SlideError, SlideReader
from gigastream.wsi.tissue import TissueMaskConfig, compute_tissue_mask

logger = logging.getLogger(__name__)

COMMAND = ("tissue",)
HELP = (
    "compute tissue masks (Otsu on saturation) and save them as PNG, with an overlay of each "
    "mask outlined on the slide's thumbnail; report slides without tissue"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TissueMaskConfig()
    common.add_slides(parser, manifest=True)
    common.add_out(
        parser,
        "folder for <slide>.tissue.png (the mask: tissue white) and <slide>_overlay.png (the "
        "slide's thumbnail with the tissue outlined in cyan)",
    )
    parser.add_argument("--mpp", type=float, default=defaults.mpp, help="mask resolution (um/px)")
    common.add_slide_mpp(parser)
    parser.add_argument(
        "--min-tissue-fraction",
        type=float,
        default=defaults.min_tissue_fraction,
        help="below this fraction of the slide area a slide has no tissue",
    )
    parser.add_argument(
        "--geojson",
        action="store_true",
        help="also write <slide>.tissue.geojson: the tissue contours as a QuPath annotation "
        "(level-0 pixel coordinates; File > Import objects in QuPath)",
    )


def run(args: argparse.Namespace) -> int:
    from gigastream.viz.tissue import tissue_overlay_png

    common.check_slide_mpp(args.slide_mpp)
    config = TissueMaskConfig(mpp=args.mpp, min_tissue_fraction=args.min_tissue_fraction)
    args.out.mkdir(parents=True, exist_ok=True)
    empty = failed = 0
    slides = common.slide_list(args)
    mpps = _manifest_mpps(args.manifest, slides) if args.manifest else {}
    for path in slides:
        try:
            with SlideReader.open(
                path, mpp=mpps.get(path.resolve()), default_mpp=args.slide_mpp
            ) as slide:
                slide_mpp = slide.mpp
                mask = compute_tissue_mask(slide, config)
                overlay = tissue_overlay_png(slide, mask, args.out / f"{path.stem}_overlay.png")
                geojson = None
                if args.geojson:
                    from gigastream.wsi.annotation_geojson import mask_to_geojson, write_geojson

                    contours = mask_to_geojson(mask, "Tissue", slide=slide)
                    geojson = write_geojson(contours, args.out / f"{path.stem}.tissue.geojson")
        except SlideError as exc:
            print(f"error: {exc}")
            failed += 1
            continue
        target = mask.save(args.out / f"{path.stem}.tissue.png")
        flag = "NO TISSUE" if mask.is_empty(config.min_tissue_fraction) else "ok"
        empty += flag != "ok"
        print(
            f"{path}: tissue {mask.tissue_fraction:.1%} [{flag}] -> {target}, overlay {overlay}"
            + (f", contours {geojson}" if geojson is not None else "")
            + f" (slide at {slide_mpp:g} um/px)"
        )
    return 1 if failed or empty == len(slides) else 0


def _manifest_mpps(manifest: Path, slides: list[Path]) -> dict[Path, float]:
    """The manifest's mpp column for the slides it lists (by resolved path)."""
    from gigastream.wsi.manifest import read_manifest

    wanted = {s.resolve() for s in slides}
    return {
        Path(row.path).resolve(): row.mpp
        for row in read_manifest(manifest).rows
        if row.mpp is not None and Path(row.path).resolve() in wanted
    }
