"""The resolution sweep: one recipe trained end to end at several resolutions, then tested.

Pinckaers et al. (streaming CNNs, TPAMI 2020) found that end-to-end training gains from
resolution (CAMELYON17 AUC 0.580 at 4 megapixels, 0.706 at 66); Dooper et al.
(StreamingCLAM, Medical Image Analysis 2023) that a streamed CNN with an attention head learns
whole-slide labels end to end and attends to the tumour. This module measures both on any
manifest with ``train``/``val``/``test`` splits; ``run.py`` next to it is its command line
(``python experiments/resolution/run.py --help``).

For every resolution ``mpp`` and every ``seed``, :func:`run_resolution` trains the same run
configuration (the recipe of ``gigastream train`` unless changed) with ``data.mpp = mpp`` and
``train.seed = seed`` on the ``train`` slides, keeps the epoch with the best ``val`` AUC, and
evaluates it on the ``test`` slides. Slides, epochs and gradient accumulation do not change,
so every run takes the same number of optimiser steps. Each row of ``results.json``:

- ``test_auc``: ROC AUC of p(positive) on the test slides;
- ``seconds_per_slide``: wall time of the training steps (forward, streamed backward,
  optimiser) per training slide and epoch, measured around each step (:class:`StepTimer`;
  slides are read by a loader process meanwhile; validation is not included);
- ``peak_mib``: peak resident memory of the run's process (``ru_maxrss``; each run in a
  fresh process unless ``isolate=False``; the loader process is reported apart);
- ``attention_in_lesion``: the attention mass on instances that overlap a ground-truth lesion,
  mean over the positive test slides with a lesion mask (masks are used for evaluation
  only); ``lesion_fraction``: the fraction of their (tissue) instances that overlap one —
  attention that ignores the lesions puts about ``lesion_fraction`` on them.

The *attention* is the model's per-instance weight that the heatmaps show
(``SlideOutput.attention_map``, summing to 1 over the instances): the attention weights of an
attention head (``clam_sb``, ``abmil``), and for the ``topk`` head of the recipe the softmax
over instances of each instance's evidence for the positive class (its logit margin).

Example (with ``experiments/resolution`` on ``sys.path``, as for ``run.py``):
    >>> from sweep import ResolutionSweep, run_resolution  # doctest: +SKIP
    >>> sweep = ResolutionSweep(manifest="data/manifest.csv", out="out/resolution",
    ...                         mpps=[1.0, 8.0], seeds=[0])  # doctest: +SKIP
    >>> rows = run_resolution(sweep)  # doctest: +SKIP
    >>> rows[0]["test_auc"], rows[0]["attention_in_lesion"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import resource
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from plot import plot_resolution

from gigastream.streaming.memory import peak_rss_mib
from gigastream.train.config import ConfigError, RunConfig
from gigastream.train.config_files import load_config, merge, to_dict
from gigastream.train.files import RunError, atomic_write_text, write_json
from gigastream.train.metrics import mean_sd
from gigastream.train.timing import StepTimer
from gigastream.wsi.manifest import (
    Manifest,
    ManifestRow,
    read_manifest,
    stratified_folds,
    write_manifest,
)

#: The experiment's logger (``run.py`` shows its INFO lines: the sweep's progress).
logger = logging.getLogger("experiments.resolution")

#: The keys of every row of ``results.json``.
RESULT_KEYS = (
    "mpp",
    "seed",
    "test_auc",
    "seconds_per_slide",
    "peak_mib",
    "attention_in_lesion",
    "lesion_fraction",
)
#: Names of the three splits in the manifest's ``split`` column.
SPLITS = ("train", "val", "test")
#: Run settings of the experiment on top of the training defaults (the recipe): one loader
#: process, no validation heatmaps (the experiment draws its own on a test slide).
EXPERIMENT_RUN: dict[str, Any] = {
    "data": {"num_workers": 1},
    "train": {"heatmaps": 0, "progress": False},
}


@dataclass
class ResolutionSweep:
    """The resolution experiment.

    Attributes:
        manifest: slide manifest with a ``split`` column of ``train``/``val``/``test``
            (or any manifest, with ``split_ratio``).
        out: folder of the runs (``mpp<M>_seed<S>/``, one training run each).
        results: where ``results.json``, ``runs.json``, ``summary.md``, ``resolution.png``
            and ``heatmaps/`` go (default: ``out``).
        mpps: resolutions to train at (microns per pixel).
        seeds: seeds of each resolution (initialisation, slide order, augmentation).
        run: run settings as in a ``gigastream train`` YAML file (sections ``model``,
            ``data``, ``optim``, ``train``); ``data.mpp`` and ``train.seed`` are set per run.
        split_ratio: ``(train, val, test)`` parts: write ``out/manifest.csv`` with a
            stratified, patient-level ``split`` column in these proportions (``None``: use
            the manifest's own column).
        split_seed: seed of that split.
        lesions: folder of ground-truth lesion masks ``<slide_id>.png`` (default: a
            synthetic dataset's ``lesions/`` folder next to ``slides/``).
        heatmap_slide: the test slide whose heatmap is drawn at every resolution (default:
            the first positive test slide with a lesion mask, else the first positive one).
        isolate: run every training in a fresh process (true peak memory per run).
        overwrite: retrain runs whose folder already holds a result.
    """

    manifest: str
    out: str
    results: str | None = None
    mpps: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    run: dict[str, Any] = field(default_factory=dict)
    split_ratio: tuple[int, int, int] | None = None
    split_seed: int = 0
    lesions: str | None = None
    heatmap_slide: str | None = None
    isolate: bool = True
    overwrite: bool = False

    def validate(self) -> None:
        """Raise ConfigError on impossible settings (before anything is written)."""
        if not self.mpps:
            raise ConfigError("give at least one resolution (--mpp)")
        for mpp in self.mpps:
            if not (math.isfinite(mpp) and mpp > 0):
                raise ConfigError(f"--mpp values must be positive numbers of microns, got {mpp}")
        if len(set(self.mpps)) != len(self.mpps):
            raise ConfigError(f"--mpp lists a resolution twice: {self.mpps}")
        if not self.seeds:
            raise ConfigError("give at least one seed (--seeds)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"--seeds lists a seed twice: {self.seeds}")
        if self.split_ratio is not None and (
            len(self.split_ratio) != 3 or min(self.split_ratio) < 1
        ):
            raise ConfigError(
                f"--split-ratio needs three positive parts TRAIN:VAL:TEST, got {self.split_ratio}"
            )


# ----------------------------------------------------------------------------- lesion metrics
def lesion_cells(lesions, grid: tuple[int, int], cell_um: float) -> np.ndarray:
    """Which cells of an instance grid overlap a ground-truth lesion.

    Cell ``[i, j]`` covers the microns ``[i * cell_um, (i + 1) * cell_um)`` vertically and
    likewise horizontally (as the heatmaps draw it); it overlaps a lesion when a lesion pixel
    of the mask (a square of ``lesions.mpp`` microns) shares a positive area with it.

    Args:
        lesions: the ground-truth mask (:class:`~gigastream.wsi.tissue.TissueMask`).
        grid: ``(rows, cols)`` of the instance grid.
        cell_um: edge of a cell in microns.

    Returns:
        ``(rows, cols)`` bool.

    Example:
        >>> from gigastream.wsi.tissue import TissueMask
        >>> mask = np.zeros((4, 4), bool); mask[1, 2] = True  # 8 um pixels
        >>> lesion_cells(TissueMask(mask, 8.0), (2, 2), 16.0).astype(int).tolist()
        [[0, 1], [0, 0]]
    """
    mask = np.asarray(lesions.mask, bool)
    height, width = mask.shape
    integral = np.zeros((height + 1, width + 1), np.int64)
    integral[1:, 1:] = mask.cumsum(axis=0).cumsum(axis=1)

    def spans(count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        edges = np.arange(count + 1) * (cell_um / lesions.mpp)  # cell edges in mask pixels
        start = np.clip(np.floor(edges[:-1] + 1e-9).astype(np.int64), 0, size)
        stop = np.clip(np.ceil(edges[1:] - 1e-9).astype(np.int64), 0, size)
        return start, np.maximum(stop, start)

    (y0, y1), (x0, x1) = spans(grid[0], height), spans(grid[1], width)
    inside = (
        integral[y1[:, None], x1[None, :]]
        - integral[y0[:, None], x1[None, :]]
        - integral[y1[:, None], x0[None, :]]
        + integral[y0[:, None], x0[None, :]]
    )
    return inside > 0


def lesion_attention(attention_map: np.ndarray, in_lesion: np.ndarray) -> tuple[float, float]:
    """Attention mass on lesion instances, and the fraction of instances that are lesion.

    Args:
        attention_map: ``(rows, cols)`` attention of the instances, NaN where a cell is no
            instance (off tissue), as the engine's predictions give it.
        in_lesion: ``(rows, cols)`` bool, cells that overlap a lesion (:func:`lesion_cells`).

    Returns:
        ``(attention_in_lesion, lesion_fraction)``: the share of the attention on instances
        overlapping a lesion, and the share of instances that do.

    Example:
        >>> attention = np.array([[0.5, 0.25], [0.25, np.nan]])
        >>> lesion_attention(attention, np.array([[True, False], [False, True]]))
        (0.5, 0.3333333333333333)
    """
    if attention_map.shape != in_lesion.shape:
        raise ValueError(
            f"attention map {attention_map.shape} and lesion cells {in_lesion.shape} differ"
        )
    instances = np.isfinite(attention_map)
    if not instances.any():
        raise ValueError("the attention map has no instances")
    weights = np.where(instances, attention_map, 0.0)
    hit = instances & in_lesion
    return float(weights[hit].sum() / weights.sum()), float(hit.sum() / instances.sum())


# ----------------------------------------------------------------------------- splits
def split_manifest(
    manifest: str | Path, out: str | Path, ratio: Sequence[int], seed: int = 0
) -> Path:
    """Write ``manifest`` with a ``split`` column of ``train``/``val``/``test`` to ``out``.

    The cases (patients) are dealt into ``sum(ratio)`` stratified folds
    (:func:`~gigastream.wsi.manifest.stratified_folds`); the first ``ratio[0]`` folds are
    ``train``, the next ``ratio[1]`` ``val``, the rest ``test``.

    Example:
        >>> split_manifest("data/manifest.csv", "out/manifest.csv", (3, 1, 2))  # doctest: +SKIP
    """
    source = read_manifest(manifest)
    fold_of = stratified_folds(source, folds=sum(ratio), seed=seed)
    limits = np.cumsum(ratio)
    rows = [
        replace(r, split=SPLITS[int(np.searchsorted(limits, fold_of[r.slide_id], "right"))])
        for r in source.rows
    ]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_manifest(out, rows)


def split_of(manifest: Manifest) -> dict[str, list[ManifestRow]]:
    """The manifest's ``train``, ``val`` and ``test`` rows (``split`` column, any case).

    Raises:
        ConfigError: a split is empty, or the test split lacks a class.
    """
    aliases = {"training": "train", "valid": "val", "validation": "val"}
    parts: dict[str, list[ManifestRow]] = {name: [] for name in SPLITS}
    for row in manifest.rows:
        name = (row.split or "").lower()
        name = aliases.get(name, name)
        if name in parts:
            parts[name].append(row)
    empty = [name for name, rows in parts.items() if not rows]
    if empty:
        raise ConfigError(
            f"the manifest has no {', '.join(empty)} slides: give it a split column of "
            "train/val/test, or pass --split-ratio TRAIN:VAL:TEST"
        )
    labels = {r.label for r in parts["test"]}
    if len(labels) < 2:
        raise ConfigError(f"the test split holds only label(s) {sorted(labels)}: no AUC")
    return parts


# ----------------------------------------------------------------------------- one run
def run_name(mpp: float, seed: int) -> str:
    """The folder of one run: ``mpp1_seed0``, ``mpp0.5_seed2``."""
    return f"mpp{mpp:g}_seed{seed}"


def run_config(sweep: ResolutionSweep, manifest: str | Path, mpp: float, seed: int) -> RunConfig:
    """The validated configuration of the run at ``mpp`` with ``seed``.

    :data:`EXPERIMENT_RUN` < ``sweep.run`` < ``data.mpp``, ``train.seed``; early stopping is
    switched off, so that every run takes the same number of optimiser steps.
    """
    values = merge(EXPERIMENT_RUN, sweep.run)
    overrides = {
        "manifest": str(Path(manifest).resolve()),
        "splits": None,
        "data": {"mpp": float(mpp)},
        "train": {"seed": int(seed)},
    }
    config = load_config(values, overrides, source="resolution run settings")
    if config.splits is not None:
        raise ConfigError("the resolution experiment splits by the manifest, not a splits file")
    if config.train.early_stopping_patience is not None:  # every run: the same optimiser steps
        logger.warning("train.early_stopping_patience is ignored: every run trains all epochs")
        config = replace(config, train=replace(config.train, early_stopping_patience=None))
    return config


def choose_heatmap_slide(test: Sequence[ManifestRow], positive: str, lesions: str | None) -> str:
    """The first positive test slide with a lesion mask (else the first positive slide)."""
    from gigastream.train.heatmaps import lesion_mask_for

    candidates = [r for r in test if r.label == positive]
    for row in candidates:
        if lesion_mask_for(row.path, row.slide_id, lesions) is not None:
            return row.slide_id
    return candidates[0].slide_id


def train_and_test(
    config: RunConfig,
    out: Path,
    test_ids: Sequence[str],
    lesions: str | None = None,
    heatmap_slide: str | None = None,
    title: str = "",
) -> dict[str, Any]:
    """Train one run into ``out``, evaluate its best checkpoint on the test slides.

    Writes ``out/test_predictions.csv``, ``out/heatmap.png`` (``heatmap_slide``) and
    ``out/result.json`` (returned): the ``results.json`` row and details (validation AUC,
    best epoch, per-slide lesion attention, timings, loader memory).
    """
    from gigastream.train.fitting import fit
    from gigastream.train.heatmaps import instance_cell_um, lesion_mask_for
    from gigastream.train.prediction import (
        load_classifier,
        run_predictions,
        summarize,
        write_predictions,
    )
    from gigastream.viz import heatmap as hm
    from gigastream.wsi.reader import SlideReader

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    timer = StepTimer()
    start = time.perf_counter()
    metrics = fit(config, out, overwrite=True, callbacks=[timer])
    fit_seconds = time.perf_counter() - start

    module, saved = load_classifier(out / metrics["best_checkpoint"])
    manifest = read_manifest(config.manifest, labels=module.class_names)
    by_id = {r.slide_id: r for r in manifest.rows}
    test_rows = [by_id[i] for i in test_ids]
    data = replace(saved.data, mask_dir=str(out / "masks"))
    start = time.perf_counter()
    results = run_predictions(module, test_rows, saved, data, device=config.train.device)
    test_seconds = time.perf_counter() - start
    final = summarize(results, module.class_names)
    write_predictions(out / "test_predictions.csv", results, module.class_names)

    positive = len(module.class_names) - 1
    stride = module.model.output_stride
    slides, heatmap = [], None
    for r in results:
        if "attention_map" not in r:
            continue
        row = by_id[r["slide_id"]]
        mask = lesion_mask_for(row.path, row.slide_id, lesions)
        with SlideReader.open(row.path, mpp=row.mpp, backend=data.backend) as slide:
            cell_um = instance_cell_um(slide, data.mpp, stride)
            if r["slide_id"] == heatmap_slide:
                label = None if r["label"] is None else module.class_names[r["label"]]
                p = float(r["probs"][-1])
                name = hm.slide_title(r["slide_id"], label, p, module.class_names[-1])
                heatmap = hm.attention_heatmap_png(
                    slide,
                    r["attention_map"],
                    out / "heatmap.png",
                    cell_um=cell_um,
                    title=f"{title}\n{name}" if title else name,
                    contours=mask,
                )
        if r["label"] != positive or mask is None:
            continue
        cells = lesion_cells(mask, r["attention_map"].shape, cell_um)
        mass, fraction = lesion_attention(r["attention_map"], cells)
        slides.append(
            {
                "slide_id": r["slide_id"],
                "attention_in_lesion": mass,
                "lesion_fraction": fraction,
                "instances": int(np.isfinite(r["attention_map"]).sum()),
                "p_positive": float(r["probs"][-1]),
            }
        )

    epochs = config.train.epochs
    steps = timer.bags or 1
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**10  # KiB (Linux)
    result = {
        "mpp": float(config.data.mpp),
        "seed": int(config.train.seed),
        "test_auc": final["auc"],
        "seconds_per_slide": sum(timer.epoch_seconds) / steps,
        "peak_mib": peak_rss_mib(),
        "attention_in_lesion": float(np.mean([s["attention_in_lesion"] for s in slides]))
        if slides
        else None,
        "lesion_fraction": float(np.mean([s["lesion_fraction"] for s in slides]))
        if slides
        else None,
        # details
        "test_accuracy": final["accuracy"],
        "test_loss": final["loss"],
        "test_slides": final["slides"],
        "test_skipped": final["skipped"],
        "val_auc": metrics["epochs"][metrics["best_epoch"] - 1]["val_auc"],
        "best_epoch": metrics["best_epoch"],
        "epochs": epochs,
        "training_steps": timer.bags,
        "optimizer_steps": epochs
        * math.ceil(len(metrics["train_slides"]) / config.train.accumulate_grad_batches),
        "train_slides": len(metrics["train_slides"]),
        "val_slides": len(metrics["val_slides"]),
        "instances_per_test_slide": float(
            np.mean(
                [np.isfinite(r["attention_map"]).sum() for r in results if "attention_map" in r]
            )
        ),
        "fit_seconds": fit_seconds,
        "validation_seconds": timer.val_seconds,
        "test_seconds_per_slide": test_seconds / max(1, len(test_rows)),
        "loader_peak_mib": children,
        "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20
        if torch.cuda.is_available()
        else None,
        "lesion_slides": slides,
        "heatmap": str(heatmap.name) if heatmap else None,
        "heatmap_slide": heatmap_slide,
    }
    return result


def _task(sweep: ResolutionSweep, manifest: Path, mpp: float, seed: int, test_ids, heatmap):
    """What one run needs, as plain data (it crosses into a fresh process)."""
    config = run_config(sweep, manifest, mpp, seed)
    return {
        "config": to_dict(config),
        "out": str(Path(sweep.out) / run_name(mpp, seed)),
        "test_ids": list(test_ids),
        "lesions": sweep.lesions,
        "heatmap_slide": heatmap,
        "title": f"{mpp:g} µm/px, seed {seed}",
    }


def _execute(task: dict[str, Any]) -> dict[str, Any]:
    """Run one task in this process; write and return its ``result.json``."""
    config = load_config(task["config"], source="resolution run")
    out = Path(task["out"])
    result = train_and_test(
        config, out, task["test_ids"], task["lesions"], task["heatmap_slide"], task["title"]
    )
    result["task"] = task
    write_json(out / "result.json", result)
    return result


def _child(task: dict[str, Any], log_level: int) -> None:
    """Entry point of a run's fresh process (spawned: nothing inherited but ``task``)."""
    import warnings

    import lightning  # noqa: F401  (sets its loggers to INFO on import; quieted below)

    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    for name in ("gigastream", logger.name):
        logging.getLogger(name).setLevel(log_level)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(max(log_level, logging.WARNING))
    if log_level > logging.DEBUG:  # as the gigastream command: noise from Lightning's internals
        for message in (".*LeafSpec.*", ".*does not have many workers.*", ".*sync_dist=True.*"):
            warnings.filterwarnings("ignore", message=message)
    _execute(task)


def _run_task(task: dict[str, Any], isolate: bool) -> dict[str, Any]:
    if not isolate:
        return _execute(task)
    level = min(logging.getLogger(n).getEffectiveLevel() for n in ("gigastream", logger.name))
    process = multiprocessing.get_context("spawn").Process(
        target=_child, args=(task, level), name=Path(task["out"]).name
    )
    process.start()
    try:
        process.join()
    except BaseException:
        process.terminate()
        process.join()
        raise
    path = Path(task["out"]) / "result.json"
    if process.exitcode != 0 or not path.is_file():
        raise RunError(
            f"run {Path(task['out']).name} failed (exit code {process.exitcode}); its status is "
            f"in {Path(task['out']) / 'metrics.json'}"
        )
    return json.loads(path.read_text())


def _finished(task: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The stored result of a task, if its run finished with the same settings."""
    path = Path(task["out"]) / "result.json"
    if not path.is_file():
        return None
    stored = None
    with contextlib.suppress(OSError, ValueError):
        stored = json.loads(path.read_text())
    if overwrite or stored is None:
        return None  # retrained (an unreadable result too)
    if stored.get("task") != task:
        raise RunError(
            f"{path.parent} holds a run with other settings: pass --overwrite to retrain it, "
            "or choose another --out"
        )
    return stored


# ----------------------------------------------------------------------------- the sweep
def run_resolution(sweep: ResolutionSweep, progress: bool = True) -> list[dict[str, Any]]:
    """Train and evaluate every ``(mpp, seed)`` of the sweep; write the results.

    With ``progress``, one INFO line of :data:`logger` per finished run (DEBUG otherwise).

    Runs already finished in ``sweep.out`` with the same settings are reused (a stopped
    sweep continues where it stopped). Writes into ``sweep.results``: ``results.json``
    (:data:`RESULT_KEYS` per run), ``runs.json`` (every run's details), ``summary.md``
    (mean ± sd per resolution), ``resolution.png`` and ``heatmaps/mpp<M>.png`` (the same
    test slide at every resolution, first seed).

    Returns:
        The ``results.json`` rows.

    Raises:
        ConfigError, ManifestError: bad settings or splits (nothing trained).
        RunError: a run failed, or ``out`` holds runs with other settings.
    """
    from gigastream.train.preparation import prepare

    sweep.validate()
    out = Path(sweep.out)
    results_dir = Path(sweep.results) if sweep.results else out
    manifest_path = Path(sweep.manifest)
    for mpp in sweep.mpps:  # settings errors before anything is written
        run_config(sweep, manifest_path, mpp, sweep.seeds[0])
    if sweep.split_ratio is not None:
        read_manifest(manifest_path)
        manifest_path = split_manifest(
            manifest_path, out / "manifest.csv", sweep.split_ratio, sweep.split_seed
        )
    parts = split_of(read_manifest(manifest_path))
    configs = {mpp: run_config(sweep, manifest_path, mpp, sweep.seeds[0]) for mpp in sweep.mpps}
    class_names = None
    finest = min(sweep.mpps)
    for mpp, config in configs.items():  # the largest input plans its streaming before training
        class_names = prepare(config, check_plan=mpp == finest).class_names
    heatmap = sweep.heatmap_slide or choose_heatmap_slide(
        parts["test"], class_names[-1], sweep.lesions
    )
    if heatmap not in {r.slide_id for r in parts["test"]}:
        raise ConfigError(f"--heatmap-slide {heatmap!r} is not a test slide")
    test_ids = [r.slide_id for r in parts["test"]]
    logger.info(
        "resolution sweep: %d train / %d val / %d test slides; mpp %s x seeds %s; heatmap of %s",
        len(parts["train"]),
        len(parts["val"]),
        len(parts["test"]),
        sweep.mpps,
        sweep.seeds,
        heatmap,
    )
    tasks = [
        _task(sweep, manifest_path, mpp, seed, test_ids, heatmap)
        for seed in sweep.seeds
        for mpp in sweep.mpps
    ]
    finished = {t["out"]: _finished(t, sweep.overwrite) for t in tasks}  # checks all first
    runs = []
    start = time.perf_counter()
    for i, task in enumerate(tasks, start=1):
        result = finished[task["out"]]
        name = Path(task["out"]).name
        if result is None:
            logger.info("run %d/%d: %s", i, len(tasks), name)
            result = _run_task(task, sweep.isolate)
        else:
            logger.info("run %d/%d: %s already finished (reused)", i, len(tasks), name)
        runs.append(result)
        logger.log(
            logging.INFO if progress else logging.DEBUG,
            "[%d/%d] %s: test AUC %s, attention in lesion %s (lesion fraction %s), "
            "%.3f s/slide, peak %.0f MiB (%.0f s)",
            i,
            len(tasks),
            name,
            _fmt(result["test_auc"]),
            _fmt(result["attention_in_lesion"]),
            _fmt(result["lesion_fraction"]),
            result["seconds_per_slide"],
            result["peak_mib"],
            time.perf_counter() - start,
        )
    return write_results(runs, results_dir, sweep.seeds[0])


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def summary_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± sd over seeds of every measure, per resolution (finest first)."""
    table = []
    for mpp in sorted({r["mpp"] for r in rows}):
        group = [r for r in rows if r["mpp"] == mpp]
        entry: dict[str, Any] = {"mpp": mpp, "runs": len(group)}
        for key in RESULT_KEYS[2:]:
            values = [r[key] for r in group if r[key] is not None]
            entry[key] = mean_sd(values) if values else (math.nan, math.nan)
        table.append(entry)
    return table


def summary_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The table of :func:`summary_rows` as Markdown."""
    lines = [
        "| µm/px | runs | test AUC | attention in lesion | lesion fraction | ratio "
        "| s/slide (train step) | peak RSS MiB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def pm(pair: tuple[float, float], digits: int = 3) -> str:
        mean, sd = pair
        return "n/a" if not math.isfinite(mean) else f"{mean:.{digits}f} ± {sd:.{digits}f}"

    for e in summary_rows(rows):
        fraction = e["lesion_fraction"][0]
        ratio = e["attention_in_lesion"][0] / fraction if fraction else math.nan
        lines.append(
            f"| {e['mpp']:g} | {e['runs']} | {pm(e['test_auc'])} | "
            f"{pm(e['attention_in_lesion'])} | {pm(e['lesion_fraction'])} | "
            f"{_fmt(ratio, 1)}× | {pm(e['seconds_per_slide'])} | "
            f"{pm(e['peak_mib'], 0)} |"
        )
    return "\n".join(lines) + "\n"


def write_results(runs: Sequence[dict[str, Any]], folder: Path, heatmap_seed: int) -> list[dict]:
    """``results.json``, ``runs.json``, ``summary.md``, ``resolution.png``, ``heatmaps/``."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = sorted(
        ({k: r[k] for k in RESULT_KEYS} for r in runs), key=lambda r: (r["mpp"], r["seed"])
    )
    write_json(folder / "results.json", rows)
    details = sorted(
        ({k: v for k, v in r.items() if k != "task"} for r in runs),
        key=lambda r: (r["mpp"], r["seed"]),
    )
    write_json(folder / "runs.json", details)
    atomic_write_text(folder / "summary.md", summary_markdown(rows))
    plot_resolution(rows, folder / "resolution.png")
    (folder / "heatmaps").mkdir(exist_ok=True)
    for r in runs:
        source = Path(r["task"]["out"]) / "heatmap.png"
        if r["seed"] == heatmap_seed and source.is_file():
            shutil.copyfile(source, folder / "heatmaps" / f"mpp{r['mpp']:g}.png")
    return rows


__all__ = [
    "EXPERIMENT_RUN",
    "RESULT_KEYS",
    "ResolutionSweep",
    "lesion_attention",
    "lesion_cells",
    "run_resolution",
    "split_manifest",
    "split_of",
    "summary_markdown",
    "summary_rows",
    "train_and_test",
    "write_results",
]
