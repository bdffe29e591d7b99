"""Where the time of exact gradient accumulation goes, for the MNIST-bags encoder on CPU.

Measures, for one bag of N uint8 MNIST-sized images, the median over repeats of one step of
:class:`~gigastream.models.patch_mil.PatchMIL` with the 1-channel ``small_cnn`` of
``experiments/mnist_bags`` (the model the training engine runs there: forward with the
label, loss, backward):
- ``forward_nograd``: the model in eval mode (encoder over the bag in chunks, no graph);
- ``forward_backward``: the ``baseline`` strategy (whole-bag forward + backward);
- ``chunked``: the ``accumulate`` strategy (ChunkedEncoder, every chunk recomputed), and
  ``chunked_budget`` with a memory budget that keeps some chunk graphs.

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_mil_chunked.py --out bench_mil_chunked.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gigastream.models.encoders import EncoderConfig
from gigastream.models.patch_mil import PatchConfig, PatchMIL

#: the MNIST-bags experiment's digit encoder (experiments/mnist_bags/config.yaml)
DIGITS = EncoderConfig(
    "small_cnn",
    normalize="none",
    mean=[0.1307],
    std=[0.3081],
    options={"in_channels": 1, "image_size": 28, "out_dim": 64, "width": 8},
)


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(bag_size: int, chunk_size: int, budget_mib: float, repeats: int) -> dict:
    bag = torch.randint(0, 256, (bag_size, 1, 28, 28), dtype=torch.uint8)

    def model(strategy: str, budget: float | None = None) -> PatchMIL:
        torch.manual_seed(0)  # the same weights for every strategy
        config = PatchConfig(DIGITS, 28, 0.0, strategy, chunk_size, 64, budget)
        return PatchMIL(config, "gated_abmil", 2, {"attn_dim": 64})

    def step(bags: PatchMIL) -> None:
        bags.loss(bags(bag, label=1), 1).backward()

    def nograd() -> None:
        with torch.no_grad():
            evaluate(bag)

    evaluate = model("baseline").eval()
    baseline, chunked, budget = (
        model("baseline"),
        model("accumulate"),
        model("accumulate", budget_mib),
    )
    result = {
        "bag_size": bag_size,
        "chunk_size": chunk_size,
        "budget_mib": budget_mib,
        "forward_nograd": _median_seconds(nograd, repeats),
        "forward_backward": _median_seconds(lambda: step(baseline.train()), repeats),
        "chunked": _median_seconds(lambda: step(chunked.train()), repeats),
        "chunked_budget": _median_seconds(lambda: step(budget.train()), repeats),
    }
    result["chunked_vs_baseline"] = result["chunked"] / result["forward_backward"]
    result["chunked_budget_vs_baseline"] = result["chunked_budget"] / result["forward_backward"]
    result["forward_share_of_baseline"] = result["forward_nograd"] / result["forward_backward"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bag-sizes", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--budget-mib", type=float, default=64.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = [measure(n, args.chunk_size, args.budget_mib, args.repeats) for n in args.bag_sizes]
    text = json.dumps(
        {"threads": torch.get_num_threads(), "torch": torch.__version__, "results": results},
        indent=2,
    )
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
