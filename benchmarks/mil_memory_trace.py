"""Where ``accumulate``'s peak memory goes as a bag grows: a per-chunk trace (issue 14).

``gigastream bench mil`` reports each run's peak RSS. This script shows what is behind the
growth of that peak with the bag. For each bag size, in a fresh process, it runs one
``accumulate`` training step of the benchmark's encoder and ``abmil`` head. It records
the resident set:

- after the bag is made;
- after the forward pass;
- at every recomputed chunk of the backward pass (current and peak);
- after the backward pass;
- after ``malloc_trim`` hands the heap's free memory back (what live tensors hold).

``--trim-each-chunk`` also trims before every recomputed chunk (is the growth free heap?).
``--allocator tuned`` fixes glibc's mmap threshold first
(:func:`~gigastream.streaming.memory.tune_cpu_allocator`, as ``gigastream bench mil
--allocator tuned``), so freed buffers leave the resident set at once. Each chunk's entry also
says how many MiB of parameter gradients existed when its recompute ended (``grads_mib``:
0 for the first chunk of the backward pass, whose gradients are created during it).

Usage (from the repository root)::

    .venv/bin/python benchmarks/mil_memory_trace.py --encoder resnet18 --patch-size 64 \\
        --bag-sizes 100 2000 --out benchmarks/results/mil-memory-trace-resnet18-64.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def trace(
    encoder: str,
    patch_size: int,
    bag_size: int,
    chunk_size: int,
    threads: int,
    trim: bool,
    allocator: str = "default",
) -> dict:
    """One ``accumulate`` step in this process; resident-set figures in MiB above the RSS
    just before the bag was made."""
    import torch

    from gigastream.mil.heads import create_mil_head
    from gigastream.mil.strategies import BagClassifier, StrategyConfig
    from gigastream.models.bag_bench_worker import HEAD, build_bench_encoder
    from gigastream.streaming.memory import (
        current_rss_mib,
        high_water_rss_mib,
        release_free_memory,
        reset_peak_rss,
        tune_cpu_allocator,
    )

    tuned = allocator == "tuned" and tune_cpu_allocator()
    torch.set_num_threads(threads)
    enc = build_bench_encoder(encoder, patch_size, 0)
    head = create_mil_head(HEAD, enc.out_dim, 2)
    model = BagClassifier(enc, head, StrategyConfig("accumulate", chunk_size=chunk_size)).train()
    reset_peak_rss()
    base = current_rss_mib()

    def now() -> dict:
        return {
            "current": round(current_rss_mib() - base, 1),
            "peak": round(high_water_rss_mib() - base, 1),
        }

    gen = torch.Generator().manual_seed(1)
    shape = (bag_size, 3, patch_size, patch_size)
    bag = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    result: dict = {"bag_size": bag_size, "bag_mib": round(bag.numel() / 2**20, 1)}
    result["allocator_tuned"] = tuned
    result["after_bag"] = now()
    chunks: list[dict] = []

    def hook(module, inputs, output) -> None:
        if torch.is_grad_enabled():  # a recompute in backward (the forward runs without a graph)
            if trim:
                release_free_memory()
            chunks.append(now())

    start = time.perf_counter()
    out = model(bag, label=1)
    loss = model.loss(out, 1)
    result["after_forward"] = now()
    handle = enc.register_forward_hook(hook)
    loss.backward()
    handle.remove()
    result["backward_chunks"] = chunks
    result["after_backward"] = now()
    result["seconds"] = round(time.perf_counter() - start, 2)
    release_free_memory()
    result["after_trim"] = now()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--bag-sizes", type=int, nargs="+", default=[100, 2000])
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trim-each-chunk", action="store_true")
    parser.add_argument("--allocator", choices=("default", "tuned"), default="default")
    parser.add_argument("--out", type=Path, default=Path("mil-memory-trace.json"))
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # one bag size, this process
    args = parser.parse_args(argv)
    if args.worker is not None:
        row = trace(
            args.encoder,
            args.patch_size,
            args.worker,
            args.chunk_size,
            args.threads,
            args.trim_each_chunk,
            args.allocator,
        )
        print(json.dumps(row))
        return 0
    rows = []
    for n in args.bag_sizes:  # each in a fresh process: its peak is its own
        command = [sys.executable, __file__, "--worker", str(n)]
        command += ["--encoder", args.encoder, "--patch-size", str(args.patch_size)]
        command += ["--chunk-size", str(args.chunk_size), "--threads", str(args.threads)]
        command += ["--trim-each-chunk"] if args.trim_each_chunk else []
        command += ["--allocator", args.allocator]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        peaks = [c["peak"] for c in row["backward_chunks"]]
        print(
            f"{n} patches ({len(peaks)} chunks): peak after forward {row['after_forward']['peak']}"
            f" MiB; backward peak at chunks 1, 5, last: {peaks[0]}, "
            f"{peaks[min(4, len(peaks) - 1)]}, {peaks[-1]} MiB; after trim "
            f"{row['after_trim']['current']} MiB (bag {row['bag_mib']} MiB); "
            f"{row['seconds']} s"
        )
    from gigastream.host_counters import cpu_model

    settings = {k: v for k, v in vars(args).items() if k not in ("out", "worker")}
    record = {"settings": settings, "cpu": cpu_model(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
