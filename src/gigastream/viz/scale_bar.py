"""The micron scale bar under a heatmap: a round length, 10-25% of the picture's width."""

from __future__ import annotations

import math
from typing import Any

#: RGB colour of the scale bar (black: visible on the white page under the thumbnail).
SCALE_BAR_COLOUR = (0, 0, 0)

#: The round lengths of a scale bar, times a power of ten.
_ROUND = (5.0, 2.0, 1.0)


def scale_bar_length(width_um: float, largest: float = 0.25) -> float:
    """The scale bar length of a picture ``width_um`` microns wide: the longest round length
    (1, 2 or 5 x 10^k um) at most ``largest`` of the width, so (1-2-5 steps being at most
    2.5x) more than ``largest / 2.5`` of it: 10-25% by default.

    Example:
        >>> scale_bar_length(400.0), scale_bar_length(3000.0), scale_bar_length(25_000.0)
        (100.0, 500.0, 5000.0)
    """
    if not (math.isfinite(width_um) and width_um > 0):
        raise ValueError(f"width_um must be a positive number of microns, got {width_um}")
    target = width_um * largest * (1 + 1e-9)  # a round quarter stays itself
    power = 10.0 ** math.floor(math.log10(target))
    return next(r * power for r in _ROUND if r * power <= target)


def scale_bar_text(length_um: float) -> str:
    """A scale bar's label: microns below a millimetre, millimetres from there on.

    Example:
        >>> scale_bar_text(500.0), scale_bar_text(1000.0), scale_bar_text(0.5)
        ('500 µm', '1 mm', '0.5 µm')
    """
    if length_um >= 1000:
        return f"{length_um / 1000:g} mm"
    return f"{length_um:g} µm"


def _add_scale_bar(ax: Any, um_per_px: float, width: int) -> None:
    """A scale bar under the lower right corner of the thumbnail in ``ax`` (``width`` px
    wide at ``um_per_px``), outside it, so it hides no tissue (a legend goes below it)."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    length_um = scale_bar_length(width * um_per_px)
    bar = AnchoredSizeBar(
        ax.transData,
        length_um / um_per_px,  # in thumbnail pixels
        scale_bar_text(length_um),
        loc="upper right",
        bbox_to_anchor=(1.0, -0.01),
        bbox_transform=ax.transAxes,
        pad=0.0,
        borderpad=0.0,
        sep=3,
        frameon=False,
        size_vertical=min(max(3.0, width / 200), 6.0),  # thumbnail px, about PNG px
        color=tuple(c / 255 for c in SCALE_BAR_COLOUR),
    )
    bar.set_gid("scale_bar")
    ax.add_artist(bar)


__all__ = ["SCALE_BAR_COLOUR", "scale_bar_length", "scale_bar_text"]
