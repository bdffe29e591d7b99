"""Peak memory of streaming a whole slide from a lazy SlideSource, for two slide sizes.

Each slide is streamed (forward and backward) through a small stride-32 trunk with
``StreamingModule`` reading tiles on demand from a :class:`gigastream.wsi.source.SlideSource`,
in a fresh subprocess per slide so that peak RSS (``ru_maxrss``) is per run. The claim
checked: the peak does not grow with the slide apart from the output feature map, e.g.
the peak for a 32768^2 slide is within 10% of the peak for an 8192^2 slide.

Usage:
    python benchmarks/bench_source_memory.py --slides SMALL.tif LARGE.tif --mpp 1.0 \\
        --out results/source_memory.json
    python benchmarks/bench_source_memory.py --sizes 8192 32768 --workdir /tmp/synth \\
        --out results/source_memory.json       # writes synthetic slides first
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from gigastream.streaming.memory import peak_rss_mib


def trunk_and_head():
    """A small trunk of output stride 32 (5 stride-2 convolutions) and a linear head."""
    from torch import nn

    channels = [3, 8, 8, 16, 16, 4]
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU()]
    return nn.Sequential(*layers[:-1]), nn.Linear(channels[-1], 1)


def child(slide_path: str, mpp: float, tile_size: int, backend: str) -> dict:
    """Stream one slide forward and backward; report peak RSS before and after."""
    import torch

    from gigastream.streaming.module import StreamingModule
    from gigastream.wsi.reader import SlideReader
    from gigastream.wsi.source import IMAGENET, SlideSource

    torch.manual_seed(0)
    torch.set_num_threads(1)
    trunk, head = trunk_and_head()
    streamed = StreamingModule(trunk, tile_size=tile_size, segments="none")
    slide = SlideReader.open(slide_path, backend=backend)
    source = SlideSource(slide, mpp=mpp, normalize=IMAGENET)
    rss_setup = peak_rss_mib()
    start = time.perf_counter()
    fmap = streamed(source)  # (1, 4, H/32, W/32)
    logit = head(fmap.mean(dim=(2, 3)))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
    loss.backward()
    seconds = time.perf_counter() - start
    plan = streamed.last_plan
    return {
        "slide": slide_path,
        "input_shape": list(source.shape),
        "feature_map_shape": list(fmap.shape),
        "feature_map_mib": fmap.numel() * fmap.element_size() / 2**20,
        "tile_size": tile_size,
        "tiles": [list(s.tiles) for s in plan.segments] if plan is not None else None,
        "reads": source.reads,
        "seconds": seconds,
        "peak_rss_mib_after_setup": rss_setup,
        "peak_rss_mib": peak_rss_mib(),
        "loss": float(loss.detach()),
    }


def _synth(size: int, workdir: Path) -> Path:
    from gigastream.wsi.synth import SynthConfig, synthesize_dataset

    out = workdir / f"synth{size}"
    slide = out / "slides" / "synth_000.tif"
    if not slide.exists():
        synthesize_dataset(
            out,
            SynthConfig(slides=1, size=size, positive_fraction=1.0, seed=size),
            ["../shared/data/images", "../shared/data/slides"],
        )
    return slide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=Path, nargs="+", help="slides to stream (small first)")
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[8192, 32768],
        help="without --slides: write synthetic slides of these sizes",
    )
    parser.add_argument("--workdir", type=Path, default=Path("bench-synth"))
    parser.add_argument("--mpp", type=float, default=None, help="target mpp (default: level 0)")
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--backend", default="tiffslide")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child is not None:
        print(json.dumps(child(args.child, args.mpp, args.tile_size, args.backend)))
        return

    slides = args.slides or [_synth(size, args.workdir) for size in args.sizes]
    runs = []
    for slide in slides:
        mpp = args.mpp
        if mpp is None:
            from gigastream.wsi.reader import SlideReader

            with SlideReader.open(slide) as reader:
                mpp = reader.require_mpp()
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(slide),
            "--mpp",
            str(mpp),
            "--tile-size",
            str(args.tile_size),
            "--backend",
            args.backend,
            "--out",
            "-",
        ]
        result = subprocess.run(cmd, check=True, capture_output=True, text=True)
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]))
    small, large = runs[0], runs[-1]
    report = {
        "runs": runs,
        "pixels_ratio": (large["input_shape"][2] * large["input_shape"][3])
        / (small["input_shape"][2] * small["input_shape"][3]),
        "peak_ratio": large["peak_rss_mib"] / small["peak_rss_mib"],
        "peak_increase_mib": large["peak_rss_mib"] - small["peak_rss_mib"],
        "feature_map_increase_mib": large["feature_map_mib"] - small["feature_map_mib"],
        "within_10_percent": large["peak_rss_mib"] <= 1.10 * small["peak_rss_mib"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
