"""Tissue mask overlays (``gigastream.viz.tissue``): the thumbnail, outlined where the mask's
regions end, every other pixel the thumbnail's own."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gigastream import SlideReader
from gigastream.viz.tissue import TISSUE_COLOUR, tissue_overlay, tissue_overlay_png
from gigastream.wsi.tissue import TissueMask


@pytest.fixture
def slide():
    """800x600 px at 0.5 um/px (400x300 um), a random texture (every pixel its own)."""
    image = np.random.default_rng(0).integers(0, 200, (600, 800, 3), dtype=np.uint8)
    return SlideReader.from_array(image, mpp=0.5)


@pytest.fixture
def mask():
    """Tissue at 4 um/px: x 100-200 um, y 80-160 um (thumbnail px 100-200, 80-160 at 1 um/px)."""
    mask = np.zeros((75, 100), bool)
    mask[20:40, 25:50] = True
    return TissueMask(mask, mpp=4.0)


def test_overlay_outlines_the_tissue_and_keeps_every_other_pixel(slide, mask, tmp_path):
    thumb = slide.thumbnail(400)  # 1 um per pixel
    picture = tissue_overlay(slide, mask, max_size=400, line_px=3)
    assert picture.shape == thumb.shape
    changed = (picture != thumb).any(axis=-1)
    assert (picture[changed] == TISSUE_COLOUR).all()  # the outline, opaque
    ys, xs = np.nonzero(changed)
    assert ys.min() == 80 and ys.max() == 159 and xs.min() == 100 and xs.max() == 199
    band = np.zeros_like(changed)
    band[80:160, 100:200] = True
    band[83:157, 103:197] = False  # the region's inner border, 3 px wide
    np.testing.assert_array_equal(changed, band)
    path = tissue_overlay_png(slide, mask, tmp_path / "s_overlay.png", max_size=400)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (400, 300)
        np.testing.assert_array_equal(
            np.asarray(img.convert("RGB")), tissue_overlay(slide, mask, 400)
        )


def test_overlay_without_tissue_is_the_thumbnail_and_bad_width(slide):
    empty = TissueMask(np.zeros((75, 100), bool), mpp=4.0)
    np.testing.assert_array_equal(tissue_overlay(slide, empty, 400), slide.thumbnail(400))
    with pytest.raises(ValueError, match="line_px must be positive"):
        tissue_overlay(slide, empty, 400, line_px=0)
