"""How far float32 gradients are from float64 ones, conventional and streamed (issue 17).

``gigastream bench streaming`` reports ``max_rel_grad_error``: the worst parameter's
``max|g - g_conv| / max|g_conv|`` between a streamed float32 step and the conventional
float32 step. Both are float32: the number mixes streaming's rounding with the conventional
step's own. This script runs the same benchmark step (the bench's seeded trunk, image and
head) in float64 conventionally, as the reference, and then every float32 mode asked for,
each in a fresh process, and reports each mode's error against the float64 gradients and
against the float32 conventional ones.

Usage (from the repository root)::

    .venv/bin/python benchmarks/float32_floor.py --arch resnet34 --size 3072 --tile 1024 \\
        --plans default 1.5GiB --out benchmarks/results/float32-floor-resnet34-3072.json

``--plans``: ``default`` (the tile size's default plan) and/or memory budgets (``1.5GiB``),
each one streamed float32 mode; ``folded:default``, ``folded:1.5GiB``: the same with the
trunk's BatchNorm folded into its convolutions (``streaming-folded``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from gigastream.host_counters import cpu_model
from gigastream.streaming.benchmark import _rel_error, _run_mode_process


def _worker(mode: str, args: argparse.Namespace, precision: str, budget: str | None, grads: Path):
    return {
        "mode": mode,
        "arch": args.arch,
        "size": args.size,
        "seed": args.seed,
        "repeats": 1,
        "tile_size": args.tile,
        "memory_budget": budget,
        "grads_out": str(grads),
        "tune_allocator": False,
        "device": "cpu",
        "precision": precision,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet34")
    parser.add_argument("--size", type=int, default=3072)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plans", nargs="+", default=["default"])
    parser.add_argument("--out", type=Path, default=Path("float32-floor.json"))
    args = parser.parse_args(argv)
    runs = [("conventional", "64", None), ("conventional", "32", None)]
    for plan in args.plans:
        mode, _, budget = plan.rpartition(":") if ":" in plan else ("streaming", "", plan)
        mode = {"streaming": "streaming", "folded": "streaming-folded"}[mode]
        runs.append((mode, "32", None if budget == "default" else budget))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        grads = []
        for k, (mode, precision, budget) in enumerate(runs):
            path = Path(tmp) / f"{k}.pt"
            res = _run_mode_process(_worker(mode, args, precision, budget, path))
            if res.get("failed"):
                raise SystemExit(f"{mode} {precision} {budget} failed:\n{res['stderr']}")
            grads.append([g.double() for g in torch.load(path, weights_only=True)])
            row = {
                "mode": mode,
                "precision": precision,
                "memory_budget": budget,
                "seconds": res["seconds"],
                "peak_rss_mib": res["peak_rss_mib"],
            }
            if "plan" in res:
                row["plan"] = [
                    (s["names"][0], s["names"][-1], s["mode"], s["tiles"])
                    for s in res["plan"]["segments"]
                ]
            if k > 0:
                row["max_rel_grad_error_vs_float64"] = _rel_error(grads[k], grads[0])
            if k > 1:
                row["max_rel_grad_error_vs_float32_conventional"] = _rel_error(grads[k], grads[1])
            results.append(row)
            print(json.dumps(row), flush=True)
    record = {
        "arch": args.arch,
        "size": args.size,
        "tile": args.tile,
        "seed": args.seed,
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "runs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
