"""Checks of the demo's synthetic slides: lesion share of tissue, and that the lesion pattern
averages away at 8x downsampling (renders each slide with and without the lesion pattern,
same seed, and compares them after area-averaging by 1, 2 and 8, or ``--factors``).

Example (``--sources``: the real H&E images and slides the synthetic tissue is cut from):
    python experiments/demo_recipe/check_synth.py --sources ../shared/data/images \
        ../shared/data/slides --slides 16 --size 1024 --lesion-size 160
    python experiments/demo_recipe/check_synth.py --sources ../shared/data/images \
        ../shared/data/slides --factors 2 4 8 16  # 1, 2, 4, 8 um/px
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
from scipy import ndimage

from gigastream.wsi.synth import SlideRenderer, SynthConfig, build_texture_bank, find_sources


def render(config: SynthConfig, bank: np.ndarray, index: int) -> tuple[np.ndarray, SlideRenderer]:
    renderer = SlideRenderer(config, bank, index, positive=True)
    return np.concatenate(list(renderer.strips())).astype(np.float32), renderer


def shrink(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = (s // factor * factor for s in image.shape[:2])
    return image[:h, :w].reshape(h // factor, factor, w // factor, factor, 3).mean(axis=(1, 3))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sources",
        nargs="+",
        required=True,
        metavar="PATH",
        help="folders or files of real H&E images/slides to cut tissue from (as gigastream synth)",
    )
    p.add_argument("--slides", type=int, default=8)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--lesion-size", type=int, default=160)
    p.add_argument("--max-lesions", type=int, default=3)
    p.add_argument("--contrast", type=float, default=0.6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--period", type=float, default=7.0)
    p.add_argument(
        "--factors", type=int, nargs="+", default=[1, 2, 8], help="area-averaging factors"
    )
    args = p.parse_args()
    config = SynthConfig(
        slides=args.slides,
        size=args.size,
        lesion_size=args.lesion_size,
        max_lesions=args.max_lesions,
        lesion_contrast=args.contrast,
        block_size=256,
        feather=64,
        seed=args.seed,
        nucleus_period=args.period,
    )
    bank = build_texture_bank(find_sources(args.sources), config)
    flat = dataclasses.replace(config, lesion_contrast=0.0)
    fractions: list[float] = []
    diffs: dict[int, list[float]] = {f: [] for f in args.factors}
    texture: dict[int, list[float]] = {f: [] for f in args.factors}
    for index in range(args.slides):
        with_lesions, renderer = render(config, bank, index)
        without, _ = render(flat, bank, index)
        tissue = renderer.field > 0.5
        yy, xx = np.mgrid[0 : args.size, 0 : args.size]
        lesion = np.zeros((args.size, args.size), bool)
        for les in renderer.lesions:
            lesion |= np.hypot(yy - les.y, xx - les.x) <= les.radius
        fractions.append(lesion.sum() / (tissue.mean() * args.size**2))
        for f in diffs:
            a, b = shrink(with_lesions, f), shrink(without, f)
            m = shrink(np.repeat(lesion[..., None], 3, 2).astype(np.float32), f)[..., 0] > 0.99
            diffs[f].append(float(np.abs(a - b)[m].mean()))
            # natural texture: mean |pixel - 3x3 local mean| on tissue, without lesions
            g = b.mean(axis=2)
            local = np.abs(g - ndimage.uniform_filter(g, 3))
            texture[f].append(float(local[m].mean()))
    out = {
        "config": dataclasses.asdict(config),
        "lesion_fraction_of_tissue": {
            "mean": float(np.mean(fractions)),
            "max": float(np.max(fractions)),
        },
        "mean_abs_change_in_lesion_by_downsample": {f: float(np.mean(v)) for f, v in diffs.items()},
        "texture_local_variation_same_pixels": {f: float(np.mean(v)) for f, v in texture.items()},
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
