"""The UCSB breast-cancer TMA benchmark (Ilse et al., ICML 2018) with ``gigastream train``.

58 real H&E tissue-microarray images (896x768 px, 32 benign, 26 malignant; Gelasca et al.,
ICIP 2008) are cut into 32x32 px patches, one bag per image, and classified by attention MIL
trained end to end from random initialisation. Every configuration x repeat x fold is one
``gigastream train`` in a process of its own (or, with ``--reuse-processes``, run by
``--parallel`` long-lived worker processes that take the runs from one queue: the same
numbers, tested, without the start-up of torch and Lightning per run); the experiment only
prepares its inputs and reads the run folders back.

What this script writes (``--out``, default ``out/breast_ucsb``, ignored by git)::

    OUT/manifest.csv                 the data's manifest with absolute paths and mpp 0.5
    OUT/masks_whiteW/<slide_id>.png  the patch rule as a full-resolution mask (see below)
    OUT/splits/repeat_R.csv          stratified 4-fold splits of repeat R (seed R)
    OUT/configs/<config>.yaml        the settings of each configuration (gigastream --config)
    OUT/runs/<config>/repeat_R/fold_K/   one gigastream run folder each

and (``--results``, default this folder) ``results.json`` (one row per run), ``summary.md``
(mean ± sd per configuration, the accumulate-vs-baseline check) and ``heatmaps/``.

The patch rule. Ilse et al. discard a 32x32 patch when >= 75% of its pixels are white. The
engine keeps a patch when the fraction of it on the slide's tissue mask is >= ``min_tissue``
and uses a mask found in ``data.mask_dir``; so this script writes, for every image, a
full-resolution mask that is True on the whole 32x32 cell of every patch with fewer than 75%
white pixels (a pixel is white when each of R, G, B is >= ``--white``, default 200) and False
elsewhere; with ``min_tissue`` 0.5 the engine then keeps exactly those patches (the image
is 28 x 24 cells; the streamed model sees the same cells, the others blanked).

What is reported. A run's validation split is the held-out fold of its cross-validation
split (the engine has no third split to pick a checkpoint on). So the reported ``test_auc``
and ``accuracy`` are those of the model after the last of a fixed number of epochs
(``metrics.json`` ``epochs[-1]``), chosen on nothing; the engine's own ``final`` metrics (its
best-AUC checkpoint, i.e. selected on the test fold, optimistic) are kept in each row as
``best_epoch_auc`` / ``best_epoch_accuracy`` for reference only.

Usage (from the repository root)::

    .venv/bin/python experiments/breast_ucsb/run.py --configs abmil-accumulate \
        --repeats 0 --folds 0 1 2 3 --epochs 10 --threads 2 --parallel 1
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MPP = 0.5  # the images carry no valid resolution (72 dpi); 0.5 um/px as for 20x
PATCH_SIZE = 32
MIN_TISSUE = 0.5  # the masks are constant on each patch cell: any value in (0, 1] keeps the same
MAX_WHITE = 0.75  # Ilse et al.: a patch with >= 75% white pixels is discarded
CLASS_NAMES = ["benign", "malignant"]

#: The configurations: name -> (strategy, head, model). ``model`` is ``small_cnn`` (a
#: patch-bag model) or ``vgg_small`` (the streamed model over the whole image).
CONFIGS: dict[str, tuple[str, str, str]] = {
    "abmil-accumulate": ("accumulate", "abmil", "small_cnn"),
    "gated-accumulate": ("accumulate", "gated_abmil", "small_cnn"),
    "abmil-baseline": ("baseline", "abmil", "small_cnn"),
    "gated-baseline": ("baseline", "gated_abmil", "small_cnn"),
    "abmil-sample": ("sample", "abmil", "small_cnn"),
    "gated-sample": ("sample", "gated_abmil", "small_cnn"),
    "abmil-frozen": ("frozen", "abmil", "small_cnn"),
    "gated-frozen": ("frozen", "gated_abmil", "small_cnn"),
    "streaming": ("streaming", "gated_abmil", "vgg_small"),
    "gated-accumulate-patchaug": ("accumulate", "gated_abmil", "small_cnn"),
}
#: Patch settings of configurations that differ from the others only in them: each patch its
#: own flip/rotation and a colour jitter (the others: one flip/rotation per bag, no jitter).
PATCH_SETTINGS: dict[str, dict[str, Any]] = {
    "gated-accumulate-patchaug": {"augment": "patch", "color_jitter": 0.1},
}
#: accumulate vs baseline pairs checked for equality in summary.md.
PAIRS = [("abmil-accumulate", "abmil-baseline"), ("gated-accumulate", "gated-baseline")]


def default_data() -> Path:
    from gigastream.cli.common import find_shared_data

    found = find_shared_data("ucsb_breast")
    return found[0] if found else ROOT.parent / "shared" / "data" / "ucsb_breast"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="experiments/breast_ucsb/run.py", description=__doc__.split("\n")[0]
    )
    p.add_argument("--data", type=Path, default=None, help="folder of the TIFFs and manifest.csv")
    p.add_argument("--out", type=Path, default=ROOT / "out" / "breast_ucsb", help="run folders")
    p.add_argument("--results", type=Path, default=HERE, help="results.json, summary.md, heatmaps/")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--repeats", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument(
        "--plan",
        nargs="+",
        metavar="CONFIG=R,R,...",
        help="configurations with their own repeats, trained in this order in one queue "
        "(e.g. gated-accumulate=0,1,2,3,4 gated-baseline=0); replaces --configs/--repeats",
    )
    p.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--num-folds", type=int, default=4)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--accumulate", type=int, default=1, help="slides per optimiser step")
    p.add_argument("--width", type=int, default=16, help="small_cnn channels of its 1st conv")
    p.add_argument("--out-dim", type=int, default=64, help="small_cnn feature size")
    p.add_argument("--dropout", type=float, default=0.0, help="small_cnn dropout")
    p.add_argument("--attn-dim", type=int, default=64, help="attention hidden size")
    p.add_argument("--chunk-size", type=int, default=256, help="patches per chunk (accumulate)")
    p.add_argument("--sample-size", type=int, default=64, help="patches per step (sample)")
    p.add_argument(
        "--streaming-mpp",
        type=float,
        default=MPP,
        help="resolution the streamed model reads the images at (default: the patches' 0.5)",
    )
    p.add_argument("--tile-size", type=int, default=512, help="streamed model's tile edge")
    p.add_argument("--white", type=int, default=200, help="a pixel is white when R,G,B >= this")
    p.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads per run")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time")
    p.add_argument(
        "--reuse-processes",
        action="store_true",
        help="--parallel long-lived worker processes take the runs from one queue, saving "
        "torch's and Lightning's start-up per run (default: every run in a process of its "
        "own, as the README's timing was measured)",
    )
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers per run")
    p.add_argument("--overwrite", action="store_true", help="retrain finished runs")
    p.add_argument("--collect-only", action="store_true", help="train nothing; collect results")
    p.add_argument(
        "--heatmap-config", nargs="+", default=None, help="configs whose heatmaps are copied"
    )
    return p


# ----------------------------------------------------------------------------- inputs
def mask_dir(args: argparse.Namespace) -> Path:
    """The folder of the patch-rule masks (one per ``--white``)."""
    return args.out / f"masks_white{args.white}"


def write_inputs(args: argparse.Namespace) -> Path:
    """OUT/manifest.csv (absolute paths, mpp) and OUT/masks (the patch rule); the manifest."""
    from PIL import Image

    from gigastream.wsi.tissue import TissueMask

    data = (args.data or default_data()).resolve()
    source = data / "manifest.csv"
    if not source.is_file():
        raise SystemExit(f"breast_ucsb: {source} not found (pass --data FOLDER)")
    out = args.out
    masks = mask_dir(args)
    masks.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.csv"
    with open(source, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    bag_sizes: dict[str, int] = {}
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide_id", "path", "label", "case_id", "mpp"])
        for row in rows:
            path = (data / row["path"]).resolve()
            writer.writerow([row["slide_id"], str(path), row["label"], row["case_id"], MPP])
            mask_path = masks / f"{row['slide_id']}.png"
            if not mask_path.is_file():
                with Image.open(path) as img:
                    rgb = np.asarray(img.convert("RGB"))
                TissueMask(patch_rule_mask(rgb, args.white), MPP).save(mask_path)
            with Image.open(mask_path) as img:  # a patch is kept where its cell is on the mask
                cells = np.asarray(img.convert("L"))[::PATCH_SIZE, ::PATCH_SIZE] > 127
            bag_sizes[row["slide_id"]] = int(cells.sum())
    (out / "bag_sizes.json").write_text(json.dumps(bag_sizes, indent=1) + "\n")
    return manifest


def patch_rule_mask(rgb: np.ndarray, white: int) -> np.ndarray:
    """``(H, W)`` bool: True on the cells of the 32 px patches with < 75% white pixels."""
    rows, cols = rgb.shape[0] // PATCH_SIZE, rgb.shape[1] // PATCH_SIZE
    is_white = (rgb >= white).all(axis=-1)[: rows * PATCH_SIZE, : cols * PATCH_SIZE]
    cells = is_white.reshape(rows, PATCH_SIZE, cols, PATCH_SIZE).mean(axis=(1, 3))  # (rows, cols)
    keep = cells < MAX_WHITE
    mask = np.zeros(rgb.shape[:2], dtype=bool)
    mask[: rows * PATCH_SIZE, : cols * PATCH_SIZE] = np.kron(keep, np.ones((PATCH_SIZE,) * 2)) > 0
    return mask


def write_splits(manifest: Path, out: Path, repeat: int, folds: int) -> Path:
    """Stratified ``folds``-fold splits of repeat ``repeat`` (seed = repeat)."""
    from gigastream.wsi.manifest import read_manifest
    from gigastream.wsi.manifest import write_splits as write

    path = out / "splits" / f"repeat_{repeat}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        write(read_manifest(manifest), path, folds=folds, seed=repeat)
    return path


def run_config(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """The gigastream settings of configuration ``name`` (written as YAML)."""
    strategy, head, model = CONFIGS[name]
    values: dict[str, Any] = {
        "class_names": CLASS_NAMES,
        "data": {"mpp": MPP, "mask_dir": str(mask_dir(args))},
        "optim": {"lr": args.lr, "weight_decay": args.weight_decay},
        "train": {
            "epochs": args.epochs,
            "accumulate_grad_batches": args.accumulate,
            "device": "cpu",
            "heatmaps": 4,
        },
    }
    head_options = {"attn_dim": args.attn_dim}
    if model == "vgg_small":
        values["data"]["mpp"] = args.streaming_mpp
        values["model"] = {
            "kind": "streaming",
            "arch": "vgg_small",
            "head": head,
            "head_options": head_options,
            "tile_size": args.tile_size,
        }
        return values
    values["model"] = {"kind": "patches", "head": head, "head_options": head_options}
    values["patches"] = {
        "encoder": {
            "name": "small_cnn",
            "options": {"width": args.width, "out_dim": args.out_dim, "dropout": args.dropout},
        },
        "patch_size": PATCH_SIZE,
        "min_tissue": MIN_TISSUE,
        "strategy": strategy,
        "chunk_size": args.chunk_size,
        "sample_size": args.sample_size,
        **PATCH_SETTINGS.get(name, {}),
    }
    return values


# ----------------------------------------------------------------------------- runs
def gigastream() -> list[str]:
    exe = Path(sys.executable).with_name("gigastream")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "gigastream"]


def run_folder(out: Path, name: str, repeat: int, fold: int) -> Path:
    return out / "runs" / name / f"repeat_{repeat}" / f"fold_{fold}"


def run_key(config: Path, splits: Path, fold: int, seed: int) -> str:
    """What a run depends on: its settings, its split file, fold and seed (a finished run is
    reused only when they are unchanged, never by its folder name alone)."""
    digest = hashlib.sha256(config.read_bytes())
    digest.update(splits.read_bytes())
    digest.update(f"|{fold}|{seed}".encode())
    return digest.hexdigest()


def is_done(folder: Path, key: str | None = None) -> bool:
    """A completed run (``metrics.json`` status), of the same ``key`` when one is given."""
    path = folder / "metrics.json"
    if not path.is_file():
        return False
    if key is not None:
        stored = folder / "run_key.txt"
        if not stored.is_file() or stored.read_text().strip() != key:
            return False
    return json.loads(path.read_text()).get("status") == "completed"


def launch(
    args: argparse.Namespace,
    config: Path,
    splits: Path,
    manifest: Path,
    seed: int,
    fold: int,
    folder: Path,
) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run_key.txt").unlink(missing_ok=True)  # written back when the run finishes
    command = [*gigastream(), *train_argv(args, config, splits, manifest, seed, fold, folder)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    log = open(folder.parent / f"{folder.name}.log", "w", encoding="utf-8")  # noqa: SIM115
    log.write(" ".join(command) + "\n")
    log.flush()
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    proc.log = log  # type: ignore[attr-defined]
    proc.started = time.perf_counter()  # type: ignore[attr-defined]
    proc.folder = folder  # type: ignore[attr-defined]
    proc.key = run_key(config, splits, fold, seed)  # type: ignore[attr-defined]
    return proc


def train_argv(
    args: argparse.Namespace,
    config: Path,
    splits: Path,
    manifest: Path,
    seed: int,
    fold: int,
    folder: Path,
) -> list[str]:
    """The ``gigastream train`` arguments of one run."""
    return [
        "train", "--config", str(config), "--manifest", str(manifest), "--splits", str(splits),
        "--fold", str(fold), "--seed", str(seed), "--threads", str(args.threads),
        "--workers", str(args.workers), "--no-progress", "--out", str(folder), "--overwrite",
    ]  # fmt: skip


def run_queue(args: argparse.Namespace, manifest: Path, jobs: list) -> None:
    """Train ``jobs`` in ``--parallel`` worker processes that take them in order from one
    queue folder (``OUT/queue``): each run is one ``gigastream train`` (its ``main``), in a
    process that imported torch and Lightning once."""
    queue = args.out / "queue"
    shutil.rmtree(queue, ignore_errors=True)
    queue.mkdir(parents=True)
    for k, (_, config, splits, repeat, fold, folder) in enumerate(jobs):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "run_key.txt").unlink(missing_ok=True)  # written back when the run finishes
        job = {
            "argv": train_argv(args, config, splits, manifest, repeat, fold, folder),
            "folder": str(folder),
            "key": run_key(config, splits, fold, repeat),
            "label": str(folder.relative_to(args.out)),
        }
        (queue / f"{k:05d}.json").write_text(json.dumps(job))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(queue)]
    workers = [subprocess.Popen(command, env=env, cwd=ROOT) for _ in range(max(1, args.parallel))]
    codes = [w.wait() for w in workers]
    failed = sorted(p.name for p in queue.glob("*.failed"))
    shutil.rmtree(queue, ignore_errors=True)
    if failed or any(codes):
        print(f"{len(failed)} run(s) failed; see their .log files", file=sys.stderr)


def worker(queue: Path) -> int:
    """Take the queue's jobs in order (claimed by an atomic rename) and run each one's
    ``gigastream train`` in this process, its output in ``<folder>.log``."""
    import contextlib
    import logging

    from gigastream.cli.main import main as gigastream_main

    while True:
        job_file = None
        for candidate in sorted(queue.glob("*.json")):
            claimed = candidate.with_suffix(f".{os.getpid()}")
            try:
                candidate.rename(claimed)
            except FileNotFoundError:  # another worker took it
                continue
            job_file = claimed
            break
        if job_file is None:
            return 0
        job = json.loads(job_file.read_text())
        folder = Path(job["folder"])
        started = time.perf_counter()
        with open(folder.parent / f"{folder.name}.log", "w", encoding="utf-8") as log:
            log.write("gigastream " + " ".join(job["argv"]) + "\n")
            log.flush()
            logging.root.handlers.clear()  # each run's logging goes to its own log
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                try:
                    code = gigastream_main(job["argv"])
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
                except Exception:  # a bug: its traceback goes to the run's log
                    import traceback

                    traceback.print_exc()
                    code = 1
            logging.root.handlers.clear()
        wall = time.perf_counter() - started
        (folder / "wall_seconds.json").write_text(json.dumps({"seconds": wall}))
        if code == 0:
            (folder / "run_key.txt").write_text(job["key"] + "\n")
            job_file.unlink()
        else:
            job_file.rename(job_file.with_suffix(".failed"))
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"{job['label']}: {status} in {wall:.0f} s; {summary_line(folder)}", flush=True)


def parse_plan(args: argparse.Namespace) -> list[tuple[str, list[int], int]]:
    """``[(config, repeats, epochs)]`` of ``--plan`` (``CONFIG=R,R[@EPOCHS]``), or every
    ``--configs`` with ``--repeats`` and ``--epochs``."""
    if not args.plan:
        return [(name, list(args.repeats), args.epochs) for name in args.configs]
    plan = []
    for item in args.plan:
        name, _, rest = item.partition("=")
        repeats, _, epochs = rest.partition("@")
        if name not in CONFIGS or not repeats:
            raise SystemExit(
                f"--plan {item!r}: use CONFIG=R,R,...[@EPOCHS] with CONFIG one of {list(CONFIGS)}"
            )
        plan.append((name, [int(r) for r in repeats.split(",")], int(epochs or args.epochs)))
    return plan


def run_all(args: argparse.Namespace, manifest: Path) -> None:
    jobs = []
    (args.out / "configs").mkdir(parents=True, exist_ok=True)
    for name, repeats, epochs in parse_plan(args):
        config = args.out / "configs" / f"{name}.yaml"
        settings = run_config(argparse.Namespace(**{**vars(args), "epochs": epochs}), name)
        config.write_text(yaml.safe_dump(settings, sort_keys=False))
        for repeat in repeats:
            splits = write_splits(manifest, args.out, repeat, args.num_folds)
            for fold in args.folds:
                folder = run_folder(args.out, name, repeat, fold)
                if args.overwrite or not is_done(folder, run_key(config, splits, fold, repeat)):
                    jobs.append((name, config, splits, repeat, fold, folder))
    print(f"{len(jobs)} run(s) to train, {args.parallel} at a time", flush=True)
    if args.reuse_processes:
        run_queue(args, manifest, jobs)
        return
    running: list[subprocess.Popen] = []
    failed = []
    while jobs or running:
        while jobs and len(running) < args.parallel:
            name, config, splits, repeat, fold, folder = jobs.pop(0)
            running.append(launch(args, config, splits, manifest, repeat, fold, folder))
        time.sleep(0.5)
        for proc in [p for p in running if p.poll() is not None]:
            running.remove(proc)
            proc.log.close()
            wall = time.perf_counter() - proc.started
            (proc.folder / "wall_seconds.json").write_text(json.dumps({"seconds": wall}))
            if proc.returncode == 0:
                (proc.folder / "run_key.txt").write_text(proc.key + "\n")
            status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
            rel = proc.folder.relative_to(args.out)
            print(f"{rel}: {status} in {wall:.0f} s; {summary_line(proc.folder)}", flush=True)
            if proc.returncode != 0:
                failed.append(str(proc.folder))
    if failed:
        print(f"{len(failed)} run(s) failed; see their .log files: {failed}", file=sys.stderr)


def summary_line(folder: Path) -> str:
    try:
        last = json.loads((folder / "metrics.json").read_text())["epochs"][-1]
    except (OSError, KeyError, IndexError, ValueError):
        return "no metrics"
    return f"last epoch AUC {last['val_auc']:.4f}, accuracy {last['val_accuracy']:.4f}"


# ----------------------------------------------------------------------------- results
def collect(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for name in CONFIGS:
        strategy, head, model = CONFIGS[name]
        base = args.out / "runs" / name
        config = args.out / "configs" / f"{name}.yaml"
        for folder in sorted(f for f in base.glob("repeat_*/fold_*") if f.is_dir()):
            repeat, fold = int(folder.parent.name.split("_")[1]), int(folder.name.split("_")[1])
            splits = args.out / "splits" / f"repeat_{repeat}.csv"
            if not (config.is_file() and splits.is_file()):
                continue
            if not is_done(folder, run_key(config, splits, fold, repeat)):
                continue  # unfinished, or trained with other settings than the current ones
            metrics = json.loads((folder / "metrics.json").read_text())
            last = metrics["epochs"][-1]
            wall = folder / "wall_seconds.json"
            seconds = json.loads(wall.read_text())["seconds"] if wall.is_file() else None
            rows.append(
                {
                    "config": name,
                    "strategy": strategy,
                    "head": head,
                    "model": model,
                    "repeat": int(folder.parent.name.split("_")[1]),
                    "fold": int(folder.name.split("_")[1]),
                    "seed": metrics["config"]["train"]["seed"],
                    "epochs": len(metrics["epochs"]),
                    "test_auc": last["val_auc"],
                    "accuracy": last["val_accuracy"],
                    "test_loss": last["val_loss"],
                    "test_slides": last["val_slides"],
                    "seconds": seconds,
                    "engine_seconds": metrics["seconds"],
                    "best_epoch": metrics["best_epoch"],
                    "best_epoch_auc": metrics["final"]["val_auc"],
                    "best_epoch_accuracy": metrics["final"]["val_accuracy"],
                    "train_losses": [e["train_loss"] for e in metrics["epochs"]],
                    "run": str(folder.relative_to(args.out)),
                }
            )
    return rows


def mean_sd(values: Sequence[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def equality(rows: list[dict[str, Any]]) -> list[str]:
    """accumulate vs baseline, run by run (same config otherwise, same seed and fold)."""
    lines = []
    by_key = {(r["config"], r["repeat"], r["fold"]): r for r in rows}
    for acc, base in PAIRS:
        pairs = [
            (by_key[(acc, r, f)], by_key[(base, r, f)])
            for (c, r, f) in sorted(by_key)
            if c == acc and (base, r, f) in by_key
        ]
        if not pairs:
            continue
        same = sum(
            f"{a['test_auc']:.4f}" == f"{b['test_auc']:.4f}"
            and f"{a['accuracy']:.4f}" == f"{b['accuracy']:.4f}"
            for a, b in pairs
        )
        auc_diff = max(abs(a["test_auc"] - b["test_auc"]) for a, b in pairs)
        loss_diff = max(
            abs(x - y)
            for a, b in pairs
            for x, y in zip(a["train_losses"], b["train_losses"], strict=True)
        )
        test_loss = max(abs(a["test_loss"] - b["test_loss"]) for a, b in pairs)
        lines.append(
            f"- `{acc}` vs `{base}`: {same} of {len(pairs)} runs give the same test AUC and "
            f"accuracy to 4 decimals; largest differences: test AUC {auc_diff:.2e}, test loss "
            f"{test_loss:.2e}, per-epoch mean training loss {loss_diff:.2e}"
        )
    return lines


def summary_markdown(rows: list[dict[str, Any]], out: Path) -> str:
    lines = [
        "| configuration | strategy | head | model | epochs | repeats × folds | test AUC | "
        "accuracy | seconds per run | (best-epoch AUC, selected on the test fold) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in CONFIGS:
        runs = [r for r in rows if r["config"] == name]
        if not runs:
            continue
        strategy, head, model = CONFIGS[name]
        repeats = sorted({r["repeat"] for r in runs})
        folds_per = len(runs) / len(repeats)
        shape = f"{len(repeats)} × {folds_per:g}" if folds_per.is_integer() else f"{len(runs)} runs"
        seconds = [r["seconds"] for r in runs if r["seconds"] is not None]
        epochs = "/".join(str(e) for e in sorted({r["epochs"] for r in runs}))
        lines.append(
            f"| {name} | {strategy} | {head} | {model} | {epochs} | {shape} | "
            f"{mean_sd([r['test_auc'] for r in runs])} | {mean_sd([r['accuracy'] for r in runs])} | "
            f"{statistics.fmean(seconds):.0f} | {mean_sd([r['best_epoch_auc'] for r in runs])} |"
        )
    lines.append("")
    lines.append(
        "test AUC / accuracy: the model after the last epoch on the held-out fold (no selection); "
        "mean ± sd over runs (repeat × fold). seconds: wall time of one `gigastream train` process."
    )
    sizes_path = out / "bag_sizes.json"
    if sizes_path.is_file():
        sizes = sorted(json.loads(sizes_path.read_text()).values())
        lines.append(
            f"bag sizes (32 px patches with < 75% white pixels, of 672): min {sizes[0]}, "
            f"median {int(statistics.median(sizes))}, max {sizes[-1]} over {len(sizes)} images."
        )
    check = equality(rows)
    if check:
        lines += ["", "accumulate vs baseline (same seed, split and fold):", *check]
    return "\n".join(lines) + "\n"


def copy_heatmaps(args: argparse.Namespace, rows: list[dict[str, Any]]) -> list[Path]:
    """4 test-image heatmaps (2 benign, 2 malignant when possible) of each configuration of
    ``--heatmap-config`` (default: the first with results), from its first runs."""
    target = args.results / "heatmaps"
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("*.png"):
        old.unlink()
    names = args.heatmap_config or [next((r["config"] for r in rows), None)]
    copied = []
    for name in names:
        runs = [r for r in rows if r["config"] == name]
        found: dict[str, list[Path]] = {label: [] for label in CLASS_NAMES}
        for r in sorted(runs, key=lambda r: (r["repeat"], r["fold"])):
            for png in sorted((args.out / r["run"] / "heatmaps").glob("*.png")):
                label = "malignant" if "malignant" in png.stem else "benign"
                found[label].append(png)
        for png in found["benign"][:2] + found["malignant"][:2]:
            dest = target / f"{name}_{png.stem}.png"
            shutil.copyfile(png, dest)
            copied.append(dest)
    return copied


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker is not None:
        return worker(args.worker)
    args.out = args.out.resolve()
    start = time.perf_counter()
    manifest = write_inputs(args)
    if not args.collect_only:
        run_all(args, manifest)
    rows = collect(args)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    summary = summary_markdown(rows, args.out)
    (args.results / "summary.md").write_text(summary)
    heatmaps = copy_heatmaps(args, rows)
    print(summary, end="")
    print(f"{len(rows)} runs -> {args.results}/results.json, summary.md, {len(heatmaps)} heatmaps")
    print(f"wall time of this call: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
