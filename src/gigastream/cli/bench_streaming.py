"""``gigastream bench streaming``: conventional vs checkpoint vs streaming, each in a fresh process."""

from __future__ import annotations

import argparse
import json

from gigastream.precision import PRECISIONS

COMMAND = ("bench", "streaming")
HELP = "time and peak memory of conventional, checkpointed and streamed trunk training (JSON)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--arch", default="resnet34", help="torchvision architecture (default resnet34)"
    )
    parser.add_argument("--size", type=int, default=3072, help="square image side in pixels")
    parser.add_argument(
        "--tile-size",
        "--tile",
        dest="tile",
        type=int,
        default=None,
        help="largest tile in pixels, as train's --tile-size (--tile: the same flag)",
    )
    parser.add_argument(
        "--memory-budget", default=None, help="e.g. 2GiB; the planner picks the plan"
    )
    parser.add_argument(
        "--host-memory-budget",
        default=None,
        help="e.g. 64GiB: host memory for offloaded maps (default: what is available)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="forward+backward runs per mode")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument(
        "--modes",
        default="conventional,checkpoint,streaming",
        help="comma-separated subset of modes",
    )
    parser.add_argument("--out", default="bench-streaming.json", help="JSON file to write")
    parser.add_argument(
        "--allocator",
        choices=["auto", "tuned", "default"],
        default="auto",
        help="glibc mmap threshold in every mode: tuned (128 KiB), default (dynamic), or auto "
        "(tuned when the conventional run would need > 16 GiB, as StreamingModule does)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="32",
        help="Lightning's name: 32 (default), 64, bf16-mixed (bf16 autocast) or 16-mixed "
        "(float16 autocast, CUDA only)",
    )
    parser.add_argument(
        "--tf32",
        action="store_true",
        help="TF32 tensor-core convolutions and matmuls in every mode (CUDA only; default off)",
    )
    parser.add_argument(
        "--lazy",
        action="store_true",
        default=None,
        help="stream from a procedural image generated tile by tile (default: only when the "
        "conventional estimate does not fit; up to --size 65536 and beyond)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed runs per mode before the timed ones (default: 1 on CUDA, 0 on CPU)",
    )
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="trunk and input (tiles) in torch.channels_last, in every mode",
    )
    parser.add_argument(
        "--cudnn-benchmark",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cuDNN autotuning in every mode (default: on with --device cuda)",
    )
    parser.add_argument(
        "--profile",
        default=None,
        help="write a torch.profiler table of one extra step per mode to PROFILE-<mode>.txt",
    )
    parser.add_argument(
        "--no-skip",
        action="store_true",
        help="run a mode even when its (upper-bound) memory estimate does not fit",
    )
    parser.add_argument(
        "--release-memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="streaming returns free heap memory to the OS after each segment (default: on "
        "for CPU, StreamingModule's release_memory='auto')",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from gigastream.streaming.benchmark import MODES, check_precision, run_benchmark

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown mode(s) {bad}; choose from {list(MODES)}")
    if args.warmup is not None and args.warmup < 0:
        raise ValueError(f"--warmup must be 0 or more, got {args.warmup}")
    if args.size < 1:
        raise ValueError(f"--size must be a positive number of pixels, got {args.size}")
    check_precision(args.precision, args.tf32, torch.device(args.device))
    result = run_benchmark(
        args.arch,
        args.size,
        args.tile,
        args.memory_budget,
        args.repeats,
        args.seed,
        modes,
        args.out,
        tune_allocator={"auto": None, "tuned": True, "default": False}[args.allocator],
        device=args.device,
        precision=args.precision,
        tf32=args.tf32,
        lazy=args.lazy,
        warmup=args.warmup,
        channels_last=args.channels_last,
        cudnn_benchmark=args.cudnn_benchmark,
        profile=args.profile,
        host_memory_budget=args.host_memory_budget,
        skip_unfit=not args.no_skip,
        release_memory=args.release_memory,
    )
    print(result["plan_text"])
    print(json.dumps(result["modes"], indent=2))
    print(f"written {args.out}")
    return 0
