"""Heatmaps: per-position scores (attention, probabilities) drawn over a slide.

A score map is a ``(rows, cols)`` float array laid over the slide on a regular grid:
cell ``[i, j]`` covers the microns ``[j * cell_um, (j + 1) * cell_um)`` horizontally and
likewise vertically (e.g. ``cell_um = output_stride * mpp`` for a streamed feature map),
or, without ``cell_um``, the grid is stretched over the whole slide. NaN cells (e.g.
outside tissue) are not coloured.

Two renderings:

- :func:`heatmap_png`: the thumbnail with the scores blended on top and a colour bar;
- :func:`~gigastream.viz.heatmap_tiff.heatmap_tiff`: a full-resolution pyramidal TIFF of the slide with the scores
  blended on top, written strip by strip (:mod:`gigastream.wsi.pyramid`), that slide
  viewers (QuPath, ASAP, OpenSlide-based viewers) open like the slide itself.

Both draw the contours of a ground-truth mask (``contours=``, e.g. the lesion masks
``lesions/<slide_id>.png`` of the synthetic datasets, loaded with
:meth:`gigastream.wsi.tissue.TissueMask.load`) in :data:`CONTOUR_COLOUR`, and given the
slide's tissue mask (``tissue=``) leave the slide's own pixels outside tissue untinted. The
PNG has a micron scale bar under the thumbnail (a round length, 1, 2 or 5 x 10^k um, a
tenth to a quarter of the thumbnail's width: :func:`~gigastream.viz.scale_bar.scale_bar_length`) and carries its
title in the PNG's ``Title`` text chunk; the opacity of the colours is
:attr:`HeatmapStyle.alpha` (:func:`check_opacity`).

Attention maps are drawn as **attention x N** (:func:`attention_times_n`; N instances, so
1 is uniform attention) on a fixed log scale from 0.1 to 10 with a diverging colour map
whose neutral middle is 1 (:meth:`HeatmapStyle.for_attention`): uniform attention is one
flat, pale colour, instances attended 10x more than average are saturated red, 10x less
saturated blue, and noise around uniform stays pale instead of being stretched over the
whole colour range. :func:`attention_heatmap_png` and :func:`~gigastream.viz.heatmap_tiff.attention_heatmap_tiff` do all of it; :func:`slide_title`
gives the title (slide, its label, p(positive)).

Example:
    >>> import numpy as np
    >>> from gigastream import SlideReader
    >>> slide = SlideReader.from_array(np.full((512, 512, 3), 230, np.uint8), mpp=0.5)
    >>> attention = np.full((8, 8), 1 / 64)
    >>> title = slide_title("synth_003", "positive", 0.93)
    >>> attention_heatmap_png(slide, attention, "heatmap.png", title=title)  # doctest: +SKIP
    >>> from gigastream.viz.heatmap_tiff import attention_heatmap_tiff  # doctest: +SKIP
    >>> attention_heatmap_tiff(slide, attention, "heatmap.tif")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gigastream.atomic import atomic_write
from gigastream.viz.scale_bar import _add_scale_bar
from gigastream.wsi.reader import SlideReader

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from gigastream.wsi.tissue import TissueMask

logger = logging.getLogger(__name__)

#: RGB colour of ground-truth contours: bright green, apart from the attention colours
#: (red/blue) and from H&E (pink/purple).
CONTOUR_COLOUR = (0, 230, 0)
#: Legend entry of the contours.
CONTOUR_LABEL = "lesion (ground truth)"
#: Colour bar label of attention maps drawn by :func:`attention_heatmap_png`.
ATTENTION_LABEL = "attention × N  (N instances; 1 = uniform; log scale)"
#: Opacity of attention colours over the slide (:meth:`HeatmapStyle.for_attention`).
ATTENTION_OPACITY = 0.55


def check_opacity(opacity: float, name: str = "opacity") -> float:
    """``opacity`` as a float if it is a number from 0 (colours invisible) to 1 (opaque).

    Raises:
        ValueError: anything else (NaN too), naming it as ``name`` (e.g. ``--opacity``).

    Example:
        >>> check_opacity(0.3)
        0.3
    """
    try:
        value = float(opacity)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 <= value <= 1.0:  # also NaN
        raise ValueError(
            f"{name} must be a number from 0 (colours invisible) to 1 (opaque), got {opacity!r}"
        )
    return value


@dataclass
class HeatmapStyle:
    """How scores are coloured.

    Attributes:
        cmap: matplotlib colormap name.
        alpha: opacity of the colours over the slide (0-1).
        vmin: score at the bottom of the colour scale (default: the minimum score).
        vmax: score at the top of the colour scale (default: the maximum score).
        log: colour by ``log(score)`` between ``vmin`` and ``vmax`` (both > 0).
    """

    cmap: str = "inferno"
    alpha: float = 0.5
    vmin: float | None = None
    vmax: float | None = None
    log: bool = False

    def __post_init__(self) -> None:
        self.alpha = check_opacity(self.alpha)

    @classmethod
    def for_attention(cls, alpha: float = ATTENTION_OPACITY) -> HeatmapStyle:
        """The fixed scale of attention x N: log, 0.1 to 10, neutral (white) at 1."""
        return cls(cmap="RdBu_r", alpha=alpha, vmin=0.1, vmax=10.0, log=True)


def attention_times_n(attention: np.ndarray) -> np.ndarray:
    """Attention relative to uniform: ``attention * N`` over the N finite cells.

    The attention is first renormalised to sum to 1 over its finite cells (NaN: no
    instance), so 1 means "as much as every instance under uniform attention", 10 means
    ten times that.

    Example:
        >>> attention_times_n(np.array([[0.25, 0.25], [0.5, np.nan]])).round(2).tolist()
        [[0.75, 0.75], [1.5, nan]]
    """
    attention = np.asarray(attention, dtype=np.float64)
    finite = np.isfinite(attention)
    total = attention[finite].sum()
    if not finite.any() or not total > 0:
        raise ValueError("attention holds no finite positive value")
    return attention / total * finite.sum()


def slide_title(
    slide_id: str, label: str | None, p_positive: float, positive_name: str = "positive"
) -> str:
    """A heatmap title: the slide, its true label (if known) and p(positive).

    Example:
        >>> slide_title("synth_003", "positive", 0.931)
        'synth_003 — label: positive — p(positive) = 0.93'
        >>> slide_title("s7", None, 0.2, positive_name="tumour")
        's7 — p(tumour) = 0.20'
    """
    parts = [slide_id]
    if label is not None:
        parts.append(f"label: {label}")
    parts.append(f"p({positive_name}) = {p_positive:.2f}")
    return " — ".join(parts)


def value_title(slide_id: str, label: str | None, prediction: float) -> str:
    """A regression heatmap's title: the slide, its true value (if known) and the predicted.

    Example:
        >>> value_title("synth_003", "12", 10.41)
        'synth_003 — label: 12 — predicted 10.4'
    """
    parts = [slide_id] + ([f"label: {label}"] if label is not None else [])
    return " — ".join([*parts, f"predicted {prediction:.3g}"])


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
    finite = scores[np.isfinite(scores)]
    if style.log:
        finite = finite[finite > 0]
        if style.vmin is None or style.vmax is None:
            if not finite.size:
                raise ValueError("a log colour scale needs positive scores or vmin and vmax")
    vmin = float(finite.min()) if style.vmin is None else style.vmin
    vmax = float(finite.max()) if style.vmax is None else style.vmax
    if style.log and not vmin > 0:
        raise ValueError(f"a log colour scale needs vmin > 0, got {vmin}")
    if vmax <= vmin:
        vmax = vmin * (1 + 1e-12) + 1e-12
    return vmin, vmax


def _norm(scores: np.ndarray, style: HeatmapStyle):
    """The matplotlib norm of the colour scale (for the colour bar)."""
    from matplotlib.colors import LogNorm, Normalize

    return (LogNorm if style.log else Normalize)(*_limits(scores, style))


def colorize(scores: np.ndarray, style: HeatmapStyle) -> tuple[np.ndarray, np.ndarray]:
    """Colours of scores: ``(..., 3)`` uint8 RGB and a ``(...)`` bool of finite cells.

    Scores outside ``[vmin, vmax]`` get the colour of the nearer end.
    """
    import matplotlib

    lut = (matplotlib.colormaps[style.cmap](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    vmin, vmax = _limits(scores, style)
    finite = np.isfinite(scores)
    values = np.where(finite, scores, vmin)
    if style.log:
        values = np.log(np.maximum(values, vmin))
        vmin, vmax = math.log(vmin), math.log(vmax)
    unit = np.clip((values - vmin) / (vmax - vmin), 0, 1)
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

    def paint(
        self,
        pixels: np.ndarray,
        y0: int,
        um_per_px: tuple[float, float],
        tissue: np.ndarray | None = None,
    ) -> np.ndarray:
        """Blend the colours onto ``pixels``, full-width rows from ``y0`` at ``(y, x)`` um/px;
        only where ``tissue`` (``(rows, cols)`` bool, one per pixel) is True, if given."""
        rows = _cell_lookup(
            y0, pixels.shape[0], um_per_px[0], self.cell_um[0], self.finite.shape[0]
        )
        cols = _cell_lookup(0, pixels.shape[1], um_per_px[1], self.cell_um[1], self.finite.shape[1])
        inside = (rows[:, None] >= 0) & (cols[None, :] >= 0)
        r, c = np.maximum(rows, 0)[:, None], np.maximum(cols, 0)[None, :]
        tinted = inside & self.finite[r, c]
        if tissue is not None:
            tinted &= tissue
        weight = (tinted * np.float32(self.alpha))[..., None]
        out = (
            pixels.astype(np.float32) * (1 - weight)
            + self.colours[r, c].astype(np.float32) * weight
        )
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _mask_um(mask: TissueMask, slide: SlideReader) -> tuple[float, float]:
    """``(y, x)`` microns per mask pixel, in the heatmap's microns (level-0 px without mpp)."""
    if slide.mpp is not None:
        return (mask.mpp, mask.mpp)
    width, height = slide.dimensions  # no mpp: the mask is taken to cover the whole slide
    return (height / mask.mask.shape[0], width / mask.mask.shape[1])


