"""``gigastream bench step``: one whole training step read from a pyramidal slide file vs
from memory (read, compute, file step, hidden fraction, MP/s, peak RSS), as JSON."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from gigastream.cli import common

logger = logging.getLogger(__name__)

COMMAND = ("bench", "step")
HELP = (
    "time one training step (read tiles -> stream -> head -> loss -> backward -> SGD) from a "
    "pyramidal JPEG / JPEG 2000 slide file against the same step from memory"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gigastream.models.step_benchmark import BACKENDS, DEFAULT_SOURCES, MODES, StepBenchConfig
    from gigastream.precision import PRECISIONS
    from gigastream.wsi.pyramid import COMPRESSIONS

    d = StepBenchConfig()
    common.add_out(parser, "JSON file of the result (default: print the table only)", False)
    parser.add_argument(
        "--size", type=int, default=d.size, help=f"edge of the square slide, px (default: {d.size})"
    )
    parser.add_argument("--arch", default=d.arch, help=f"trunk (default: {d.arch})")
    parser.add_argument(
        "--tile-size",
        "--tile",
        dest="tile",
        type=int,
        default=d.tile_size,
        help=f"largest streamed tile, px, margins included (default: {d.tile_size})",
    )
    parser.add_argument(
        "--formats",
        nargs="+",
        default=list(d.formats),
        help=f"slide compressions to time, of {' '.join(COMPRESSIONS)} "
        f"(default: {' '.join(d.formats)})",
    )
    parser.add_argument(
        "--read-workers",
        type=int,
        nargs="+",
        default=list(d.read_workers),
        help=f"read threads; each count is timed (default: {' '.join(map(str, d.read_workers))})",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=d.repeats,
        help=f"timed steps per mode (default: {d.repeats})",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=d.warmup,
        help=f"untimed steps per mode before the timed ones (default: {d.warmup})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help="torch threads of each worker process (default: torch's own, one per core)",
    )
    parser.add_argument(
        "--input-cache",
        default=d.input_cache,
        help="bytes of decoded pixels kept from forward for the backward recompute, e.g. "
        f"2GiB; 0 decodes every tile again (default: {d.input_cache}, a quarter of free memory)",
    )
    parser.add_argument(
        "--input-spill",
        type=Path,
        metavar="DIR",
        help="keep what does not fit --input-cache in a memory-mapped file in DIR (unlinked "
        "at creation) instead of decoding it again in backward (default: decode again)",
    )
    parser.add_argument(
        "--fold-batchnorm",
        action="store_true",
        help="fold the frozen BatchNorms into the convolutions (default: off)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=d.backend,
        help="slide reader (default: auto = OpenSlide for JPEG, tiffslide for JPEG 2000, which "
        "OpenSlide cannot read)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="folder the slides are written to and kept in; a slide already there with the "
        "same size, format and seed is reused (default: a temporary folder, removed at the end)",
    )
    parser.add_argument(
        "--sources",
        type=Path,
        nargs="+",
        default=[DEFAULT_SOURCES],
        help="H&E images (files or folders) the slide's texture is cut from "
        "(default: ../shared/data/images beside the repository)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=list(d.modes),
        help="what to run: read (the first segment's decode alone), file (the step from the "
        "slide file), memory (the step from the slide's pixels in a tensor on the device; leave "
        f"it out where those do not fit, e.g. 65536^2 on a GPU) (default: {' '.join(d.modes)})",
    )
    parser.add_argument("--device", default=d.device, help="cpu (default) or cuda[:N]")
    parser.add_argument(
        "--precision",
        default=d.precision,
        help=f"Lightning precision of the step: {', '.join(PRECISIONS)} (default: {d.precision}; "
        "16-mixed needs CUDA)",
    )
    parser.add_argument(
        "--memory-budget",
        default=None,
        help="the streamed trunk's memory budget, e.g. 40GiB: the planner picks the tiles within "
        "it, --tile the largest (default: the plan of --tile alone)",
    )
    parser.add_argument(
        "--host-memory-budget",
        default=None,
        help="host memory the offloaded feature maps may take on CUDA, e.g. 100GiB (default: "
        "the machine's available memory)",
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="run the tiles in channels_last"
    )
    parser.add_argument(
        "--cudnn-benchmark",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cuDNN autotuning on CUDA (default: on for mixed/half precision, off for fp32)",
    )
    parser.add_argument(
        "--read-bands",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with several --read-workers, decode a region of a megapixel or more in bands on "
        "the file's tile rows by every reader at once (default: on; --no-read-bands: one "
        "reader per region)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help=f"seed of the slide and the model (default: {d.seed})",
    )


def run(args: argparse.Namespace) -> int:
    from gigastream.models.step_benchmark import (
        StepBenchConfig,
        format_table,
        run_step_benchmark,
    )

    config = StepBenchConfig(
        size=args.size,
        arch=args.arch,
        tile_size=args.tile,
        formats=tuple(args.formats),
        read_workers=tuple(args.read_workers),
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
        input_cache=str(args.input_cache),
        fold_batchnorm=args.fold_batchnorm,
        input_spill=args.input_spill,
        backend=args.backend,
        work_dir=args.work_dir,
        sources=tuple(args.sources),
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        memory_budget=args.memory_budget,
        host_memory_budget=args.host_memory_budget,
        channels_last=args.channels_last,
        cudnn_benchmark=args.cudnn_benchmark,
        modes=tuple(args.modes),
        read_bands=args.read_bands,
    )
    config.validate()  # every argument, before any work
    result = run_step_benchmark(config, out=args.out)
    print(format_table(result))
    machine = result["machine"]
    print(
        f"{config.arch}, {config.size}^2 px, tile {config.tile_size}, {config.precision} on "
        f"{machine['device_name']}, {machine['threads']} "
        f"thread(s); load {machine['load_average_before']:.2f} -> "
        f"{machine['load_average_after']:.2f}"
    )
    if args.out is None:
        logger.info("%s", json.dumps(result["rows"], indent=1))
    return 0 if all(r["status"] == "ok" for r in result["rows"]) else 1
