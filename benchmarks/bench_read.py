"""Region-read throughput of the slide backends on the given slides; JSON to --out.

Usage:
    python benchmarks/bench_read.py --out results/read.json SLIDE [SLIDE ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gigastream.wsi.bench import ReadBenchConfig, benchmark_reads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slides", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reads", type=int, default=50)
    args = parser.parse_args()
    reports = [benchmark_reads(p, ReadBenchConfig(reads=args.reads)) for p in args.slides]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(reports, indent=1) + "\n")
    for report in reports:
        for r in report["results"]:
            print(
                report["slide"].get("path"),
                r["backend"],
                r["level"],
                f"{r['megapixels_per_s']:.1f} MP/s",
            )


if __name__ == "__main__":
    main()
