"""Tissue mask overlays: a slide's thumbnail with its tissue mask outlined, as a PNG.

``gigastream tissue`` writes one next to each mask (``<slide>_overlay.png``), so the mask
can be checked by eye against the slide: the border of every tissue region is drawn,
opaque, in :data:`TISSUE_COLOUR` on the inner edge of the region; every other pixel is the
thumbnail's own.

Example:
    >>> import numpy as np
    >>> from gigastream import SlideReader
    >>> from gigastream.wsi.tissue import compute_tissue_mask
    >>> slide = SlideReader.from_array(np.full((512, 512, 3), 230, np.uint8), mpp=0.5)
    >>> tissue_overlay_png(slide, compute_tissue_mask(slide), "s_overlay.png")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gigastream.atomic import atomic_write
from gigastream.viz.heatmap import mask_under, picture_um

if TYPE_CHECKING:
    from gigastream.wsi.reader import SlideReader
    from gigastream.wsi.tissue import TissueMask

logger = logging.getLogger(__name__)

#: RGB colour of tissue outlines: cyan, apart from H&E (pink/purple), the white background
#: and the green of ground-truth lesion contours (:data:`~gigastream.viz.heatmap.CONTOUR_COLOUR`).
TISSUE_COLOUR = (0, 190, 255)


def tissue_overlay(
    slide: SlideReader, mask: TissueMask, max_size: int = 1024, line_px: int | None = None
) -> np.ndarray:
    """The slide's thumbnail with the borders of ``mask``'s regions drawn on it.

    Args:
        slide: the slide.
        mask: its tissue mask (``.mask`` bool, ``.mpp``).
        max_size: longer side of the thumbnail in pixels.
        line_px: width of the outline in thumbnail pixels; default: the longer side / 300,
            at least 2.

    Returns:
        ``(rows, cols, 3)`` uint8 RGB: the thumbnail, :data:`TISSUE_COLOUR` on the inner
        ``line_px`` of every tissue region's border (also along the slide's edge).
    """
    from scipy.ndimage import binary_erosion

    thumb = np.array(slide.thumbnail(max_size))  # a writable copy
    height, width = thumb.shape[:2]
    line = max(2, round(max(width, height) / 300)) if line_px is None else line_px
    if line < 1:
        raise ValueError(f"line_px must be positive, got {line_px}")
    on = mask_under(mask, slide, picture_um(slide, (height, width)), (height, width))
    # pixels within ``line`` of a pixel off the mask (or of the slide's edge)
    inner = binary_erosion(on, np.ones((2 * line + 1, 2 * line + 1), bool), border_value=0)
    thumb[on & ~inner] = TISSUE_COLOUR
    return thumb


def tissue_overlay_png(
    slide: SlideReader, mask: TissueMask, out: str | Path, max_size: int = 1024
) -> Path:
    """Write :func:`tissue_overlay` as a PNG (the thumbnail's size).

    Returns:
        ``out``.
    """
    from PIL import Image

    out = Path(out)
    image = Image.fromarray(tissue_overlay(slide, mask, max_size))
    atomic_write(out, lambda tmp: image.save(tmp, format="PNG"))
    logger.info("wrote tissue overlay %s", out)
    return out


__all__ = ["TISSUE_COLOUR", "tissue_overlay", "tissue_overlay_png"]
