"""Predictions of a trained classifier: rebuilt from its checkpoint alone, run with
Lightning's predict loop, summarised and written.

:func:`load_classifier` rebuilds the model of a checkpoint (nothing else is needed: the
config, the class names, the normalisation and the tissue settings travel in it);
:func:`run_predictions` gives per-slide results; :func:`summarize` their metrics under
neutral names (``auc``, ``accuracy``, ``loss``; a regression's ``spearman``, ...;
:func:`prefixed` names them after the slides, e.g. ``val_auc``); :func:`write_predictions`
writes ``predictions.csv``. :func:`predict_slide_files` (``gigastream predict`` and
``heatmap``) gives the same probabilities as a run's validation for the same slide; for a
checkpoint trained on cached features (``model.kind: features``) it takes the slides'
feature files from ``features_dir`` (default: the training run's).
:func:`validation_threshold` chooses a decision threshold on validation results and
:func:`store_threshold` stores it. Evaluating a manifest (``gigastream evaluate``) is
:mod:`gigastream.train.evaluation`.

Example:
    >>> results = predict_slide_files("RUN/checkpoints/best.ckpt", ["a.tif"], "pred")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from gigastream.train.config import ConfigError, DataConfig, RunConfig
from gigastream.train.config_files import load_config, merge
from gigastream.train.data import run_patches
from gigastream.train.files import (
    RunError,
    atomic_save,
    atomic_write_text,
    check_writable_folder,
    load_checkpoint_file,
)
from gigastream.train.heatmaps import write_heatmaps
from gigastream.train.loaders import slide_loader
from gigastream.train.metrics import (
    classification_metrics,
    confusion_matrix,
    youden_threshold,
)
from gigastream.train.module import MILClassifier
from gigastream.train.preparation import build_model
from gigastream.train.regression import (
    REGRESSION_METRICS,
    summarize_values,
    write_value_predictions,
)
from gigastream.train.selection import (
    is_regression,
    parse_target,
    with_slide_mpp,
)
from gigastream.train.trainer import build_trainer, resolve_device
from gigastream.wsi.annotations import TUMOUR_CLASSES, check_classes
from gigastream.wsi.manifest import ManifestRow

#: The metrics of :func:`summarize` that a caller names after its slides (:func:`prefixed`).
METRICS = ("auc", "accuracy", "loss", *REGRESSION_METRICS)


def run_predictions(
    module: MILClassifier,
    rows: Sequence[ManifestRow],
    config: RunConfig,
    data: DataConfig | None = None,
    progress: bool = False,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Per-slide results of a trained module: ``probs``, ``loss``, ``attention_map``, ``error``.

    Runs Lightning's predict loop (same precision as training, one device).
    """
    data = data or config.data
    train = replace(config.train, device=device or config.train.device, devices=1)
    accelerator, devices = resolve_device(train)
    module.data = data
    train = replace(train, progress=progress)
    trainer = build_trainer(train, None, accelerator, devices, for_training=False)
    loader = slide_loader(rows, module.class_names, data, patches=run_patches(config))
    return list(trainer.predict(module, loader, return_predictions=True) or [])


def summarize(results: Sequence[dict[str, Any]], class_names: Sequence[str]) -> dict[str, Any]:
    """Metrics and per-slide predictions of results, under neutral names.

    Returns:
        ``auc``, ``accuracy``, ``loss`` (of the labelled slides; NaN without any),
        ``confusion_matrix`` (``[true][predicted]`` counts, classes in index order),
        ``slides`` (labelled slides), ``prob_range`` (of p(last class)), ``predictions``
        and ``skipped`` (slide id -> reason). :func:`prefixed` names the metrics after
        the slides, e.g. ``val_auc``. A regression run (class names ``["value"]``):
        :func:`~gigastream.train.regression.summarize_values`.
    """
    if is_regression(class_names):
        return summarize_values(results)
    usable = [r for r in results if "probs" in r]
    labelled = [r for r in usable if r["label"] is not None]
    metrics: dict[str, Any] = {"auc": math.nan, "accuracy": math.nan, "loss": math.nan}
    if labelled:
        metrics.update(
            classification_metrics(
                [r["label"] for r in labelled], np.stack([r["probs"] for r in labelled])
            )
        )
        metrics["loss"] = float(np.mean([r["loss"] for r in labelled]))
    positive = np.array([r["probs"][-1] for r in usable]) if usable else np.zeros(0)
    labels = [r["label"] for r in labelled]
    probs = (
        np.stack([r["probs"] for r in labelled]) if labelled else np.zeros((0, len(class_names)))
    )
    return {
        "auc": metrics["auc"],
        "accuracy": metrics["accuracy"],
        "loss": metrics["loss"],
        "slides": len(labelled),
        "confusion_matrix": confusion_matrix(labels, probs),
        "prob_range": [float(positive.min()), float(positive.max())] if len(positive) else None,
        "predictions": [
            {
                "slide_id": r["slide_id"],
                "label": None if r["label"] is None else class_names[r["label"]],
                "probs": [float(p) for p in r["probs"]],
            }
            for r in usable
        ],
        "skipped": {r["slide_id"]: r["error"] for r in results if "error" in r},
    }


