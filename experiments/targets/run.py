"""Beyond two classes (issue 18): a regression target and a three-class task, trained with
``gigastream train`` and tested with ``gigastream evaluate`` on held-out synthetic slides.

1. **Regression, and its resolution effect.** 96 slides labelled with their lesion burden
   (``gigastream synth --target lesion_area``: the percentage of the tissue that 1-8
   lesions cover, at most 30%; 0 on the half of the slides without lesions),
   ``--task regression`` with the recipe of ``regression.yaml`` (a ``fraction`` head and the
   top-k recipe's instance and presence losses), trained at 1 um/px (the lesions' nuclear
   pattern is visible) and at 8 um/px (it averages away).
2. **Multi-class.** 96 slides labelled ``negative``, ``subtype_a`` or ``subtype_b``
   (``--target subtype``: the two subtypes' nuclear patterns differ in scale by 1.6x),
   trained with the default top-k recipe and with the multi-branch CLAM head
   (``clam_mb``); macro one-vs-rest AUC and the confusion matrix of the test slides.

Each dataset is split 3:1:2 into train/val/test (stratified: by value quantile, or by
class). Every run is a fresh ``gigastream train`` process; its test metrics are
``gigastream evaluate --split test``'s ``metrics.json``.

Usage (from the repository root)::

    .venv/bin/python experiments/targets/run.py --out out/targets --results experiments/targets
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from gigastream.cli.common import find_shared_data
from gigastream.train.selection import target_strata
from gigastream.wsi.manifest import Manifest, read_manifest, stratified_folds, write_manifest
from gigastream.wsi.synth import SynthConfig, synthesize_dataset

SYNTH = {"size": 1024, "lesion_size": 160, "block_size": 256, "feather": 64}
DATASETS = {
    "regression": SynthConfig(
        target="lesion_area",
        positive_fraction=0.5,
        max_lesions=8,
        max_lesion_fraction=0.3,
        **SYNTH,
    ),
    "multiclass": SynthConfig(target="subtype", positive_fraction=2 / 3, **SYNTH),
    # other slides (seed 1) with lesions of subtype_a only, labelled negative/positive: a
    # trunk trained on it has never been told that there are subtypes
    "binary": SynthConfig(target="class", positive_fraction=0.5, seed=1, **SYNTH),
}
#: A flag value ``BEST + run`` stands for the best checkpoint of that run (same seed).
BEST = "best-checkpoint-of:"
#: run name -> (dataset, extra flags of gigastream train)
HERE = Path(__file__).resolve().parent
REGRESSION = ["--config", str(HERE / "regression.yaml")]
RUNS = {
    "regression_1um": ("regression", [*REGRESSION, "--mpp", "1"]),
    "regression_8um": ("regression", [*REGRESSION, "--mpp", "8"]),
    "regression_1um_48ep": ("regression", [*REGRESSION, "--mpp", "1", "--epochs", "48"]),
    "regression_8um_48ep": ("regression", [*REGRESSION, "--mpp", "8", "--epochs", "48"]),
    "multiclass_clam_mb": ("multiclass", ["--head", "clam_mb", "--mpp", "1"]),
    "multiclass_topk": ("multiclass", ["--mpp", "1"]),
    "multiclass_clam_mb_dense": (
        "multiclass",
        ["--config", str(HERE / "clam_mb_dense.yaml"), "--mpp", "1"],
    ),
    "binary_topk": ("binary", ["--mpp", "1"]),
    "multiclass_clam_mb_warm": (
        "multiclass",
        ["--head", "clam_mb", "--mpp", "1", "--weights", BEST + "binary_topk"],
    ),
}


def resolved(flags: list[str], out: Path, seed: int) -> list[str]:
    """``flags`` with each ``BEST + run`` replaced by that run's best checkpoint (the run of
    the same seed; it must have finished: put it before in ``--runs``)."""
    paths = []
    for flag in flags:
        if flag.startswith(BEST):
            run = out / "runs" / f"{flag[len(BEST) :]}_seed{seed}"
            if not _finished(run):
                raise SystemExit(
                    f"{run}: not finished; run it first (--runs ... {flag[len(BEST) :]} ...)"
                )
            flag = str(run / json.loads((run / "metrics.json").read_text())["best_checkpoint"])
        paths.append(flag)
    return paths


def gigastream(*args: object) -> list[str]:
    """The command line of ``gigastream ARGS`` in this interpreter's environment."""
    exe = Path(sys.executable).parent / "gigastream"
    return [str(exe), *map(str, args)]


def dataset(name: str, out: Path, slides: int) -> Path:
    """The dataset ``name`` (synthesised once) with a 3:1:2 train/val/test split column."""
    split = out / name / "split_manifest.csv"
    if split.is_file():
        return split
    config = DATASETS[name]
    config.slides = slides
    manifest = synthesize_dataset(out / name, config, find_shared_data("images", "slides"))
    rows = read_manifest(manifest).rows
    strata = target_strata(rows) if DATASETS[name].target == "lesion_area" else rows
    fold_of = stratified_folds(Manifest(strata, []), folds=6, seed=0)
    parts = {0: "train", 1: "train", 2: "train", 3: "val", 4: "test", 5: "test"}
    rows = [replace(row, split=parts[fold_of[row.slide_id]]) for row in rows]
    write_manifest(split, rows)
    return split


def _finished(run: Path) -> bool:
    metrics = run / "metrics.json"
    return metrics.is_file() and json.loads(metrics.read_text())["status"] == "completed"


