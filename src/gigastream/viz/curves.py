"""Training curves: loss per slide and per epoch, validation AUC and accuracy, as a PNG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_training_curve(epochs: Sequence[dict[str, Any]], out: str | Path) -> Path:
    """Write the training curve of a run.

    Args:
        epochs: per-epoch records with ``epoch``, ``train_loss``, ``val_loss``, ``val_auc``,
            ``val_accuracy`` and optionally ``train_slide_losses`` (as in ``metrics.json``).
        out: PNG file to write.

    Returns:
        ``out``.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    def value(record: dict[str, Any], key: str) -> float:
        v = record.get(key)
        return math.nan if v is None else float(v)

    numbers = [r["epoch"] for r in epochs]
    fig = Figure(figsize=(9, 3.6), dpi=100)
    ax_loss, ax_metric = fig.subplots(1, 2)
    steps = [
        (r["epoch"] - 1 + (i + 1) / len(r["train_slide_losses"]), loss)
        for r in epochs
        for i, loss in enumerate(r.get("train_slide_losses") or [])
    ]
    if steps:
        xs, ys = zip(*steps, strict=True)
        ax_loss.plot(xs, ys, ".", color="0.75", markersize=3, label="train (per slide)")
    ax_loss.plot(
        numbers, [value(r, "train_loss") for r in epochs], "o-", label="train (epoch mean)"
    )
    ax_loss.plot(numbers, [value(r, "val_loss") for r in epochs], "s-", label="validation")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=8)
    ax_metric.plot(numbers, [value(r, "val_auc") for r in epochs], "o-", label="validation AUC")
    ax_metric.plot(
        numbers, [value(r, "val_accuracy") for r in epochs], "s--", label="validation accuracy"
    )
    ax_metric.axhline(0.5, color="0.6", lw=0.8, ls=":")
    ax_metric.set_ylim(-0.02, 1.02)
    ax_metric.set_xlabel("epoch")
    ax_metric.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    return out


__all__ = ["plot_training_curve"]
