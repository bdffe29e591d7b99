"""Heatmaps: per-position scores (attention, probabilities) drawn over a slide.

A score map is a ``(rows, cols)`` float array laid over the slide on a regular grid:
cell ``[i, j]`` covers the microns ``[j * cell_um, (j + 1) * cell_um)`` horizontally and
likewise vertically (e.g. ``cell_um = output_stride * mpp`` for a streamed feature map),
or, without ``cell_um``, the grid is stretched over the whole slide. NaN cells (e.g.
outside tissue) are not coloured.

Two renderings:

- :func:`heatmap_png`: the thumbnail with the scores blended on top and a colour bar;
- :func:`heatmap_tiff`: a full-resolution pyramidal TIFF of the slide with the scores
  blended on top, written strip by strip (:mod:`gigastream.wsi.pyramid`), that slide
  viewers (QuPath, ASAP, OpenSlide-based viewers) open like the slide itself.

Example:
    >>> import numpy as np
    >>> from gigastream import SlideReader
    >>> slide = SlideReader.from_array(np.full((512, 512, 3), 230, np.uint8), mpp=0.5)
    >>> scores = np.linspace(0, 1, 64).reshape(8, 8)
    >>> heatmap_png(slide, scores, "heatmap.png", title="attention")  # doctest: +SKIP
    >>> heatmap_tiff(slide, scores, "heatmap.tif")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gigastream.wsi.pyramid import PyramidConfig, write_pyramid
from gigastream.wsi.reader import Resolution, SlideReader

logger = logging.getLogger(__name__)


@dataclass
class HeatmapStyle:
    """How scores are coloured.

    Attributes:
        cmap: matplotlib colormap name.
        alpha: opacity of the colours over the slide (0-1).
        vmin: score at the bottom of the colour scale (default: the minimum score).
        vmax: score at the top of the colour scale (default: the maximum score).
    """

    cmap: str = "inferno"
    alpha: float = 0.5
    vmin: float | None = None
    vmax: float | None = None


def _check_scores(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or min(scores.shape) < 1:
        raise ValueError(
            f"scores must be a non-empty 2-d (rows, cols) array, got shape {scores.shape}"
        )
    if not np.isfinite(scores).any():
        raise ValueError("scores hold no finite value")
    return scores


def _limits(scores: np.ndarray, style: HeatmapStyle) -> tuple[float, float]:
    vmin = float(np.nanmin(scores)) if style.vmin is None else style.vmin
    vmax = float(np.nanmax(scores)) if style.vmax is None else style.vmax
    if vmax <= vmin:
        vmax = vmin + 1e-12
    return vmin, vmax


def colorize(scores: np.ndarray, style: HeatmapStyle) -> tuple[np.ndarray, np.ndarray]:
    """Colours of scores: ``(..., 3)`` uint8 RGB and a ``(...)`` bool of finite cells."""
    import matplotlib

    lut = (matplotlib.colormaps[style.cmap](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    vmin, vmax = _limits(scores, style)
    finite = np.isfinite(scores)
    unit = np.clip((np.where(finite, scores, vmin) - vmin) / (vmax - vmin), 0, 1)
    return lut[np.rint(unit * 255).astype(np.int64)], finite


def _cell_lookup(
    start: float, count: int, um_per_px: float, cell_um: float, cells: int
) -> np.ndarray:
    """Score-grid index of pixels ``start .. start + count`` (pixel centres), -1 outside."""
    index = np.floor((np.arange(count) + start + 0.5) * um_per_px / cell_um).astype(np.int64)
    index[(index < 0) | (index >= cells)] = -1
    return index


@dataclass
class _Painter:
    """Scores turned into colours, placed on the slide in microns, ready to blend."""

    colours: np.ndarray  # (rows, cols, 3) uint8
    finite: np.ndarray  # (rows, cols) bool
    cell_um: tuple[float, float]  # (y, x) microns per score cell
    alpha: float

    @classmethod
    def prepare(
        cls, slide: SlideReader, scores: np.ndarray, cell_um: float | None, style: HeatmapStyle
    ) -> _Painter:
        scores = _check_scores(scores)
        colours, finite = colorize(scores, style)
        if cell_um is not None:
            if not cell_um > 0:
                raise ValueError(f"cell_um must be positive, got {cell_um}")
            cells = (cell_um, cell_um)
        else:  # stretch the grid over the slide; without mpp, "microns" are level-0 pixels
            width, height = slide.dimensions
            mpp = slide.mpp or 1.0
            cells = (height * mpp / scores.shape[0], width * mpp / scores.shape[1])
        return cls(colours, finite, cells, style.alpha)

    def paint(self, pixels: np.ndarray, y0: int, um_per_px: tuple[float, float]) -> np.ndarray:
        """Blend the colours onto ``pixels``, full-width rows from ``y0`` at ``(y, x)`` um/px."""
        rows = _cell_lookup(
            y0, pixels.shape[0], um_per_px[0], self.cell_um[0], self.finite.shape[0]
        )
        cols = _cell_lookup(0, pixels.shape[1], um_per_px[1], self.cell_um[1], self.finite.shape[1])
        inside = (rows[:, None] >= 0) & (cols[None, :] >= 0)
        r, c = np.maximum(rows, 0)[:, None], np.maximum(cols, 0)[None, :]
        weight = ((inside & self.finite[r, c]) * np.float32(self.alpha))[..., None]
        out = (
            pixels.astype(np.float32) * (1 - weight)
            + self.colours[r, c].astype(np.float32) * weight
        )
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def overlay(
    slide: SlideReader,
    scores: np.ndarray,
    image: np.ndarray,
    cell_um: float | None = None,
    style: HeatmapStyle | None = None,
) -> np.ndarray:
    """Blend ``scores`` onto ``image``, a picture of the whole slide at any size."""
    painter = _Painter.prepare(slide, scores, cell_um, style or HeatmapStyle())
    width, height = slide.dimensions
    mpp = slide.mpp or 1.0
    return painter.paint(image, 0, (height * mpp / image.shape[0], width * mpp / image.shape[1]))


def heatmap_png(
    slide: SlideReader,
    scores: np.ndarray,
    out: str | Path,
    cell_um: float | None = None,
    style: HeatmapStyle | None = None,
    max_size: int = 1024,
    title: str | None = None,
    label: str = "score",
) -> Path:
    """Write the slide's thumbnail with the scores blended on top and a colour bar.

    Args:
        slide: the slide.
        scores: ``(rows, cols)`` score map (NaN: not shown).
        out: PNG file to write.
        cell_um: microns per score cell; default: the grid spans the slide.
        style: colours.
        max_size: longer side of the thumbnail in pixels.
        title: figure title.
        label: colour bar label.

    Returns:
        ``out``.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    style = style or HeatmapStyle()
    scores = _check_scores(scores)
    thumb = slide.thumbnail(max_size)
    blended = overlay(slide, scores, thumb, cell_um, style)
    height, width = blended.shape[:2]
    dpi = 100
    fig = Figure(figsize=(width / dpi + 1.6, height / dpi + 0.6), dpi=dpi)
    ax = fig.subplots()
    ax.imshow(blended)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    mappable = ScalarMappable(norm=Normalize(*_limits(scores, style)), cmap=style.cmap)
    fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.02, label=label)
    out = Path(out)
    fig.savefig(out, dpi=dpi, bbox_inches="tight")
    logger.info("wrote heatmap %s", out)
    return out


def heatmap_tiff(
    slide: SlideReader,
    scores: np.ndarray,
    out: str | Path,
    cell_um: float | None = None,
    style: HeatmapStyle | None = None,
    mpp: float | None = None,
    strip_rows: int = 256,
    config: PyramidConfig | None = None,
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

    Returns:
        ``out``.
    """
    painter = _Painter.prepare(slide, scores, cell_um, style or HeatmapStyle())
    if mpp is None:
        w0, h0 = slide.dimensions
        res = Resolution(0, 1.0, (w0, h0))
        out_mpp = slide.mpp or 1.0
    else:
        res = slide.resolution(mpp)
        out_mpp = slide.require_mpp() * slide.levels[res.level].downsample * res.scale
    width, height = res.dimensions

    def strips() -> Iterator[np.ndarray]:
        for y0 in range(0, height, strip_rows):
            pixels = slide.read_scaled(res, 0, y0, width, min(strip_rows, height - y0))
            yield painter.paint(pixels, y0, (out_mpp, out_mpp))

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
