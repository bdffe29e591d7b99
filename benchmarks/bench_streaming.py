"""Streaming benchmark as a script: same as ``gigastream bench streaming`` (see its --help).

Example:
    python benchmarks/bench_streaming.py --arch resnet34 --size 3072 --tile 1024 --repeats 2 \
        --out benchmarks/results/streaming-3072.json
    python benchmarks/bench_streaming.py --device cuda --precision bf16-mixed --size 65536 --lazy
"""

import sys

from gigastream.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", "streaming", *sys.argv[1:]]))
