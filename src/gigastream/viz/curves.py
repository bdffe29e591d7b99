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


def plot_resolution(rows: Sequence[dict[str, Any]], out: str | Path) -> Path:
    """Write the resolution experiment's plot: test AUC and lesion attention against mpp.

    Left: test AUC of every run (dots) and the mean ± sd per resolution, against the
    resolution (µm/px, log scale, finest on the left). Right: attention mass on lesion
    instances and the fraction of instances that overlap a lesion (mean ± sd), if measured.

    Args:
        rows: ``results.json`` rows of :mod:`gigastream.train.resolution` (``mpp``,
            ``test_auc``, ``attention_in_lesion``, ``lesion_fraction``).
        out: PNG file to write.

    Returns:
        ``out``.
    """
    from matplotlib.figure import Figure

    from gigastream.train.metrics import mean_sd

    mpps = sorted({float(r["mpp"]) for r in rows})

    def stats(key: str) -> tuple[list[float], list[float]]:
        pairs = [mean_sd([r[key] for r in rows if r["mpp"] == m]) for m in mpps]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    fig = Figure(figsize=(9, 3.8), dpi=100)
    ax_auc, ax_att = fig.subplots(1, 2)
    for ax in (ax_auc, ax_att):
        ax.set_xscale("log", base=2)
        ax.set_xticks(mpps, [f"{m:g}" for m in mpps])
        ax.minorticks_off()
        ax.set_xlabel("resolution (µm/px; coarser →)")
    seen = [(float(r["mpp"]), r["test_auc"]) for r in rows if r["test_auc"] is not None]
    if seen:
        xs, ys = zip(*seen, strict=True)
        ax_auc.plot(xs, ys, "o", color="0.6", markersize=4, label="one run (seed)")
    mean, sd = stats("test_auc")
    ax_auc.errorbar(mpps, mean, yerr=sd, fmt="s-", capsize=4, label="mean ± sd")
    ax_auc.axhline(0.5, color="0.6", lw=0.8, ls=":", label="chance")
    ax_auc.set_ylim(0.3, 1.02)
    ax_auc.set_ylabel("test AUC")
    ax_auc.legend(fontsize=8, loc="lower left")
    if any(r.get("attention_in_lesion") is not None for r in rows):
        mean, sd = stats("attention_in_lesion")
        ax_att.errorbar(mpps, mean, yerr=sd, fmt="o-", capsize=4, label="attention on lesions")
        mean, sd = stats("lesion_fraction")
        ax_att.errorbar(
            mpps, mean, yerr=sd, fmt="s--", capsize=4, label="lesion fraction of instances"
        )
        ax_att.set_ylim(0, 1.02)
        ax_att.set_ylabel("share (positive test slides)")
        ax_att.legend(fontsize=8, loc="upper left")
    else:
        ax_att.set_axis_off()
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    return out
