"""``gigastream bench mil``: time and peak memory of the bag strategies, each run in a fresh process."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from gigastream.mil.strategies import STRATEGIES
from gigastream.precision import PRECISIONS

COMMAND = ("bench", "mil")
HELP = "time and peak memory of baseline, accumulate, sample and frozen MIL training by bag size (JSON)"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _command_line() -> str | None:
    """This process's command line when it is the ``gigastream`` command (not a test)."""
    if Path(sys.argv[0]).name != "gigastream":
        return None
    return shlex.join(["gigastream", *sys.argv[1:]])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gigastream.models.bag_benchmark import DEFAULT_BAG_SIZES, DEFAULT_ENCODERS

    parser.add_argument(
        "--encoders",
        nargs="+",
        default=list(DEFAULT_ENCODERS),
        help="encoder names, random init: registered trunks (resnet18, ...), small_cnn, "
        f"timm:<model> (default: {' '.join(DEFAULT_ENCODERS)})",
    )
    parser.add_argument(
        "--strategies",
        nargs="+",
        choices=STRATEGIES,
        default=list(STRATEGIES),
        help=f"strategies to measure (default: {' '.join(STRATEGIES)})",
    )
    parser.add_argument(
        "--bag-sizes",
        nargs="+",
        type=_positive_int,
        default=list(DEFAULT_BAG_SIZES),
        help=f"patches per bag (default: {' '.join(map(str, DEFAULT_BAG_SIZES))})",
    )
    parser.add_argument("--patch-size", type=_positive_int, default=224, help="patch side, px")
    parser.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=64,
        help="patches per chunk (accumulate, frozen)",
    )
    parser.add_argument(
        "--sample-size", type=_positive_int, default=64, help="patches per step (sample)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="32",
        help="Lightning's name: 32 (default) or bf16-mixed (bf16 autocast); 16-mixed on CUDA",
    )
    parser.add_argument(
        "--repeats", type=_positive_int, default=3, help="timed steps per run (median reported)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per run (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument(
        "--threads", type=_positive_int, default=None, help="torch threads per worker process"
    )
    parser.add_argument(
        "--memory-limit",
        default=None,
        help="e.g. 8GiB: memory a run may take (default: 90%% of the free RAM, or of the GPU's "
        "free memory with --device cuda); runs estimated above it are skipped",
    )
    parser.add_argument(
        "--no-skip", action="store_true", help="run even what the estimate says does not fit"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds a worker may run (default: no limit)"
    )
    parser.add_argument(
        "--allocator",
        choices=("default", "tuned"),
        default="default",
        help="CPU workers' glibc allocator: default, or tuned (a fixed 128 KiB mmap threshold: "
        "freed buffers go back to the OS at once, so the peak RSS is that of live memory, not "
        "of what the heap kept; costs page faults) (default: default)",
    )
    parser.add_argument("--out", default="bench-mil.json", help="JSON file to write")
    parser.add_argument("--markdown", default=None, help="also write the markdown table here")


def run(args: argparse.Namespace) -> int:
    from gigastream.models.bag_benchmark import MILBenchConfig, run_mil_benchmark

    config = MILBenchConfig(
        encoders=tuple(args.encoders),
        strategies=tuple(args.strategies),
        bag_sizes=tuple(args.bag_sizes),
        patch_size=args.patch_size,
        chunk_size=args.chunk_size,
        sample_size=args.sample_size,
        device=args.device,
        precision=args.precision,
        repeats=args.repeats,
        warmup=args.warmup,
        seed=args.seed,
        threads=args.threads,
        memory_limit=args.memory_limit,
        skip_unfit=not args.no_skip,
        timeout_s=args.timeout,
        allocator=args.allocator,
        command=_command_line(),
    )
    result = run_mil_benchmark(config, out=args.out, markdown=args.markdown)
    print(result["markdown"], end="")
    print(f"written {args.out}" + (f" and {args.markdown}" if args.markdown else ""))
    return 0