def prefixed(summary: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``summary`` with its :data:`METRICS` named ``<prefix><metric>`` (e.g. ``val_auc``).

    Example:
        >>> prefixed({"auc": 0.9, "slides": 4}, "val_")
        {'val_auc': 0.9, 'slides': 4}
    """
    return {(prefix + k if k in METRICS else k): v for k, v in summary.items()}


def write_predictions(
    path: Path, results: Sequence[dict[str, Any]], class_names: Sequence[str]
) -> Path:
    """``predictions.csv``: ``slide_id``, ``label`` (empty when unknown), ``p_<class>`` columns
    (a regression run: ``prediction``)."""
    if is_regression(class_names):
        return write_value_predictions(path, results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["slide_id", "label", *[f"p_{name}" for name in class_names]])
    for r in results:
        if "probs" not in r:
            continue
        label = "" if r["label"] is None else class_names[r["label"]]
        writer.writerow([r["slide_id"], label, *[f"{float(p):.6f}" for p in r["probs"]]])
    return atomic_write_text(path, buffer.getvalue())


def load_classifier(checkpoint: str | Path) -> tuple[MILClassifier, RunConfig]:
    """Rebuild a trained classifier from its checkpoint alone (``weights_only=True``).

    Raises:
        RunError: a missing, corrupt or foreign checkpoint (the message names the file).
    """
    module, config, _ = load_checkpoint_parts(checkpoint)
    return module, config


def load_checkpoint_parts(
    checkpoint: str | Path,
) -> tuple[MILClassifier, RunConfig, dict[str, Any]]:
    """:func:`load_classifier` and the checkpoint's ``gigastream`` section (its class names,
    config, stored decision threshold)."""
    state = load_checkpoint_file(checkpoint)
    saved = state.get("gigastream")
    if not isinstance(saved, dict) or "config" not in saved:
        raise RunError(f"{checkpoint}: not a gigastream checkpoint (no gigastream section)")
    try:  # the weights come from the checkpoint, not from the (maybe absent) files
        stored = merge(saved["config"], {"model": {}, "patches": {"encoder": {}}, "data": {}})
        stored["model"]["weights"] = None
        stored["patches"]["encoder"]["weights"] = None
        stored["data"]["roi_dir"] = None  # an ROI restricts training; prediction reads all tissue
        config = load_config(stored, source=f"{checkpoint} (stored config)")
    except ConfigError as exc:
        raise RunError(str(exc)) from None
    class_names = list(saved["class_names"])
    model = build_model(config, len(class_names))
    module = MILClassifier(
        model,
        class_names,
        config.optim,
        config.data,
        config.train.seed,
        saved["config"],
        config.target,
    )
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise RunError(f"{checkpoint}: weights do not fit the stored model: {exc}") from None
    module.eval()
    return module, config, saved


def validation_threshold(
    results: Sequence[dict[str, Any]], class_names: Sequence[str]
) -> float | None:
    """The decision threshold on p(positive class) chosen on validation results (of
    :func:`run_predictions`) by Youden's J (:func:`~gigastream.train.metrics.youden_threshold`);
    ``None`` for more than two classes or validation slides of one class.

    Example (at the end of training, on the best model's validation results)::

        store_threshold(best_path, validation_threshold(results, class_names))
    """
    labelled = [r for r in results if "probs" in r and r["label"] is not None]
    if len(class_names) != 2 or not labelled:
        return None
    labels = [r["label"] for r in labelled]
    return youden_threshold(labels, np.stack([r["probs"] for r in labelled]))


def store_threshold(checkpoint: str | Path, threshold: float | None) -> None:
    """Store a decision threshold on p(positive class) in a checkpoint (its ``gigastream``
    section's ``threshold``; rewritten atomically), for ``evaluate`` to report the accuracy
    at it. ``None``: nothing is written.

    Raises:
        RunError: a missing, corrupt or foreign checkpoint.
    """
    if threshold is None:
        return
    state = load_checkpoint_file(checkpoint)
    if not isinstance(state.get("gigastream"), dict):
        raise RunError(f"{checkpoint}: not a gigastream checkpoint (no gigastream section)")
    state["gigastream"]["threshold"] = float(threshold)
    atomic_save(state, checkpoint)


def _slide_rows(slides: Sequence[str | Path]) -> list[ManifestRow]:
    rows, seen = [], set()
    for slide in slides:
        path = Path(slide)
        if not path.exists():
            raise ConfigError(f"{path}: slide not found")
        slide_id = path.stem
        if slide_id in seen:
            raise ConfigError(f"two slides are named {slide_id!r}; give each slide once")
        seen.add(slide_id)
        rows.append(ManifestRow(slide_id, path.resolve(), "", slide_id))
    return rows


def prediction_config(
    config: RunConfig,
    device: str | None,
    workers: int | None,
    features_dir: str | Path | None,
    slide_mpp: float | None = None,
) -> RunConfig:
    """The checkpoint's config for prediction on this machine; its training run's
    ``data.slide_mpp`` (the mpp of *its* slides without one) is replaced by ``slide_mpp``."""
    train = replace(config.train, device=device or "auto", devices=1, progress=False)
    data = replace(config.data, slide_mpp=slide_mpp)
    data = data if workers is None else replace(data, num_workers=workers)
    if features_dir is not None:
        if config.model.kind != "features":
            raise ConfigError(
                f"--features {features_dir}: this checkpoint is a model.kind "
                f"{config.model.kind} model, which reads slides; --features is for a "
                "checkpoint trained on cached features (gigastream train --features DIR)"
            )
        data = replace(data, features_dir=str(features_dir))
    config = replace(config, train=train, data=data)
    config.data.validate()  # --slide-mpp
    resolve_device(config.train)  # validate before any output
    return config


def check_feature_files(config: RunConfig, rows: Sequence[ManifestRow]) -> None:
    """A feature model: every existing feature file of ``rows`` has the checkpoint's
    dimension (FeatureFileError naming the file and both dimensions otherwise)."""
    if config.model.kind == "features":
        from gigastream.train.feature_data import check_feature_files

        features = config.features
        check_feature_files(config.data.features_dir, rows, features.feature_dim, features.encoder)


def predict_rows(
    module: MILClassifier,
    config: RunConfig,
    rows: Sequence[ManifestRow],
    out: str | Path,
    slide_mpp: float | None,
    progress: bool,
) -> tuple[list[ManifestRow], Path, DataConfig, list[dict[str, Any]]]:
    """The predictions of ``module`` on ``rows`` into the folder ``out`` (its tissue masks in
    ``out/masks``), after checking the feature files and filling in ``slide_mpp``.

    Returns:
        ``(rows, out, data, results)``: the rows as predicted (with their mpp), the checked
        folder, how the slides were read, and :func:`run_predictions`'s per-slide results.
    """
    check_feature_files(config, rows)
    rows = list(rows)
    if config.model.kind != "features":
        rows = with_slide_mpp(rows, slide_mpp, config.data.backend)
    out = check_writable_folder(out)
    data = replace(config.data, mask_dir=str(out / "masks"))
    return rows, out, data, run_predictions(module, rows, config, data, progress=progress)


def _with_labels(
    rows: list[ManifestRow], labels: dict[str, ManifestRow], class_names: Sequence[str]
) -> list[ManifestRow]:
    """``rows`` with the label and mpp of their slide id in ``labels`` (ConfigError: a label
    that is not one of ``class_names``, or not a number for a regression run)."""
    if is_regression(class_names):
        bad = sorted({r.label for r in labels.values() if parse_target(r.label) is None})
    else:
        bad = sorted({r.label for r in labels.values()} - set(class_names))
    if bad:
        raise ConfigError(
            f"label(s) {', '.join(map(repr, bad))} not among the checkpoint's classes "
            f"{list(class_names)} (labels are case- and space-sensitive)"
        )
    return [
        replace(row, label=labels[row.slide_id].label, mpp=labels[row.slide_id].mpp)
        if row.slide_id in labels
        else row
        for row in rows
    ]


def predict_slide_files(
    checkpoint: str | Path,
    slides: Sequence[str | Path],
    out: str | Path,
    device: str | None = None,
    progress: bool = True,
    heatmaps: bool = False,
    tiff: bool = False,
    lesion_dir: str | Path | None = None,
    num_workers: int | None = None,
    features_dir: str | Path | None = None,
    labels: dict[str, ManifestRow] | None = None,
    opacity: float | None = None,
    slide_mpp: float | None = None,
    annotations_dir: str | Path | None = None,
    *,
    tumour_classes: Sequence[str] = TUMOUR_CLASSES,
) -> dict[str, Any]:
    """Class probabilities (``predictions.csv``) and optionally heatmaps of slide files
    (``gigastream predict``, and ``gigastream heatmap`` with ``heatmaps=True``).

    Args:
        features_dir: for a checkpoint trained on cached features, the folder of the
            slides' ``<slide_id>.h5`` (default: its training run's); a slide is named by
            its file's stem, so ``slides`` may be the slide files or their ``.h5`` files.
        labels: the slides' true labels (and mpp), by slide id
            (:func:`~gigastream.train.heatmaps.slide_labels`): in ``predictions.csv`` and
            the heatmap titles; a slide without one has no label.
        opacity: of the heatmaps' colours (0-1; default the heatmap style's).
        slide_mpp: the mpp of slides without one of their own (no file metadata, no
            ``mpp`` in ``labels``; ``--slide-mpp``); a slide with its own mpp keeps it.
        annotations_dir: annotation files ``<slide_id>.xml`` / ``.geojson`` whose tumour
            the heatmaps outline (instead of ``lesion_dir``'s masks).
        tumour_classes: the classes of those files that are tumour (default
            :data:`~gigastream.wsi.annotations.TUMOUR_CLASSES`).

    Returns:
        ``predictions``, ``skipped_slides`` and the written ``heatmaps``.

    Raises:
        ConfigError: a missing slide file; ``features_dir`` for a checkpoint that reads
            slides; a label that is not one of the checkpoint's classes (before any output).
        FeatureFileError: a feature file of another dimension than the checkpoint's model.
        ValueError: an opacity outside 0-1, no or an empty tumour class (before anything
            is read).
    """
    tumour_classes = check_classes(tumour_classes)
    if opacity is not None:
        from gigastream.viz.heatmap import check_opacity

        check_opacity(opacity, "--opacity")
    module, config = load_classifier(checkpoint)
    config = prediction_config(config, device, num_workers, features_dir, slide_mpp)
    rows = _with_labels(_slide_rows(slides), labels or {}, module.class_names)
    rows, out, data, results = predict_rows(module, config, rows, out, slide_mpp, progress)
    final = summarize(results, module.class_names)
    write_predictions(out / "predictions.csv", results, module.class_names)
    paths = []
    if heatmaps:
        paths = write_heatmaps(
            module,
            results,
            rows,
            out,
            data,
            tiff=tiff,
            lesion_dir=lesion_dir,
            opacity=opacity,
            annotation_dir=annotations_dir,
            tumour_classes=tumour_classes,
        )
    return {
        "class_names": module.class_names,
        "predictions": final["predictions"],
        "skipped_slides": final["skipped"],
        "heatmaps": [str(p) for p in paths],
    }


__all__ = [
    "METRICS",
    "check_feature_files",
    "load_checkpoint_parts",
    "load_classifier",
    "predict_slide_files",
    "prefixed",
    "predict_rows",
    "prediction_config",
    "run_predictions",
    "store_threshold",
    "summarize",
    "validation_threshold",
    "write_predictions",
]
