"""Evaluating a checkpoint on the slides of a manifest (``gigastream evaluate``).

:func:`evaluate_manifest` scores the slides not trained on (:func:`scored_rows`: by default
those whose split is not train), says when some are the checkpoint's training slides
(:func:`training_slides`), and writes ``metrics.json`` and ``predictions.csv``: a
classifier's AUC, accuracy, confusion matrix, the calibration of p(positive) and the
accuracy at the checkpoint's decision threshold (:func:`evaluation_metrics`); a regression's
Spearman, Pearson, MAE, RMSE and R²; with annotations, the attention inside them. It gives
the same probabilities as a run's validation for the same slide.

Example:
    >>> metrics = evaluate_manifest("RUN/checkpoints/best.ckpt", "test.csv", "eval")  # doctest: +SKIP
    >>> metrics["auc"]  # doctest: +SKIP
    0.93
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from gigastream.train.config import ConfigError, RunConfig
from gigastream.train.files import write_json
from gigastream.train.metrics import (
    accuracy_at,
    brier_score,
    expected_calibration_error,
)
from gigastream.train.module import MILClassifier
from gigastream.train.prediction import (
    load_checkpoint_parts,
    predict_rows,
    prediction_config,
    summarize,
    write_predictions,
)
from gigastream.train.regression import REGRESSION_METRICS
from gigastream.train.selection import (
    EVAL_SPLITS,
    OTHER_SPLITS,
    TRAIN_SPLITS,
    VAL_SPLITS,
    check_labels,
    check_split_names,
    check_targets,
)
from gigastream.wsi.annotations import TUMOUR_CLASSES, check_classes
from gigastream.wsi.manifest import ManifestRow, read_manifest


def scored_rows(
    rows: Sequence[ManifestRow], split: str | None, manifest: str | Path | None = None
) -> tuple[list[ManifestRow], str]:
    """The rows ``evaluate`` scores, and which they are in words.

    Args:
        rows: the manifest's rows.
        split: ``val`` (split ``val``/``valid``/``validation``), ``test``
            (``test``/``testing``/``holdout``), ``all``, or ``None``: the slides whose split
            is not train when the manifest has a split column, else all.
        manifest: how messages name the manifest.

    Returns:
        The rows and e.g. ``"split not train (val: 8, test: 8)"``.

    Raises:
        ConfigError: an unknown ``split``, unknown split values in the manifest (each with
            the closest valid one), ``val``/``test`` on a manifest without a split column,
            or no slide of the asked split.
    """
    name = manifest or "the manifest"
    if split is not None and split not in EVAL_SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    has_split = any(r.split for r in rows)
    if has_split:
        check_split_names(rows, manifest)
    if split == "all" or (split is None and not has_split):
        why = _split_counts(rows) if has_split else "the manifest has no split column"
        return list(rows), f"all ({why})"
    if not has_split:
        raise ConfigError(
            f"--split {split}: {name} has no split column; score every slide with --split all "
            "(or give the manifest a split column: train/val/test)"
        )
    wanted = {"val": VAL_SPLITS, "test": OTHER_SPLITS}.get(split or "")
    if wanted is None:  # the default: every slide not trained on
        chosen = [r for r in rows if (r.split or "").lower() not in TRAIN_SPLITS]
        what = "not train"
    else:
        chosen = [r for r in rows if (r.split or "").lower() in wanted]
        what = split
    if not chosen:
        raise ConfigError(
            f"{name}: no slide has split {what} (splits: {_split_counts(rows)}); choose "
            "another --split"
        )
    return chosen, f"{what} ({_split_counts(chosen)})"


def _split_counts(rows: Sequence[ManifestRow]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        key = row.split or "(none)"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{key}: {n}" for key, n in counts.items())


def training_slides(config: RunConfig) -> set[Path]:
    """The slide files (resolved) a checkpoint was trained on: its stored manifest split as
    its run split it (:func:`~gigastream.train.selection.split_rows`); empty when that manifest
    or splits file is no longer readable."""
    from gigastream.train.selection import split_rows
    from gigastream.wsi.manifest import Manifest

    if config.manifest is None:
        return set()
    config = replace(config, data=replace(config.data, slide_mpp=None))  # no slide opened
    try:
        manifest = read_manifest(config.manifest, check_files=False)
        train, _ = split_rows(Manifest(manifest.rows, manifest.labels), config)
    except (OSError, ValueError):  # moved, edited or gone: nothing to compare with
        return set()
    return {Path(row.path).resolve() for row in train}


def evaluation_metrics(
    labels: Sequence[int], probs: np.ndarray, threshold: float | None
) -> dict[str, Any]:
    """Calibration and threshold metrics of labelled slides (``evaluate``), of the positive
    (last) class's probability: ``brier``, ``ece`` (10 equal-width bins), ``threshold`` and
    ``accuracy_at_threshold`` (the checkpoint's stored threshold; ``None`` without one or
    for more than two classes); NaN without slides."""
    probs = np.asarray(probs, dtype=np.float64)  # (slides, classes)
    binary = probs.shape[1] == 2
    use = threshold if binary else None
    return {
        "brier": brier_score(labels, probs),
        "ece": expected_calibration_error(labels, probs, bins=10),
        "threshold": use,
        "accuracy_at_threshold": None if use is None else accuracy_at(labels, probs, use),
    }


def evaluate_manifest(
    checkpoint: str | Path,
    manifest: str | Path,
    out: str | Path,
    device: str | None = None,
    progress: bool = True,
    num_workers: int | None = None,
    features_dir: str | Path | None = None,
    split: str | None = None,
    slide_mpp: float | None = None,
    annotations_dir: str | Path | None = None,
    *,
    tumour_classes: Sequence[str] = TUMOUR_CLASSES,
) -> dict[str, Any]:
    """Evaluate a checkpoint on the slides of a manifest: ``metrics.json`` + ``predictions.csv``.

    Args:
        features_dir: the slides' feature files ``<slide_id>.h5``, for a checkpoint trained
            on cached features (default: its training run's ``data.features_dir``).
        split: which slides are scored (:func:`scored_rows`): ``val``, ``test``, ``all``;
            ``None``: the slides whose split is not train when the manifest has a split
            column, else all.
        slide_mpp: the mpp of slides without one of their own (no file metadata, no
            ``mpp`` in their row; :func:`~gigastream.train.selection.with_slide_mpp`).
        annotations_dir: a folder of annotation files ``<slide_id>.xml`` / ``.geojson``:
            the attention inside their tumour is measured (``annotations`` in the metrics,
            :func:`~gigastream.train.annotation_eval.annotation_metrics`).
        tumour_classes: the classes of ``annotations_dir``'s files that are tumour
            (``annotations.tumour_classes`` in the metrics; default
            :data:`~gigastream.wsi.annotations.TUMOUR_CLASSES`).

    Returns:
        The metrics: ``auc``, ``accuracy`` (at p = 0.5 for two classes: the most probable
        class), ``brier``, ``ece``, ``threshold`` and ``accuracy_at_threshold`` (the
        checkpoint's stored decision threshold, when it has one), ``loss``, ``split``
        (which slides were scored, in words), ``scored_slides`` (how many),
        ``training_slides_scored`` (the ids of those the checkpoint was trained on:
        :func:`training_slides`), ``slides`` (of them, the labelled ones that could be read), ``class_names``, ``positive_class``,
        per-slide predictions and skipped slides.

    Raises:
        RunError: a missing or foreign checkpoint.
        ConfigError: ``features_dir`` for a checkpoint that reads slides, or not a folder;
            a bad ``split`` (see :func:`scored_rows`) or ``slide_mpp``.
        ValueError: no or an empty tumour class (before the checkpoint is read).
        FeatureFileError: a feature file of another dimension than the checkpoint's model.
    """
    tumour_classes = check_classes(tumour_classes)
    module, config, saved = load_checkpoint_parts(checkpoint)
    config = prediction_config(config, device, num_workers, features_dir, slide_mpp)
    rows = read_manifest(manifest, check_files=config.model.kind != "features").rows
    rows, scored = scored_rows(rows, split, manifest)
    trained_on = training_slides(config)
    seen = sorted(r.slide_id for r in rows if Path(r.path).resolve() in trained_on)
    if module.regression:
        check_targets(rows, manifest)
    else:
        check_labels([r.label for r in rows], module.class_names)
    rows, out, data, results = predict_rows(module, config, rows, out, slide_mpp, progress)
    final = summarize(results, module.class_names)
    metrics = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "manifest": str(Path(manifest).resolve()),
        "split": scored,
        "scored_slides": len(rows),
        "training_slides_scored": seen,
        **_scores(module, results, final, saved.get("threshold")),
        "loss": final["loss"],
        "slides": final["slides"],
        "predictions": final["predictions"],
        "skipped_slides": final["skipped"],
    }
    if annotations_dir is not None:
        from gigastream.train.annotation_eval import annotation_metrics

        metrics["annotations"] = annotation_metrics(
            module, results, rows, data, annotations_dir, tumour_classes=tumour_classes
        )
    write_predictions(out / "predictions.csv", results, module.class_names)
    write_json(out / "metrics.json", metrics)
    return metrics


def _scores(
    module: MILClassifier,
    results: Sequence[dict[str, Any]],
    final: dict[str, Any],
    threshold: float | None,
) -> dict[str, Any]:
    """The scores of an evaluation: a classifier's AUC, accuracy, confusion matrix and
    :func:`evaluation_metrics`, with its classes; a regression run's metrics."""
    if module.regression:
        return {"task": "regression", **{name: final[name] for name in REGRESSION_METRICS}}
    labelled = [r for r in results if "probs" in r and r["label"] is not None]
    labels = [r["label"] for r in labelled]
    probs = (
        np.stack([r["probs"] for r in labelled])
        if labelled
        else np.zeros((0, len(module.class_names)))
    )
    return {
        "auc": final["auc"],
        "accuracy": final["accuracy"],
        **evaluation_metrics(labels, probs, threshold),
        "confusion_matrix": final["confusion_matrix"],  # of summarize: the same slides
        "class_names": module.class_names,
        "positive_class": module.class_names[-1],
    }


__all__ = [
    "evaluate_manifest",
    "evaluation_metrics",
    "scored_rows",
    "training_slides",
]
