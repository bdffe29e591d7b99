"""Training curves: loss per slide and per epoch, validation AUC and accuracy, as a PNG.

:func:`plot_training_curve` writes ``training_curve.png`` of a run (:func:`training_curve_figure`
is its figure): a title (the run), the loss by epoch (left; the legend says what the loss is
when it includes a head's instance loss, :func:`loss_terms`) and the validation AUC and
accuracy (right), the best epoch marked on both with its values (:func:`best_epoch`), and a
note where the validation AUC is undefined (one class among the validation slides).

Example:
    >>> epochs = [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.69, "val_auc": 0.75,
    ...            "val_accuracy": 0.5}]
    >>> plot_training_curve(epochs, "RUN/training_curve.png", title="RUN: resnet18 + clam_sb")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gigastream.atomic import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Colour of the best-epoch marks.
BEST_COLOUR = "tab:green"
#: The note drawn where the validation AUC is undefined.
UNDEFINED_AUC = "validation AUC undefined{where}: one class among the validation slides"


def _value(record: dict[str, Any], key: str) -> float:
    v = record.get(key)
    return math.nan if v is None else float(v)


def best_epoch(epochs: Sequence[dict[str, Any]]) -> int | None:
    """The epoch a run keeps as ``best.ckpt``: the highest validation AUC, ties broken by the
    lower validation loss, the first of equals (``MILClassifier``'s ``val_score``: the AUC,
    -1 when undefined, minus 1e-3 x the loss, 1e3 when undefined); ``None`` without epochs.

    Example:
        >>> best_epoch([{"epoch": 1, "val_auc": 0.9, "val_loss": 0.5},
        ...             {"epoch": 2, "val_auc": 0.9, "val_loss": 0.4},
        ...             {"epoch": 3, "val_auc": None, "val_loss": 0.1}])
        2
    """
    best, top = None, -math.inf
    for record in epochs:
        auc, loss = _value(record, _primary(record)), _value(record, "val_loss")
        score = (auc if math.isfinite(auc) else -1.0) - 1e-3 * (
            loss if math.isfinite(loss) else 1e3
        )
        if score > top:
            best, top = int(record["epoch"]), score
    return best


def _primary(record: dict[str, Any]) -> str:
    """The key of the validation score the best checkpoint is chosen by: ``val_auc``, or
    ``val_spearman`` for a regression run."""
    return "val_spearman" if "val_spearman" in record else "val_auc"


def loss_terms(head: Any) -> str | None:
    """What a MIL head's training loss is, when it is more than the bag cross-entropy.

    CLAM heads (``bag_weight < 1``) add their instance clustering loss and, with
    ``instance_weight > 0``, their every-instance loss; top-k heads with
    ``instance_weight > 0`` their instance loss; other heads return ``None`` (the loss is
    the bag cross-entropy).

    Example:
        >>> from gigastream.mil.clam import CLAM
        >>> print(loss_terms(CLAM(in_dim=8, num_classes=2)))
        loss = 0.7 × bag cross-entropy
        + 0.3 × CLAM instance loss
    """
    bag_weight = getattr(head, "bag_weight", None)
    instance_weight = getattr(head, "instance_weight", None)
    terms = []
    if bag_weight is not None and float(bag_weight) < 1.0:  # CLAM's clustering loss
        terms = [
            f"{float(bag_weight):g} × bag cross-entropy",
            f"{1.0 - float(bag_weight):g} × CLAM instance loss",
        ]
    if instance_weight is not None and float(instance_weight) > 0.0:
        kind = "every-instance loss" if bag_weight is not None else "top-k instance loss"
        terms = (terms or ["bag cross-entropy"]) + [f"{float(instance_weight):g} × {kind}"]
    return "loss = " + "\n+ ".join(terms) if terms else None


def _ranges(numbers: Sequence[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``'1-3, 5'``."""
    parts: list[str] = []
    start = prev = None
    for n in list(numbers) + [None]:
        if start is not None and (n is None or n != prev + 1):
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = None
        if n is not None and start is None:
            start = n
        prev = n
    return ", ".join(parts)


