"""The results of a regression run (``task: regression``): its metrics, its per-slide
predictions and ``predictions.csv`` (``slide_id,label,prediction``).

A regression run's per-slide results (of
:func:`~gigastream.train.prediction.run_predictions`) hold ``prediction`` (the value, in
the label's own units) where a classifier's hold ``probs``;
:func:`~gigastream.train.prediction.summarize` and
:func:`~gigastream.train.prediction.write_predictions` hand them here.

Example:
    >>> summary = summarize_values([{"slide_id": "a", "label": 1.0, "prediction": 1.2, "loss": 0.1},
    ...                             {"slide_id": "b", "label": 3.0, "prediction": 2.5, "loss": 0.2}])
    >>> round(summary["spearman"], 6), round(summary["mae"], 2)
    (1.0, 0.35)
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gigastream.train.files import atomic_write_text
from gigastream.train.metrics import regression_metrics

#: The metrics of a regression run, named after its slides like a classifier's
#: (``val_spearman``, ...).
REGRESSION_METRICS = ("spearman", "pearson", "mae", "rmse", "r2")


def summarize_values(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Metrics and per-slide predictions of a regression run's results.

    Returns:
        :data:`REGRESSION_METRICS` and ``loss`` (of the labelled slides; NaN without any),
        ``slides`` (labelled slides), ``prediction_range``, ``predictions`` (``slide_id``,
        ``label``, ``prediction``) and ``skipped`` (slide id -> reason).
    """
    usable = [r for r in results if "prediction" in r]
    labelled = [r for r in usable if r["label"] is not None]
    metrics = regression_metrics(
        [float(r["label"]) for r in labelled], [r["prediction"] for r in labelled]
    )
    values = np.array([r["prediction"] for r in usable], dtype=np.float64)
    return {
        **metrics,
        "loss": float(np.mean([r["loss"] for r in labelled])) if labelled else math.nan,
        "slides": len(labelled),
        "prediction_range": [float(values.min()), float(values.max())] if len(values) else None,
        "predictions": [
            {
                "slide_id": r["slide_id"],
                "label": None if r["label"] is None else float(r["label"]),
                "prediction": float(r["prediction"]),
            }
            for r in usable
        ],
        "skipped": {r["slide_id"]: r["error"] for r in results if "error" in r},
    }


def _number(value: float) -> str:
    return f"{value:.6g}"


def write_value_predictions(path: Path, results: Sequence[dict[str, Any]]) -> Path:
    """``predictions.csv`` of a regression run: ``slide_id``, ``label`` (empty when
    unknown), ``prediction``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["slide_id", "label", "prediction"])
    for r in results:
        if "prediction" not in r:
            continue
        label = "" if r["label"] is None else _number(float(r["label"]))
        writer.writerow([r["slide_id"], label, _number(float(r["prediction"]))])
    return atomic_write_text(path, buffer.getvalue())


def value_words(metrics: dict[str, Any], prefix: str = "") -> str:
    """A regression run's metrics in words, e.g. ``Spearman 0.812, MAE 1.3, R² 0.61``.

    Example:
        >>> value_words({"val_spearman": 0.8123, "val_mae": 1.31, "val_r2": 0.6}, "val_")
        'Spearman 0.812, MAE 1.31, R² 0.600'
    """

    def shown(name: str, digits: str) -> str:
        value = metrics.get(prefix + name)
        if value is None or not math.isfinite(value):
            return "n/a"
        return format(value, digits)

    return (
        f"Spearman {shown('spearman', '.3f')}, MAE {shown('mae', '.3g')}, R² {shown('r2', '.3f')}"
    )


__all__ = ["REGRESSION_METRICS", "summarize_values", "value_words", "write_value_predictions"]
