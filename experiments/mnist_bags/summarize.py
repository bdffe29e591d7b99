"""Summarise experiments/mnist_bags/results/*.json into Markdown tables and peak_memory.png.

Usage (from the repository root): python experiments/mnist_bags/summarize.py [--results DIR]
Prints the Markdown for README.md and writes experiments/mnist_bags/peak_memory.png (for
another results folder, DIR/peak_memory.png).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = (HERE / "results").resolve()
STRATEGIES = ("baseline", "accumulate", "sample")


def _load(prefix: str) -> dict[tuple[str, int], list[dict]]:
    """Runs named ``{prefix}_{strategy}_n{N}_...json``, grouped by (strategy, N)."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for path in sorted(RESULTS.glob(f"{prefix}_*.json")):
        match = re.match(rf"{prefix}_([a-z-]+)_n(\d+)", path.stem)
        if match:
            groups[(match[1], int(match[2]))].append(json.loads(path.read_text()))
    return groups


def _mean_sd(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _extra(run: dict) -> float:
    return run["train_peak_rss_mib"] - run["setup_rss_mib"]


def table() -> list[str]:
    groups = _load("table")
    lines = [
        "| strategy | bag size N | seeds | test AUC (mean ± sd) | train time (s) | s / bag "
        "| peak RSS (MiB) | training peak above start (MiB) |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for n in sorted({n for _, n in groups}):
        for strategy in STRATEGIES:
            runs = groups.get((strategy, n))
            if not runs:
                continue
            cells = [strategy, f"{n:,}", str(len(runs)), _mean_sd([r["test_auc"] for r in runs])]
            for key, digits in (("train_seconds", 1), ("seconds_per_bag", 3), ("peak_rss_mib", 0)):
                cells.append(f"{statistics.mean(r[key] for r in runs):.{digits}f}")
            cells.append(f"{statistics.mean(_extra(r) for r in runs):.0f}")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def flat() -> list[str]:
    groups = _load("flat")
    lines = [
        "| strategy | bag size N | peak RSS (MiB) | RSS at start of training (MiB) "
        "| training peak above start (MiB) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for (strategy, n), runs in sorted(groups.items()):
        r = runs[0]
        lines.append(
            f"| {strategy} | {n:,} | {r['peak_rss_mib']:.0f} | {r['setup_rss_mib']:.0f} "
            f"| {_extra(r):.0f} |"
        )
    for strategy in ("accumulate", "baseline"):
        small, large = groups.get((strategy, 100)), groups.get((strategy, 10000))
        if small and large:
            lines.append("")
            lines.append(
                f"{strategy}, N = 10,000 vs 100: peak RSS x"
                f"{large[0]['peak_rss_mib'] / small[0]['peak_rss_mib']:.3f}, training peak above "
                f"start {_extra(small[0]):.0f} -> {_extra(large[0]):.0f} MiB."
            )
    return lines


def timing() -> list[str]:
    groups = _load("timing")
    lines = [
        "| strategy | bag size N | repeats | s / bag (mean ± sd) | x baseline |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for n in sorted({n for _, n in groups}):
        base = (
            statistics.mean(r["seconds_per_bag"] for r in groups.get(("baseline", n), []))
            if groups.get(("baseline", n))
            else None
        )
        for strategy in ("baseline", "accumulate", "accumulate-budget"):
            runs = groups.get((strategy, n))
            if not runs:
                continue
            per_bag = [r["seconds_per_bag"] for r in runs]
            ratio = f"{statistics.mean(per_bag) / base:.2f}" if base else "-"
            lines.append(f"| {strategy} | {n:,} | {len(runs)} | {_mean_sd(per_bag)} | {ratio} |")
    return lines


def float64() -> list[str]:
    groups = _load("float64")
    base, acc = groups.get(("baseline", 500)), groups.get(("accumulate", 500))
    if not base or not acc:
        return []
    b, a = base[0], acc[0]
    pairs = list(zip(b["history"], a["history"], strict=True))
    diff = max(abs(x["train_loss"] - y["train_loss"]) for x, y in pairs)
    vdiff = max(abs(x["val_auc"] - y["val_auc"]) for x, y in pairs)
    return [
        f"float64, N = 500, seed 0: test AUC baseline {b['test_auc']:.4f}, accumulate "
        f"{a['test_auc']:.4f}; largest difference of the per-epoch mean training loss over "
        f"{len(b['history'])} epochs: {diff:.2e}; of the validation AUC: {vdiff:.2e}; "
        f"s / bag {b['seconds_per_bag']:.3f} vs {a['seconds_per_bag']:.3f}."
    ]


def plot() -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for prefix in ("table", "flat"):
        for (strategy, n), runs in _load(prefix).items():
            points[strategy][n].extend(runs)
    if not points:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for strategy in STRATEGIES:
        if strategy not in points:
            continue
        sizes = sorted(points[strategy])
        peak = [statistics.mean(r["peak_rss_mib"] for r in points[strategy][n]) for n in sizes]
        extra = [statistics.mean(_extra(r) for r in points[strategy][n]) for n in sizes]
        axes[0].plot(sizes, peak, "o-", label=strategy)
        axes[1].plot(sizes, extra, "o-", label=strategy)
    axes[0].set_title("peak RSS of the run (whole process)")
    axes[1].set_title("training peak above RSS at start of training")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("bag size N (instances)")
        ax.set_ylabel("MiB")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("MNIST bags, small_cnn + gated attention, chunk size 64, CPU, 1 thread")
    fig.tight_layout()
    out = HERE / "peak_memory.png" if RESULTS == HERE / "results" else RESULTS / "peak_memory.png"
    fig.savefig(out, dpi=120)
    return out


def main() -> None:
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of run JSON files")
    RESULTS = parser.parse_args().results.resolve()
    for title, lines in (
        ("Table", table()),
        ("Flat memory", flat()),
        ("Time per bag", timing()),
        ("float64 trajectory", float64()),
    ):
        print(f"### {title}\n")
        print("\n".join(lines) + "\n")
    out = plot()
    if out is not None:
        print(f"plot: {out}")


if __name__ == "__main__":
    main()
