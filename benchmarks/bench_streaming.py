"""Streaming benchmark as a script: same as ``gigastream bench streaming`` (see its --help).

Example:
    python benchmarks/bench_streaming.py --arch resnet34 --size 3072 --tile 1024 --repeats 2 \
        --out benchmarks/results/streaming-3072.json
"""

import sys

from gigastream.streaming.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