def mask_under(
    mask: TissueMask,
    slide: SlideReader,
    um_per_px: tuple[float, float],
    shape: tuple[int, int],
    y0: int = 0,
) -> np.ndarray:
    """``mask`` under the pixel centres of a picture of the slide: ``(rows, cols)`` bool.

    Args:
        mask: a bool mask over the slide with its mpp (e.g. the slide's tissue mask).
        slide: the slide the mask covers.
        um_per_px: ``(y, x)`` microns per pixel of the picture.
        shape: ``(rows, cols)`` of the part of the picture wanted: full-width rows ...
        y0: ... from this row on.

    Returns:
        True where the pixel's centre lies on the mask (nearest mask pixel; False beyond
        the mask's edge).
    """
    um_y, um_x = _mask_um(mask, slide)
    h, w = mask.mask.shape
    rows = np.floor((np.arange(y0, y0 + shape[0]) + 0.5) * um_per_px[0] / um_y).astype(np.int64)
    cols = np.floor((np.arange(shape[1]) + 0.5) * um_per_px[1] / um_x).astype(np.int64)
    on = np.asarray(mask.mask, bool)[np.minimum(rows, h - 1)[:, None], np.minimum(cols, w - 1)]
    return on & (rows < h)[:, None] & (cols < w)[None, :]


