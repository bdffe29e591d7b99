"""Attention against annotated tumour: how much of a slide's attention lies on the instances
inside annotated tumour, and how well attention ranks them (``gigastream evaluate
--annotations DIR``).

The weakly supervised localisation check of attention MIL (Ilse et al., ICML 2018; Lu et al.,
CLAM, Nat. Biomed. Eng. 2021): a slide-level model that found the lesions should put its
attention on them. Per slide, with its attention map ``a`` (``(rows, cols)``, NaN where there
is no instance) and the instances whose cell overlaps annotated tumour (:func:`cells_on_mask`):

- ``attention_in_tumour``: the attention mass on those instances, ``sum(a[in]) / sum(a)``;
- ``tumour_instance_fraction``: the fraction of the instances that are in tumour (what the
  mass would be under uniform attention);
- ``enrichment``: their ratio (1: no better than uniform; the higher, the more the attention
  is localised on the tumour);
- ``instance_auc``: the ROC AUC of attention as the score of "the instance is in tumour".

:func:`slide_localisation` computes them for one slide, :func:`summarize_localisation` over
slides: the ``mean`` of the per-slide values and the ``pooled`` values of all their instances
together, each slide's attention taken as attention x N (relative to uniform attention over
its N instances, so that slides of different sizes compare). Only slides with at least one
instance in tumour enter the summary. :func:`annotation_metrics` runs it all on the results of
:func:`~gigastream.train.prediction.run_predictions` and an annotation folder (tumour classes:
``tumour_classes``, by default :data:`~gigastream.wsi.annotations.TUMOUR_CLASSES`; exclusions
subtracted).

Example:
    >>> import numpy as np
    >>> attention = np.array([[0.5, 0.25], [0.25, np.nan]])  # 3 instances
    >>> inside = np.array([[True, False], [False, False]])
    >>> s = slide_localisation(attention, inside)
    >>> s["attention_in_tumour"], round(s["tumour_instance_fraction"], 3), s["instance_auc"]
    (0.5, 0.333, 1.0)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from gigastream.train.config import DataConfig
from gigastream.wsi.annotations import TUMOUR_CLASSES, check_classes
from gigastream.wsi.manifest import ManifestRow
from gigastream.wsi.reader import SlideError, SlideReader
from gigastream.wsi.tissue import TissueMask

logger = logging.getLogger(__name__)

#: Sample points per cell edge at which a cell is tested against the tumour mask; the mask
#: is rasterised at ``cell_um / CELL_SAMPLES`` so that the points are its pixel centres.
CELL_SAMPLES = 4
#: The per-slide and summary measures (see the module docstring).
MEASURES = ("attention_in_tumour", "tumour_instance_fraction", "enrichment", "instance_auc")


def cells_on_mask(
    mask: TissueMask, grid_shape: tuple[int, int], cell_um: float, samples: int = CELL_SAMPLES
) -> np.ndarray:
    """Which cells of an attention grid overlap a mask.

    Cell ``[i, j]`` covers ``[j * cell_um, (j + 1) * cell_um) x [i * cell_um, (i + 1) *
    cell_um)`` microns from the slide's top-left corner; it overlaps the mask when the mask is
    True at any of ``samples x samples`` points spread evenly over it (the centres of its
    sub-cells). With the mask at ``mpp = cell_um / samples`` (as :func:`annotation_metrics`
    rasterises it) those points are exactly the mask's pixel centres in the cell, so a cell
    overlaps when any mask pixel in it is True.

    Args:
        mask: a bool mask over the slide with its ``mpp`` (microns per pixel).
        grid_shape: ``(rows, cols)`` of the attention grid.
        cell_um: edge of one cell in microns.
        samples: sample points per cell edge.

    Returns:
        ``(rows, cols)`` bool; cells beyond the mask's edge do not overlap.

    Example:
        >>> m = TissueMask(np.eye(4, dtype=bool), mpp=1.0)  # a diagonal, 4 x 4 um
        >>> cells_on_mask(m, (2, 2), cell_um=2.0, samples=2).tolist()
        [[True, False], [False, True]]
    """
    if not (math.isfinite(cell_um) and cell_um > 0):
        raise ValueError(f"cell_um must be a positive number of microns, got {cell_um!r}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    rows, cols = grid_shape
    height, width = mask.mask.shape
    step = cell_um / samples / mask.mpp  # mask px between sample points
    ys = np.floor((np.arange(rows * samples) + 0.5) * step + 1e-9).astype(np.int64)
    xs = np.floor((np.arange(cols * samples) + 0.5) * step + 1e-9).astype(np.int64)
    on = np.zeros((rows * samples, cols * samples), dtype=bool)
    inside_y, inside_x = ys < height, xs < width
    on[np.ix_(inside_y, inside_x)] = np.asarray(mask.mask, bool)[np.ix_(ys[inside_y], xs[inside_x])]
    return on.reshape(rows, samples, cols, samples).any(axis=(1, 3))


def instance_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``scores`` ``(N,)`` for the bool labels ``positive`` ``(N,)`` (the
    Mann-Whitney statistic, ties counted half); NaN when one class is absent.

    Example:
        >>> instance_auc(np.array([0.9, 0.1, 0.5, 0.5]), np.array([True, False, True, False]))
        0.875
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)  # average ranks of ties
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _measures(scores: np.ndarray, inside: np.ndarray) -> dict[str, Any]:
    """The :data:`MEASURES` of instances with attention ``scores`` ``(N,)`` (any positive
    scale) and tumour flags ``inside`` ``(N,)``."""
    total = float(scores.sum())
    count, tumour = len(scores), int(inside.sum())
    mass = float(scores[inside].sum()) / total if total > 0 else math.nan
    fraction = tumour / count if count else math.nan
    return {
        "instances": count,
        "tumour_instances": tumour,
        "attention_in_tumour": mass,
        "tumour_instance_fraction": fraction,
        "enrichment": mass / fraction if fraction > 0 else math.nan,
        "instance_auc": instance_auc(scores, inside),
    }


def _instances(attention_map: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    attention = np.asarray(attention_map, dtype=np.float64)
    inside = np.asarray(inside, dtype=bool)
    if attention.shape != inside.shape:
        raise ValueError(
            f"the tumour cells {inside.shape} and the attention map {attention.shape} differ in "
            "shape"
        )
    instances = np.isfinite(attention)
    return attention[instances], inside[instances]


def slide_localisation(attention_map: np.ndarray, inside: np.ndarray) -> dict[str, Any]:
    """The :data:`MEASURES` of one slide, with ``instances`` and ``tumour_instances``.

    Args:
        attention_map: ``(rows, cols)`` attention, NaN where there is no instance.
        inside: ``(rows, cols)`` bool, the cells that overlap tumour (:func:`cells_on_mask`).

    Returns:
        ``instances``, ``tumour_instances``, ``attention_in_tumour``,
        ``tumour_instance_fraction``, ``enrichment`` (NaN without tumour instances) and
        ``instance_auc`` (NaN unless there are instances both in and out of tumour).

    Raises:
        ValueError: the two arrays differ in shape.
    """
    scores, flags = _instances(attention_map, inside)
    return _measures(scores, flags)


def summarize_localisation(
    slides: Sequence[tuple[np.ndarray, np.ndarray]],
) -> dict[str, Any]:
    """The :data:`MEASURES` over slides ``(attention_map, inside)``: their ``mean`` (of the
    finite per-slide values) and ``pooled`` (all instances together, attention as attention x
    N per slide), over the slides with at least one instance in tumour
    (``slides_with_tumour``).

    Example:
        >>> a = np.array([[0.75, 0.25]]), np.array([[True, False]])
        >>> b = np.array([[0.5, 0.5]]), np.array([[False, True]])
        >>> s = summarize_localisation([a, b])
        >>> s["slides_with_tumour"], s["mean"]["attention_in_tumour"], s["pooled"]["instance_auc"]
        (2, 0.625, 0.875)
    """
    per_slide = [_instances(attention, inside) for attention, inside in slides]
    used = [(s, f) for s, f in per_slide if f.any() and s.sum() > 0]
    summary: dict[str, Any] = {"slides_with_tumour": len(used)}
    values = [_measures(s, f) for s, f in used]
    summary["mean"] = {
        name: float(np.mean(finite))
        if (finite := [v[name] for v in values if math.isfinite(v[name])])
        else math.nan
        for name in MEASURES
    }
    if used:
        scores = np.concatenate([s / s.sum() * len(s) for s, _ in used])  # attention x N
        flags = np.concatenate([f for _, f in used])
        pooled = _measures(scores, flags)
        summary["pooled"] = {name: pooled[name] for name in MEASURES}
    else:
        summary["pooled"] = dict.fromkeys(MEASURES, math.nan)
    return summary


def annotation_metrics(
    module,
    results: Sequence[dict[str, Any]],
    rows: Sequence[ManifestRow],
    data: DataConfig,
    annotation_dir: str | Path,
    *,
    tumour_classes: Sequence[str] = TUMOUR_CLASSES,
) -> dict[str, Any]:
    """Attention against the annotated tumour of every predicted slide with an annotation file.

    Args:
        module: the module that predicted ``results`` (its model's output stride).
        results: per-slide results with ``attention_map`` (of
            :func:`~gigastream.train.prediction.run_predictions`).
        rows: the slides' manifest rows.
        data: how the slides were read (``mpp``, backend, ``features_dir``).
        annotation_dir: the folder of ``<slide_id>.xml`` / ``.geojson`` / ``.json``.
        tumour_classes: the classes that are tumour (case-insensitive; ``"Name*"`` is a
            prefix; exclusions are subtracted); when no region of the files read is of
            them, one warning names the classes the files hold.

    Returns:
        ``folder``, ``tumour_classes`` (those used), ``slides`` (annotated slides measured),
        ``slides_with_tumour``, ``mean`` and ``pooled`` (:func:`summarize_localisation`),
        ``per_slide`` (``slide_id -> measures``, :func:`slide_localisation`),
        ``without_annotation`` (predicted slides without a file) and ``skipped``
        (``slide_id -> reason``: an annotated slide without attention or unreadable).

    Raises:
        ValueError: no or an empty tumour class (before anything is read).
        AnnotationError: ``annotation_dir`` is not a folder or holds a malformed file.

    Example:
        >>> m = annotation_metrics(module, results, rows, config.data, "annotations",
        ...                        tumour_classes=["Cancer"])  # doctest: +SKIP
        >>> m["mean"]["attention_in_tumour"], m["pooled"]["instance_auc"]  # doctest: +SKIP
        (0.61, 0.93)
    """
    from gigastream.train.heatmaps import attention_cell_um
    from gigastream.wsi.annotation_readers import read_annotation_folder
    from gigastream.wsi.annotations import warn_if_no_class

    classes = check_classes(tumour_classes)
    by_id = {row.slide_id: row for row in rows}
    notes = read_annotation_folder(annotation_dir, [r["slide_id"] for r in results])
    warn_if_no_class(notes.values(), classes)
    per_slide: dict[str, dict[str, Any]] = {}
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    skipped: dict[str, str] = {}
    without = [r["slide_id"] for r in results if r["slide_id"] not in notes]
    for r in results:
        slide_id = r["slide_id"]
        if slide_id not in notes:
            continue
        if "attention_map" not in r:
            skipped[slide_id] = r.get("error") or "no attention map"
            continue
        row = by_id[slide_id]
        attention = np.asarray(r["attention_map"], dtype=np.float64)  # (rows, cols)
        try:
            with SlideReader.open(row.path, mpp=row.mpp, backend=data.backend) as slide:
                cell_um = attention_cell_um(module, slide, slide_id, data)
                if cell_um is None:
                    skipped[slide_id] = "its feature file does not give the patch size"
                    continue
                mask = notes[slide_id].mask(classes, mpp=cell_um / CELL_SAMPLES, slide=slide)
        except (SlideError, ValueError) as exc:
            skipped[slide_id] = " ".join(str(exc).split())
            continue
        inside = cells_on_mask(mask, attention.shape, cell_um)
        per_slide[slide_id] = slide_localisation(attention, inside)
        parts.append((attention, inside))
    if without:
        logger.info(
            "%d predicted slide(s) without an annotation file in %s", len(without), annotation_dir
        )
    return {
        "folder": str(Path(annotation_dir).resolve()),
        "tumour_classes": list(classes),
        "slides": len(per_slide),
        **summarize_localisation(parts),
        "per_slide": per_slide,
        "without_annotation": without,
        "skipped": skipped,
    }


def describe(metrics: dict[str, Any]) -> str:
    """One line of :func:`annotation_metrics` for a command's output.

    Example:
        >>> describe({"slides": 4, "slides_with_tumour": 3, "mean": {"attention_in_tumour": 0.6,
        ...     "tumour_instance_fraction": 0.1, "enrichment": 6.0, "instance_auc": 0.9},
        ...     "pooled": {"attention_in_tumour": 0.55, "tumour_instance_fraction": 0.12,
        ...     "enrichment": 4.6, "instance_auc": 0.88}, "without_annotation": [], "skipped": {}})
        'annotations: 3 of 4 annotated slides with tumour: attention in tumour 0.600 (pooled 0.550) on 10.0% of the instances (12.0% pooled), 6.00x uniform; instance AUC 0.900 (pooled 0.880)'
    """

    def number(value: float, digits: int = 3) -> str:
        return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"

    def percent(value: float) -> str:
        return "n/a" if value is None or not math.isfinite(value) else f"{value:.1%}"

    mean, pooled = metrics["mean"], metrics["pooled"]
    line = (
        f"annotations: {metrics['slides_with_tumour']} of {metrics['slides']} annotated slides "
        f"with tumour: attention in tumour {number(mean['attention_in_tumour'])} (pooled "
        f"{number(pooled['attention_in_tumour'])}) on {percent(mean['tumour_instance_fraction'])}"
        f" of the instances ({percent(pooled['tumour_instance_fraction'])} pooled), "
        f"{number(mean['enrichment'], 2)}x uniform; instance AUC "
        f"{number(mean['instance_auc'])} (pooled {number(pooled['instance_auc'])})"
    )
    if metrics["skipped"]:
        line += f"; {len(metrics['skipped'])} annotated slide(s) skipped"
    return line


__all__ = [
    "CELL_SAMPLES",
    "MEASURES",
    "annotation_metrics",
    "cells_on_mask",
    "describe",
    "instance_auc",
    "slide_localisation",
    "summarize_localisation",
]