def training_curve_figure(
    epochs: Sequence[dict[str, Any]],
    title: str | None = None,
    best: int | None = None,
    loss: str | None = None,
) -> Figure:
    """The figure of :func:`plot_training_curve` (a matplotlib ``Figure``, not saved).

    Args:
        epochs: per-epoch records (see :func:`plot_training_curve`).
        title: the figure's title (``fig._suptitle``).
        best: the epoch to mark as the best; default :func:`best_epoch` of ``epochs``.
        loss: what the loss is (e.g. :func:`loss_terms`), the loss legend's title.

    Returns:
        The figure; ``fig.axes`` are the loss and the validation metric axes.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    numbers = [int(r["epoch"]) for r in epochs]
    fig = Figure(figsize=(9, 3.6), dpi=100)
    ax_loss, ax_metric = fig.subplots(1, 2)
    steps = [
        (r["epoch"] - 1 + (i + 1) / len(r["train_slide_losses"]), value)
        for r in epochs
        for i, value in enumerate(r.get("train_slide_losses") or [])
    ]
    if steps:
        xs, ys = zip(*steps, strict=True)
        ax_loss.plot(xs, ys, ".", color="0.75", markersize=3, label="train (per slide)")
    val_loss = [_value(r, "val_loss") for r in epochs]
    ax_loss.plot(
        numbers, [_value(r, "train_loss") for r in epochs], "o-", label="train (epoch mean)"
    )
    ax_loss.plot(numbers, val_loss, "s-", label="validation")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    regression = bool(epochs) and _primary(epochs[0]) == "val_spearman"
    aucs = [_value(r, _primary(r)) for r in epochs]
    undefined = [n for n, auc in zip(numbers, aucs, strict=True) if not math.isfinite(auc)]
    name = "Spearman" if regression else "AUC"
    auc_label = f"validation {name}" + (" (undefined)" if undefined == numbers else "")
    ax_metric.plot(numbers, aucs, "o-", label=auc_label)
    second = ("val_r2", "validation R²") if regression else ("val_accuracy", "validation accuracy")
    ax_metric.plot(numbers, [_value(r, second[0]) for r in epochs], "s--", label=second[1])
    ax_metric.axhline(0.0 if regression else 0.5, color="0.6", lw=0.8, ls=":")
    ax_metric.set_ylim(-1.02 if regression else -0.02, 1.02)
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel("validation Spearman / R²" if regression else "validation AUC / accuracy")
    best = best_epoch(epochs) if best is None else best
    if best in numbers:
        i = numbers.index(best)
        for ax in (ax_loss, ax_metric):
            ax.axvline(best, color=BEST_COLOUR, lw=1.0, ls="--", zorder=0)
        if math.isfinite(val_loss[i]):
            ax_loss.plot([best], [val_loss[i]], "*", color=BEST_COLOUR, markersize=11, zorder=3)
        if math.isfinite(aucs[i]):
            ax_metric.plot(
                [best],
                [aucs[i]],
                "*",
                color=BEST_COLOUR,
                markersize=11,
                zorder=3,
                label=f"best: epoch {best}, {name} {aucs[i]:.3f}",
            )
        else:
            ax_metric.plot(
                [],
                [],
                "--",
                color=BEST_COLOUR,
                label=f"best: epoch {best}, val loss {val_loss[i]:.3f}",
            )
    if undefined:
        plural = "s" if len(undefined) > 1 else ""
        where = "" if undefined == numbers else f" in epoch{plural} {_ranges(undefined)}"
        ax_metric.text(
            0.5,
            0.97,
            UNDEFINED_AUC.format(where=where).replace(": ", ":\n"),
            transform=ax_metric.transAxes,
            ha="center",
            va="top",
            fontsize=8,
            color="0.25",
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.7", "alpha": 0.9},
            gid="undefined_auc",
        )
    ax_loss.legend(fontsize=8, title=loss, title_fontsize=7)
    ax_metric.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def plot_training_curve(
    epochs: Sequence[dict[str, Any]],
    out: str | Path,
    title: str | None = None,
    best: int | None = None,
    loss: str | None = None,
) -> Path:
    """Write the training curve of a run.

    Args:
        epochs: per-epoch records with ``epoch``, ``train_loss``, ``val_loss``, ``val_auc``,
            ``val_accuracy`` and optionally ``train_slide_losses`` (as in ``metrics.json``;
            an undefined AUC is NaN or ``None``).
        out: PNG file to write.
        title: the figure's title (also the PNG's ``Title`` text chunk); default
            ``training curve: <the folder of out>`` (the run's folder).
        best: the epoch of the run's best checkpoint, marked with its values; default
            :func:`best_epoch` of ``epochs`` (the same choice).
        loss: what the loss is, shown as the loss legend's title, e.g. :func:`loss_terms`
            of the model's head when it adds an instance loss.

    Returns:
        ``out``.
    """
    out = Path(out)
    if title is None:
        title = f"training curve: {out.resolve().parent.name}"
    fig = training_curve_figure(epochs, title, best, loss)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", metadata={"Title": title}))
    return out


__all__ = [
    "best_epoch",
    "loss_terms",
    "plot_training_curve",
    "training_curve_figure",
]