def contour_lines(
    mask: TissueMask, slide: SlideReader, um_per_px: tuple[float, float]
) -> list[np.ndarray]:
    """Contours of ``mask`` as ``(points, 2)`` ``(x, y)`` arrays in pixels of a picture.

    Args:
        mask: a bool mask over the slide with its mpp (e.g. a ground-truth lesion mask).
        slide: the slide the mask covers.
        um_per_px: ``(y, x)`` microns per pixel of the picture (pixel ``j``'s centre is
            at coordinate ``j``, as matplotlib's ``imshow`` places it).

    Returns:
        One closed polyline per connected region boundary (also along the slide border).
    """
    from skimage.measure import find_contours

    um_y, um_x = _mask_um(mask, slide)
    padded = np.pad(np.asarray(mask.mask, dtype=np.float32), 1)  # closes border contours
    lines = []
    for line in find_contours(padded, 0.5):  # (points, 2) (row, col) in padded mask px
        rows = (line[:, 0] - 1 + 0.5) * um_y / um_per_px[0] - 0.5
        cols = (line[:, 1] - 1 + 0.5) * um_x / um_per_px[1] - 0.5
        lines.append(np.stack([cols, rows], axis=1))
    return lines


@dataclass
class _ContourBand:
    """Pixels of a picture on the inner border (``width_px`` wide) of a mask's regions."""

    band: np.ndarray  # (grid_rows, grid_cols) bool, one cell per width_px x width_px pixels
    width_px: int

    @classmethod
    def prepare(
        cls,
        mask: TissueMask,
        slide: SlideReader,
        um_per_px: float,
        shape: tuple[int, int],
        width_px: int,
    ) -> _ContourBand:
        um_y, um_x = _mask_um(mask, slide)
        cell_um = um_per_px * width_px
        grid = (math.ceil(shape[0] / width_px), math.ceil(shape[1] / width_px))
        h, w = mask.mask.shape
        rows = np.floor((np.arange(grid[0]) + 0.5) * cell_um / um_y).astype(np.int64)
        cols = np.floor((np.arange(grid[1]) + 0.5) * cell_um / um_x).astype(np.int64)
        inside = np.zeros(grid, bool)
        ok_r, ok_c = rows < h, cols < w
        inside[np.ix_(ok_r, ok_c)] = np.asarray(mask.mask, bool)[np.ix_(rows[ok_r], cols[ok_c])]
        padded = np.pad(inside, 1)  # outside the slide counts as outside the mask
        eroded = inside.copy()
        for dy in (0, 1, 2):  # 3x3 erosion
            for dx in (0, 1, 2):
                eroded &= padded[dy : dy + grid[0], dx : dx + grid[1]]
        return cls(inside & ~eroded, width_px)

    def paint(self, pixels: np.ndarray, y0: int, colour: tuple[int, int, int]) -> np.ndarray:
        """Draw the band on ``pixels``, full-width rows of the picture from row ``y0``."""
        rows = np.arange(y0, y0 + pixels.shape[0]) // self.width_px
        cols = np.arange(pixels.shape[1]) // self.width_px
        on = self.band[rows[:, None], cols[None, :]]
        pixels[on] = colour
        return pixels


