"""Heatmaps as pyramidal TIFF overlays that slide viewers open: the scores blended over the
slide, ground-truth contours burned in (:func:`heatmap_tiff`, :func:`attention_heatmap_tiff`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gigastream.viz.heatmap import (
    CONTOUR_COLOUR,
    HeatmapStyle,
    _check_scores,
    _ContourBand,
    _Painter,
    attention_times_n,
    mask_under,
)
from gigastream.wsi.pyramid import PyramidConfig, write_pyramid
from gigastream.wsi.reader import Resolution, SlideReader
from gigastream.wsi.tissue import TissueMask

logger = logging.getLogger(__name__)


def heatmap_tiff(
    slide: SlideReader,
    scores: np.ndarray,
    out: str | Path,
    cell_um: float | None = None,
    style: HeatmapStyle | None = None,
    mpp: float | None = None,
    strip_rows: int = 256,
    config: PyramidConfig | None = None,
    contours: TissueMask | None = None,
    contour_width_px: int | None = None,
    tissue: TissueMask | None = None,
) -> Path:
    """Write a pyramidal TIFF of the slide with the scores blended on, strip by strip.

    Args:
        slide: the slide.
        scores: ``(rows, cols)`` score map (NaN: not shown).
        out: TIFF file to write.
        cell_um: microns per score cell; default: the grid spans the slide.
        style: colours.
        mpp: resolution of the overlay; default: level 0 (full resolution).
        strip_rows: rows read and blended at a time (memory: ``strip_rows`` x width).
        config: tiling and compression of the TIFF.
        contours: a ground-truth mask over the slide whose region borders are burned in,
            opaque, in :data:`CONTOUR_COLOUR` (see :func:`heatmap_png`).
        contour_width_px: width of the contour lines in pixels of the TIFF; default:
            the longer side / 1000, at least 2 (visible when the viewer zooms out).
        tissue: the slide's tissue mask: pixels off it keep the slide's own colour.

    Returns:
        ``out``.
    """
    painter = _Painter.prepare(slide, scores, cell_um, style or HeatmapStyle())
    if mpp is None:
        w0, h0 = slide.dimensions
        res = Resolution(0, 1.0, (w0, h0), slide.mpp or 1.0)
    else:
        res = slide.resolution(mpp)
    out_mpp = res.mpp
    width, height = res.dimensions
    band = None
    if contours is not None:
        line = contour_width_px
        if line is None:
            line = max(2, round(max(width, height) / 1000))
        if line < 1:
            raise ValueError(f"contour_width_px must be positive, got {contour_width_px}")
        band = _ContourBand.prepare(contours, slide, out_mpp, (height, width), line)

    def strips() -> Iterator[np.ndarray]:
        for y0 in range(0, height, strip_rows):
            pixels = slide.read_scaled(res, 0, y0, width, min(strip_rows, height - y0))
            on = None
            if tissue is not None:
                on = mask_under(tissue, slide, (out_mpp, out_mpp), pixels.shape[:2], y0)
            pixels = painter.paint(pixels, y0, (out_mpp, out_mpp), on)
            yield band.paint(pixels, y0, CONTOUR_COLOUR) if band is not None else pixels

    write_pyramid(
        out,
        strips(),
        width,
        height,
        out_mpp,
        config,
        description=f"gigastream heatmap of {slide.name}",
    )
    logger.info(
        "wrote heatmap overlay %s (%dx%d, %d strips)",
        out,
        width,
        height,
        math.ceil(height / strip_rows),
    )
    return Path(out)


def attention_heatmap_tiff(
    slide: SlideReader,
    attention: np.ndarray,
    out: str | Path,
    cell_um: float | None = None,
    contours: TissueMask | None = None,
    style: HeatmapStyle | None = None,
    **options: Any,
) -> Path:
    """Write an attention overlay TIFF: attention x N on the fixed log scale, with contours.

    The TIFF counterpart of :func:`attention_heatmap_png`; ``options`` go to
    :func:`heatmap_tiff` (``mpp``, ``strip_rows``, ``config``, ``contour_width_px``,
    ``tissue``). Slide viewers draw their own scale bar from the TIFF's mpp.

    Returns:
        ``out``.
    """
    return heatmap_tiff(
        slide,
        attention_times_n(_check_scores(attention)),
        out,
        cell_um=cell_um,
        style=style or HeatmapStyle.for_attention(),
        contours=contours,
        **options,
    )


__all__ = ["attention_heatmap_tiff", "heatmap_tiff"]
