"""``gigastream bench read``: region-read throughput per slide backend, as JSON."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from gigastream.cli import common
from gigastream.wsi.bench import ReadBenchConfig, benchmark_reads

logger = logging.getLogger(__name__)

COMMAND = ("bench", "read")
HELP = "measure region-read throughput (MP/s) per backend at level 0 and a lower level"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ReadBenchConfig()
    parser.add_argument("--slide", type=Path, required=True, help="slide file")
    common.add_out(parser, "JSON file (default: print only)", required=False)
    parser.add_argument(
        "--backends",
        nargs="+",
        default=list(defaults.backends),
        help=f"slide readers to time (default: {' '.join(defaults.backends)})",
    )
    parser.add_argument(
        "--region-size", type=int, default=defaults.region_size, help="region edge (px)"
    )
    parser.add_argument("--reads", type=int, default=defaults.reads, help="timed reads per level")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the reads")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=list(defaults.workers),
        help="threads reading at once; each count is timed (e.g. --workers 1 2)",
    )


def run(args: argparse.Namespace) -> int:
    config = ReadBenchConfig(
        backends=tuple(args.backends),
        region_size=args.region_size,
        reads=args.reads,
        seed=args.seed,
        workers=tuple(args.workers),
    )
    if min(config.workers) < 1:
        raise ValueError(f"--workers must be 1 or more threads, got {min(config.workers)}")
    report = benchmark_reads(args.slide, config)
    text = json.dumps(report, indent=1)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    for r in report["results"]:
        where = (
            f"level {r['level']}" if r["level"] is not None else f"{r['mpp']:.3g} um/px (resized)"
        )
        print(
            f"{r['backend']:>10} {where:<24} {r['workers']:>2} worker(s) "
            f"{r['megapixels_per_s']:8.1f} MP/s  {r['ms_per_read']:7.1f} ms/read"
        )
    for backend, error in report["failures"].items():
        print(f"{backend:>10} failed: {error}")
    return 0 if report["results"] else 1
