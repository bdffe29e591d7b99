"""Heatmaps: PNG overlay with colour bar, full-resolution pyramidal TIFF overlay, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gigastream import SlideReader
from gigastream.viz.heatmap import HeatmapStyle, colorize, heatmap_png, heatmap_tiff, overlay


@pytest.fixture
def slide():
    return SlideReader.from_array(np.full((600, 800, 3), 235, np.uint8), mpp=0.5)


def test_colorize_scale_and_nan():
    colours, finite = colorize(np.array([[0.0, 1.0, np.nan]]), HeatmapStyle(cmap="gray"))
    assert finite.tolist() == [[True, True, False]]
    assert colours[0, 0].tolist() == [0, 0, 0] and colours[0, 1].tolist() == [255, 255, 255]


def test_overlay_is_aligned_to_the_slide(slide):
    scores = np.full((3, 4), np.nan)
    scores[0, 0] = 1.0  # top-left cell only: 200x200 level-0 px
    image = np.full((300, 400, 3), 235, np.uint8)  # the slide at half size
    out = overlay(slide, scores, image, style=HeatmapStyle(alpha=1.0))
    assert (out[:100, :100] != 235).all(axis=-1).all()
    assert (out[100:, :] == 235).all() and (out[:, 100:] == 235).all()


def test_cell_um_places_cells(slide):
    scores = np.ones((2, 2))
    image = np.full((600, 800, 3), 235, np.uint8)  # level 0 (0.5 um/px)
    out = overlay(slide, scores, image, cell_um=50.0, style=HeatmapStyle(alpha=1.0, vmin=0, vmax=1))
    covered = (out != 235).any(axis=-1)
    assert covered[:200, :200].all() and not covered[200:].any() and not covered[:, 200:].any()


def test_png_has_thumbnail_and_colour_bar(slide, tmp_path):
    scores = np.random.default_rng(0).random((6, 8))
    path = heatmap_png(slide, scores, tmp_path / "h.png", max_size=256, title="attention")
    with Image.open(path) as img:
        width, height = img.size
    assert width > 256 and height >= 150  # thumbnail plus colour bar and title


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_tiff_overlay_opens_as_a_slide(slide, tmp_path, backend):
    scores = np.zeros((3, 4))
    scores[1, 2] = 1.0
    path = heatmap_tiff(
        slide, scores, tmp_path / "h.tif", style=HeatmapStyle(alpha=1.0), strip_rows=96
    )
    with SlideReader.open(path, backend=backend) as viewer:
        assert viewer.dimensions == (800, 600) and len(viewer.levels) == 3
        assert viewer.mpp == pytest.approx(0.5)
        image = viewer.read_level(0, 0, 0, 800, 600).astype(int)
    hot = image[250:350, 450:550].mean(axis=(0, 1))
    cold = image[50:150, 50:150].mean(axis=(0, 1))
    assert np.abs(hot - cold).sum() > 100


def test_tiff_overlay_at_lower_mpp(slide, tmp_path):
    path = heatmap_tiff(slide, np.ones((2, 2)), tmp_path / "h.tif", mpp=2.0)
    with SlideReader.open(path) as viewer:
        assert viewer.dimensions == (200, 150) and viewer.mpp == pytest.approx(2.0)


def test_errors(slide, tmp_path):
    with pytest.raises(ValueError, match="2-d"):
        heatmap_png(slide, np.ones(5), tmp_path / "x.png")
    with pytest.raises(ValueError, match="no finite value"):
        heatmap_tiff(slide, np.full((2, 2), np.nan), tmp_path / "x.tif")
    with pytest.raises(ValueError, match="cell_um must be positive"):
        overlay(slide, np.ones((2, 2)), np.zeros((10, 10, 3), np.uint8), cell_um=0.0)
