"""Streaming from a real pyramidal slide file: tiles read ahead on a thread vs in line.

Writes one synthetic pyramidal H&E slide (``gigastream synth``'s generator, tissue cut from
``../shared/data/images``), opens it with the slide reader as a lazy ``SlideSource`` at its
native 0.5 um/px, and times forward + backward of a streamed torchvision trunk (random init,
eval BatchNorm, global average pool + sum as the loss) with the tiles read on a background
thread ahead of their use (``read_ahead=True``, the default for slides) and read in line
(``read_ahead=False``), alternating the two. Also times reading every tile of the first
segment alone. Everything in this one process; JSON out.

Example:
    python benchmarks/bench_lazy_read.py --size 4096 --arch resnet18 --tile 1024 \
        --out benchmarks/results/lazy-read-4096.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from gigastream.streaming import StreamingModule
from gigastream.streaming.geometry import Geometry
from gigastream.streaming.planner import make_pieces
from gigastream.wsi.reader import SlideReader
from gigastream.wsi.source import SlideSource
from gigastream.wsi.synth import SynthConfig, synthesize_dataset

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "images"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode (alternating)")
    parser.add_argument("--sources", default=str(DATA))
    parser.add_argument("--out", default="bench-lazy-read.json")
    args = parser.parse_args(argv)
    net = getattr(torchvision.models, args.arch)(weights=None)
    trunk = torch.nn.Sequential(*list(net.children())[:-2]).eval()
    streamed = StreamingModule(trunk, tile_size=args.tile)
    with tempfile.TemporaryDirectory() as tmp:
        config = SynthConfig(slides=1, size=args.size, positive_fraction=1.0, seed=0)
        manifest = synthesize_dataset(tmp, config, [args.sources], progress=False)
        slide_path = next((Path(manifest).parent / "slides").glob("*.tif"))
        times: dict[str, list[float]] = {"ahead": [], "in_line": []}
        with SlideReader.open(slide_path) as reader:
            source = SlideSource(reader, mpp=reader.require_mpp())
            plan = streamed.plan(tuple(source.shape), lazy_input=True)
            first = plan.segments[0]
            geometry = Geometry.chain(*streamed._geometries[first.span[0] : first.span[1]])
            pieces = make_pieces(geometry, first.in_shape[-2:], first.out_shape[-2:], first.tiles)
            t0 = time.perf_counter()
            for piece in pieces:
                source.read(piece.in_index)
            read_seconds = time.perf_counter() - t0
            for _ in range(args.repeats):
                for mode in ("in_line", "ahead"):
                    source.read_ahead = mode == "ahead"
                    trunk.zero_grad(set_to_none=True)
                    t0 = time.perf_counter()
                    streamed(source).mean().backward()
                    times[mode].append(time.perf_counter() - t0)
    result = {
        "config": {
            "size": args.size,
            "arch": args.arch,
            "tile": args.tile,
            "repeats": args.repeats,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        "plan": str(plan),
        "first_segment_tiles": len(pieces),
        "read_first_segment_seconds": read_seconds,
        "seconds": times,
        "seconds_median": {m: statistics.median(v) for m, v in times.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("read_first_segment_seconds", "seconds_median")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