def overlay(
    slide: SlideReader,
    scores: np.ndarray,
    image: np.ndarray,
    cell_um: float | None = None,
    style: HeatmapStyle | None = None,
    tissue: TissueMask | None = None,
) -> np.ndarray:
    """Blend ``scores`` onto ``image``, a picture of the whole slide at any size.

    With ``tissue`` (the slide's tissue mask), pixels off the mask keep their own colour.
    """
    painter = _Painter.prepare(slide, scores, cell_um, style or HeatmapStyle())
    um_per_px = picture_um(slide, image.shape[:2])
    on = None if tissue is None else mask_under(tissue, slide, um_per_px, image.shape[:2])
    return painter.paint(image, 0, um_per_px, on)


def picture_um(slide: SlideReader, shape: tuple[int, int]) -> tuple[float, float]:
    """``(y, x)`` microns per pixel of a ``(rows, cols)`` picture of the whole slide
    (level-0 pixels without mpp)."""
    width, height = slide.dimensions
    mpp = slide.mpp or 1.0
    return (height * mpp / shape[0], width * mpp / shape[1])


def heatmap_figure(
    slide: SlideReader,
    scores: np.ndarray,
    cell_um: float | None = None,
    style: HeatmapStyle | None = None,
    max_size: int = 1024,
    title: str | None = None,
    label: str = "score",
    contours: TissueMask | None = None,
    tissue: TissueMask | None = None,
    scale_bar: bool = True,
) -> Figure:
    """The figure of :func:`heatmap_png` (a matplotlib ``Figure``, not shown or saved).

    Returns:
        The figure: its one image axes (``fig.axes[0]``) holds the blended thumbnail, the
        title, the contours and the scale bar; the colour bar is ``fig.axes[1]``.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    from matplotlib.lines import Line2D

    style = style or HeatmapStyle()
    scores = _check_scores(scores)
    thumb = slide.thumbnail(max_size)
    blended = overlay(slide, scores, thumb, cell_um, style, tissue)
    height, width = blended.shape[:2]
    dpi = 100
    fig = Figure(figsize=(width / dpi + 1.6, height / dpi + 0.9), dpi=dpi)
    ax = fig.subplots()
    ax.imshow(blended)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    um_per_px = picture_um(slide, (height, width))
    scale_bar = scale_bar and slide.mpp is not None  # without mpp: microns unknown
    if scale_bar:
        _add_scale_bar(ax, um_per_px[1], width)
    if contours is not None:
        colour = tuple(c / 255 for c in CONTOUR_COLOUR)
        lines = contour_lines(contours, slide, um_per_px)
        for line in lines:
            ax.plot(line[:, 0], line[:, 1], color=colour, linewidth=1.5)
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
        entry = CONTOUR_LABEL if lines else f"{CONTOUR_LABEL}: none"
        ax.legend(
            handles=[Line2D([], [], color=colour, linewidth=2, label=entry)],
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            frameon=False,
            borderaxespad=2.6 if scale_bar else 0.5,  # below the scale bar's row
        )
    mappable = ScalarMappable(norm=_norm(scores, style), cmap=style.cmap)
    extend = "both" if style.vmin is not None or style.vmax is not None else "neither"
    bar = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.02, label=label, extend=extend)
    if style.log:
        from matplotlib.ticker import FixedLocator, FuncFormatter

        vmin, vmax = _limits(scores, style)
        ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10) if vmin <= t <= vmax]
        if len(ticks) >= 2:
            bar.ax.yaxis.set_major_locator(FixedLocator(ticks))
            bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            bar.ax.yaxis.set_minor_locator(FixedLocator([]))
    return fig


def heatmap_png(
    slide: SlideReader,
    scores: np.ndarray,
    out: str | Path,
    cell_um: float | None = None,
    style: HeatmapStyle | None = None,
    max_size: int = 1024,
    title: str | None = None,
    label: str = "score",
    contours: TissueMask | None = None,
    tissue: TissueMask | None = None,
    scale_bar: bool = True,
) -> Path:
    """Write the slide's thumbnail with the scores blended on top and a colour bar.

    Args:
        slide: the slide.
        scores: ``(rows, cols)`` score map (NaN: not shown).
        out: PNG file to write.
        cell_um: microns per score cell; default: the grid spans the slide.
        style: colours and their opacity (``style.alpha``).
        max_size: longer side of the thumbnail in pixels.
        title: figure title (e.g. :func:`slide_title`), also the PNG's ``Title`` text chunk.
        label: colour bar label: say what the scores are and on which scale.
        contours: a ground-truth mask over the slide (``.mask`` bool, ``.mpp``, e.g.
            ``TissueMask.load("lesions/<slide_id>.png")``); its contours are drawn in
            :data:`CONTOUR_COLOUR` with the legend entry :data:`CONTOUR_LABEL`.
        tissue: the slide's tissue mask: pixels off it keep the thumbnail's own colour.
        scale_bar: draw a micron scale bar (:func:`~gigastream.viz.scale_bar.scale_bar_length`) in
            :data:`SCALE_BAR_COLOUR` under the thumbnail's lower right corner (only for a
            slide with mpp).

    Returns:
        ``out``.
    """
    fig = heatmap_figure(
        slide, scores, cell_um, style, max_size, title, label, contours, tissue, scale_bar
    )
    out = Path(out)
    metadata = {"Title": title} if title else None
    atomic_write(  # a viewer or a resumed run never sees half a PNG
        out,
        lambda tmp: fig.savefig(
            tmp, format="png", dpi=fig.dpi, bbox_inches="tight", metadata=metadata
        ),
    )
    logger.info("wrote heatmap %s", out)
    return out


def attention_heatmap_png(
    slide: SlideReader,
    attention: np.ndarray,
    out: str | Path,
    cell_um: float | None = None,
    max_size: int = 1024,
    title: str | None = None,
    contours: TissueMask | None = None,
    style: HeatmapStyle | None = None,
    tissue: TissueMask | None = None,
    scale_bar: bool = True,
) -> Path:
    """Write an attention heatmap PNG: attention x N on the fixed log scale, with contours.

    Args:
        slide: the slide.
        attention: ``(rows, cols)`` attention weights of the instances (NaN: no instance);
            they are shown as :func:`attention_times_n` (1 = uniform).
        out: PNG file to write.
        cell_um: microns per attention cell (e.g. ``output_stride * mpp``); default: the
            grid spans the slide.
        max_size: longer side of the thumbnail in pixels.
        title: figure title, e.g. ``slide_title(slide_id, label, p_positive)``.
        contours: ground-truth mask whose contours are drawn (see :func:`heatmap_png`).
        style: colours; default :meth:`HeatmapStyle.for_attention` (0.1 to 10, log,
            opacity :data:`ATTENTION_OPACITY`; ``HeatmapStyle.for_attention(0.3)`` for
            another opacity).
        tissue: the slide's tissue mask: the thumbnail is left untinted off it.
        scale_bar: draw a micron scale bar (see :func:`heatmap_png`).

    Returns:
        ``out``.

    Example:
        >>> import numpy as np
        >>> from gigastream import SlideReader
        >>> slide = SlideReader.from_array(np.full((256, 256, 3), 230, np.uint8), mpp=1.0)
        >>> attention_heatmap_png(slide, np.full((4, 4), 1 / 16), "a.png")  # doctest: +SKIP
    """
    return heatmap_png(
        slide,
        attention_times_n(_check_scores(attention)),
        out,
        cell_um=cell_um,
        style=style or HeatmapStyle.for_attention(),
        max_size=max_size,
        title=title,
        label=ATTENTION_LABEL,
        contours=contours,
        tissue=tissue,
        scale_bar=scale_bar,
    )