def train_and_test(name: str, manifest: Path, flags: list[str], out: Path, seed: int) -> dict:
    """Train one run (reused when finished) and evaluate its best checkpoint on the test split."""
    run = out / "runs" / f"{name}_seed{seed}"
    metrics_file = run / "metrics.json"
    done = _finished(run)
    start = time.perf_counter()
    if not done:
        command = gigastream(
            "train", "--manifest", manifest, "--out", run, "--seed", seed, "--no-progress",
            "--overwrite", "--threads", "1", *flags,
        )  # fmt: skip
        subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    trained = json.loads(metrics_file.read_text())
    test = run / "test"
    subprocess.run(
        gigastream(
            "evaluate",
            "--checkpoint",
            run / trained["best_checkpoint"],
            "--manifest",
            manifest,
            "--out",
            test,
            "--split",
            "test",
            "--no-progress",
        ),  # fmt: skip
        check=True,
    )
    tested = json.loads((test / "metrics.json").read_text())
    keep = ("spearman", "pearson", "mae", "rmse", "r2", "auc", "accuracy", "confusion_matrix")
    return {
        "run": name,
        "seed": seed,
        "flags": flags,
        "best_epoch": trained["best_epoch"],
        "fit_seconds": trained["fit_seconds"],
        "wall_seconds": seconds if not done else None,
        "val": {k: v for k, v in trained["final"].items() if k != "predictions"},
        "test": {k: tested[k] for k in keep if k in tested},
        "test_slides": tested["slides"],
        "class_names": tested.get("class_names"),
        "predictions": tested["predictions"],
    }


def _f(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def summary_table(results: list[dict]) -> str:
    """The README's tables (markdown) of every run."""
    lines = [
        "| run | seed | test slides | Spearman | Pearson | MAE (%) | R² | best epoch | fit s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        if "spearman" in r["test"]:
            t = r["test"]
            lines.append(
                f"| {r['run']} | {r['seed']} | {r['test_slides']} | {_f(t['spearman'])} | "
                f"{_f(t['pearson'])} | {_f(t['mae'])} | {_f(t['r2'])} | {r['best_epoch']} | "
                f"{r['fit_seconds']:.0f} |"
            )
    lines += [
        "",
        "| run | seed | test slides | macro AUC | accuracy | confusion (rows: true) | best epoch | fit s |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in results:
        if "auc" in r["test"]:
            t = r["test"]
            lines.append(
                f"| {r['run']} | {r['seed']} | {r['test_slides']} | {_f(t['auc'])} | "
                f"{_f(t['accuracy'])} | {t['confusion_matrix']} | {r['best_epoch']} | "
                f"{r['fit_seconds']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    """Predicted against true lesion burden of the test slides: a row per regression run, a
    column per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results if "spearman" in r["test"]]
    if not runs:
        return
    names = list(dict.fromkeys(r["run"] for r in runs))
    seeds = sorted({r["seed"] for r in runs})
    fig, axes = plt.subplots(
        len(names), len(seeds), figsize=(4.2 * len(seeds), 3.8 * len(names)), squeeze=False
    )
    for ax in axes.flat:
        ax.set_visible(False)
    for r in runs:
        ax = axes[names.index(r["run"])][seeds.index(r["seed"])]
        ax.set_visible(True)
        true = [p["label"] for p in r["predictions"]]
        predicted = [p["prediction"] for p in r["predictions"]]
        ax.scatter(true, predicted, s=18)
        top = max(true + predicted)
        ax.plot([0, top], [0, top], color="0.6", lw=0.8, ls=":")
        ax.set_title(
            f"{r['run']}, seed {r['seed']}\nSpearman {_f(r['test']['spearman'])}", fontsize=10
        )
        ax.set_xlabel("true lesion area (% of tissue)")
        ax.set_ylabel("predicted")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merged(path: Path, results: list[dict]) -> list[dict]:
    """``results`` with the runs of the results file ``path`` that were not run now (another
    ``--runs``/``--seeds`` keeps the earlier rows), ordered as :data:`RUNS`, then by seed."""
    now = {(r["run"], r["seed"]) for r in results}
    earlier = json.loads(path.read_text()) if path.is_file() else []
    kept = [r for r in earlier if (r["run"], r["seed"]) not in now and r["run"] in RUNS]
    order = list(RUNS)
    return sorted([*kept, *results], key=lambda r: (order.index(r["run"]), r["seed"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/targets"))
    parser.add_argument("--results", type=Path, default=Path("experiments/targets"))
    parser.add_argument("--slides", type=int, default=96)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (quick checks)")
    parser.add_argument(
        "--finished-only",
        action="store_true",
        help="collect the finished runs only (train nothing): the tables of what ran",
    )
    args = parser.parse_args(argv)
    results = []
    for seed in args.seeds:
        for name in args.runs:
            data, flags = RUNS[name]
            if args.finished_only and not _finished(args.out / "runs" / f"{name}_seed{seed}"):
                continue
            flags = resolved(flags, args.out, seed)
            flags = flags + (["--epochs", str(args.epochs)] if args.epochs else [])
            manifest = dataset(data, args.out, args.slides)
            results.append(train_and_test(name, manifest, flags, args.out, seed))
            print(f"{name} seed {seed}: test {results[-1]['test']}", flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    results = merged(args.results / "results.json", results)
    (args.results / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.results / "summary.md").write_text(summary_table(results))
    plot(results, args.results / "regression.png")
    with open(args.results / "test_predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "seed", "slide_id", "label", "prediction_or_probs"])
        for r in results:
            for p in r["predictions"]:
                writer.writerow(
                    [
                        r["run"],
                        r["seed"],
                        p["slide_id"],
                        p["label"],
                        p.get("prediction", p.get("probs")),
                    ]
                )
    print(summary_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
