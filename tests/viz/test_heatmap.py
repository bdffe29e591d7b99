"""Heatmaps: PNG overlay with colour bar and scale bar, full-resolution pyramidal TIFF
overlay, tissue-only tinting, opacity, titles, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gigastream import SlideReader
from gigastream.viz.heatmap import (
    ATTENTION_LABEL,
    ATTENTION_OPACITY,
    CONTOUR_COLOUR,
    HeatmapStyle,
    attention_heatmap_png,
    attention_times_n,
    check_opacity,
    colorize,
    contour_lines,
    heatmap_figure,
    heatmap_png,
    overlay,
    slide_title,
)
from gigastream.viz.heatmap_tiff import attention_heatmap_tiff, heatmap_tiff
from gigastream.viz.scale_bar import SCALE_BAR_COLOUR, scale_bar_length, scale_bar_text
from gigastream.wsi.tissue import TissueMask


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


@pytest.fixture
def lesion():
    """A lesion mask at 4 um/px over the 800x600 px (400x300 um) slide: x 100-200, y 80-160 um."""
    mask = np.zeros((75, 100), bool)
    mask[20:40, 25:50] = True
    return TissueMask(mask, mpp=4.0)


def _green(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., c].astype(int) for c in range(3))
    return (g > 150) & (r < 120) & (b < 120)


def _first_run(flags: np.ndarray) -> tuple[int, int]:
    """Start and end of the first run of True."""
    start = int(np.argmax(flags))
    rest = flags[start:]
    return start, start + (int(np.argmin(rest)) if not rest.all() else len(rest))


def test_contour_lines_follow_the_mask(slide, lesion):
    (line,) = contour_lines(lesion, slide, (0.5, 0.5))  # in level-0 pixels (0.5 um/px)
    # the region's border (pixel edges at 100/200 um, 80/160 um), at half-pixel precision
    assert line[:, 0].min() == pytest.approx(200 - 0.5 - 4, abs=4.1)
    assert line[:, 0].max() == pytest.approx(400 - 0.5 + 4, abs=4.1)
    assert line[:, 1].min() == pytest.approx(160 - 0.5 - 4, abs=4.1)
    assert line[:, 1].max() == pytest.approx(320 - 0.5 + 4, abs=4.1)
    np.testing.assert_allclose(line[0], line[-1])  # closed


def test_png_draws_contours_where_the_mask_is(tmp_path, lesion):
    dark = SlideReader.from_array(np.zeros((600, 800, 3), np.uint8), mpp=0.5)
    scores, clear = np.zeros((3, 4)), HeatmapStyle(cmap="Reds", alpha=0.0)  # contours only
    path = heatmap_png(dark, scores, tmp_path / "c.png", style=clear, max_size=400, contours=lesion)
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"))
    black = (rgb < 30).all(axis=-1)  # the black slide thumbnail (and the colour bar frame)
    (y0, y1), (x0, x1) = (_first_run(black.sum(axis=a) > 100) for a in (1, 0))
    px = (x1 - x0) / 400  # PNG pixels per micron (thumbnail 400 px = 400 um)
    assert (y1 - y0) / 300 == pytest.approx(px, rel=0.02)
    green = _green(rgb)
    inside = np.argwhere(green[y0:y1, x0:x1])
    assert len(inside) > 100
    ys, xs = inside[:, 0] / px, inside[:, 1] / px  # microns
    on_border = (((np.abs(xs - 100) < 4) | (np.abs(xs - 200) < 4)) & (ys > 76) & (ys < 164)) | (
        ((np.abs(ys - 80) < 4) | (np.abs(ys - 160) < 4)) & (xs > 96) & (xs < 204)
    )
    assert on_border.all()  # green only on the lesion's border ...
    for near in (xs < 104, xs > 196, ys < 84, ys > 156):
        assert near.sum() > 20  # ... on all four sides
    assert green[y1 + 5 :].any()  # the legend entry below the thumbnail
    plain = heatmap_png(dark, scores, tmp_path / "plain.png", style=clear, max_size=400)
    with Image.open(plain) as img:
        assert not _green(np.asarray(img.convert("RGB"))).any()


def test_tiff_burns_contours_in(slide, lesion, tmp_path):
    path = heatmap_tiff(
        slide,
        np.zeros((3, 4)),
        tmp_path / "c.tif",
        style=HeatmapStyle(alpha=0.0),
        contours=lesion,
        contour_width_px=4,
    )
    with SlideReader.open(path) as viewer:
        image = viewer.read_level(0, 0, 0, 800, 600)
    green = _green(image)
    # border pixels of the region x 200..400, y 160..320 (level 0), 4 px wide, inside it
    assert green[160:164, 200:400].mean() > 0.9 and green[316:320, 200:400].mean() > 0.9
    assert green[160:320, 200:204].mean() > 0.9 and green[160:320, 396:400].mean() > 0.9
    assert not green[170:310, 210:390].any()  # not inside the region ...
    assert not green[:150].any() and not green[330:].any() and not green[:, 410:].any()
    with pytest.raises(ValueError, match="contour_width_px must be positive"):
        heatmap_tiff(
            slide, np.ones((2, 2)), tmp_path / "x.tif", contours=lesion, contour_width_px=0
        )


def test_uniform_attention_is_one_flat_neutral_colour(tmp_path):
    flat = SlideReader.from_array(np.full((600, 800, 3), 200, np.uint8), mpp=0.5)
    uniform = np.full((6, 8), 1 / 48)
    scores = attention_times_n(uniform)
    np.testing.assert_allclose(scores, 1.0)
    colours, _ = colorize(scores, HeatmapStyle.for_attention())
    assert (colours == colours[0, 0]).all()
    assert colours[0, 0].min() > 230  # the neutral middle of the scale: near white
    path = attention_heatmap_png(flat, uniform, tmp_path / "u.png", max_size=400)
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB")).astype(int)
    # the thumbnail: the largest block of the blended colour, and nothing else in it
    blended = overlay(
        flat, scores, np.full((300, 400, 3), 200, np.uint8), None, HeatmapStyle.for_attention()
    )
    assert (blended == blended[0, 0]).all()
    assert (np.abs(rgb - blended[0, 0]).max(axis=-1) <= 1).sum() >= 300 * 400


def test_attention_noise_is_not_stretched_into_structure():
    rng = np.random.default_rng(0)
    attention = rng.uniform(0.95, 1.05, (20, 20))  # +-5% around uniform
    colours, _ = colorize(attention_times_n(attention), HeatmapStyle.for_attention())
    neutral, _ = colorize(np.ones((1, 1)), HeatmapStyle.for_attention())
    assert np.abs(colours.astype(int) - neutral[0, 0]).max() <= 12  # pale, not the full range
    hot, _ = colorize(np.array([[10.0, 0.1]]), HeatmapStyle.for_attention())
    assert hot[0, 0, 0] > 80 > hot[0, 0, 2] and hot[0, 1, 2] > 80 > hot[0, 1, 0]  # red, blue


def test_attention_times_n_and_its_errors():
    values = attention_times_n(np.array([[0.1, 0.3], [np.nan, 0.6]]))
    np.testing.assert_allclose(values[np.isfinite(values)], [0.3, 0.9, 1.8])
    assert np.isnan(values[1, 0])
    with pytest.raises(ValueError, match="no finite positive value"):
        attention_times_n(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="log colour scale needs vmin > 0"):
        colorize(np.ones((2, 2)), HeatmapStyle(log=True, vmin=0.0, vmax=1.0))
    assert "attention × N" in ATTENTION_LABEL and "1 = uniform" in ATTENTION_LABEL


def test_slide_title():
    assert slide_title("synth_003", "positive", 0.931) == (
        "synth_003 — label: positive — p(positive) = 0.93"
    )
    assert slide_title("s1", "negative", 0.07, positive_name="tumour") == (
        "s1 — label: negative — p(tumour) = 0.07"
    )
    assert slide_title("s2", None, 0.5) == "s2 — p(positive) = 0.50"
    assert CONTOUR_COLOUR == (0, 230, 0)


def test_attention_tiff_uses_the_attention_scale(slide, lesion, tmp_path):
    attention = np.full((3, 4), 1 / 12)
    path = attention_heatmap_tiff(slide, attention, tmp_path / "a.tif", contours=lesion)
    neutral = overlay(
        slide,
        np.ones((3, 4)),
        np.full((600, 800, 3), 235, np.uint8),
        None,
        HeatmapStyle.for_attention(),
    )[0, 0].astype(int)
    with SlideReader.open(path) as viewer:
        image = viewer.read_level(0, 0, 0, 800, 600).astype(int)
    assert np.abs(image[:100, :100] - neutral).max() <= 3  # flat neutral colour (JPEG)
    assert _green(image[160:320, 200:400]).any()


# ------------------------------------------------------------------ issue 16: pictures
def _scale_bar(fig):
    (bar,) = [a for a in fig.axes[0].get_children() if a.get_gid() == "scale_bar"]
    return bar


@pytest.mark.parametrize("width_um", [3.0, 40.0, 400.0, 999.0, 2000.0, 4000.0, 9e3, 25e3, 1e5])
def test_scale_bar_length_is_round_and_a_tenth_to_a_quarter_of_the_width(width_um):
    length = scale_bar_length(width_um)
    mantissa = length / 10 ** np.floor(np.log10(length))
    assert mantissa == pytest.approx(1) or mantissa == pytest.approx(2) or mantissa == 5
    assert 0.1 <= length / width_um <= 0.25


def test_scale_bar_lengths_and_labels():
    assert [scale_bar_length(w) for w in (400.0, 2000.0, 4000.0, 25_000.0)] == [
        100.0,
        500.0,
        1000.0,
        5000.0,
    ]
    assert [scale_bar_text(x) for x in (100.0, 500.0, 1000.0, 5000.0, 0.5)] == [
        "100 µm",
        "500 µm",
        "1 mm",
        "5 mm",
        "0.5 µm",
    ]
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="positive number of microns"):
            scale_bar_length(bad)


def test_png_has_a_scale_bar_of_the_bar_colour_and_length(tmp_path):
    grey = SlideReader.from_array(np.full((600, 800, 3), 200, np.uint8), mpp=0.5)  # 400 um wide
    clear = HeatmapStyle(alpha=0.0)
    fig = heatmap_figure(grey, np.ones((3, 4)), style=clear, max_size=400)  # 1 um per thumb px
    assert _scale_bar(fig).txt_label.get_text() == "100 µm"  # 25% of 400 um
    path = heatmap_png(grey, np.ones((3, 4)), tmp_path / "bar.png", style=clear, max_size=400)
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB")).astype(int)
    thumb = (np.abs(rgb - 200) <= 1).all(axis=-1)
    (y0, y1), (x0, x1) = (_first_run(thumb.sum(axis=a) > 100) for a in (1, 0))
    px = (x1 - x0) / 400  # PNG pixels per micron
    bar = (rgb == SCALE_BAR_COLOUR).all(axis=-1)
    assert not bar[y0:y1, x0:x1].any()  # under the thumbnail, hiding no tissue
    rows = np.flatnonzero(bar[y1 : y1 + 20, x0 : x1 + 2].sum(axis=1) > 50 * px) + y1
    assert len(rows) >= 2  # a bar a few pixels thick ...
    for row in rows:
        cols = np.flatnonzero(bar[row, x0 : x1 + 2])
        assert len(cols) == pytest.approx(100 * px, abs=2)  # ... 100 um long ...
        assert cols[-1] + x0 == pytest.approx(x1 - 1, abs=2)  # ... at the right edge
    bare = heatmap_png(
        grey, np.ones((3, 4)), tmp_path / "bare.png", style=clear, max_size=400, scale_bar=False
    )
    no_mpp = SlideReader.from_array(np.full((600, 800, 3), 200, np.uint8), mpp=None)
    unknown = heatmap_png(
        no_mpp, np.ones((3, 4)), tmp_path / "nompp.png", style=clear, max_size=400
    )
    for other in (bare, unknown):
        with Image.open(other) as img:
            black = (np.asarray(img.convert("RGB")) == SCALE_BAR_COLOUR).all(axis=-1)
        assert black.sum(axis=1).max() < 50 * px  # no bar (microns unknown without mpp)


def test_scale_bar_follows_the_thumbnail_microns():
    big = SlideReader.from_array(np.full((1000, 2000, 3), 200, np.uint8), mpp=2.0)  # 4 mm wide
    fig = heatmap_figure(big, np.ones((2, 2)), max_size=500)  # 8 um per thumbnail pixel
    bar = _scale_bar(fig)
    assert bar.txt_label.get_text() == "1 mm"
    (rectangle,) = bar.size_bar.get_children()
    assert rectangle.get_width() == pytest.approx(1000 / 8)  # thumbnail pixels


@pytest.fixture
def half_tissue():
    """A tissue mask (4 um/px) over the 800x600 px (400x300 um) slide: the left half, x < 200 um."""
    mask = np.zeros((75, 100), bool)
    mask[:, :50] = True
    return TissueMask(mask, mpp=4.0)


def test_overlay_leaves_the_thumbnail_untinted_off_tissue(slide, half_tissue):
    image = np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    style = HeatmapStyle(alpha=0.8)
    scores = np.random.default_rng(2).random((3, 4))  # every cell finite
    out = overlay(slide, scores, image, style=style, tissue=half_tissue)
    np.testing.assert_array_equal(out[:, 200:], image[:, 200:])  # off tissue: the thumbnail
    np.testing.assert_array_equal(out[:, :200], overlay(slide, scores, image, style=style)[:, :200])
    assert (out[:, :200] != image[:, :200]).any(axis=-1).mean() > 0.9  # on tissue: tinted


def test_png_and_tiff_are_untinted_off_tissue(slide, half_tissue, tmp_path):
    scores, hot = np.ones((3, 4)), HeatmapStyle(cmap="Reds", alpha=1.0, vmin=0.0, vmax=1.0)
    path = heatmap_png(
        slide, scores, tmp_path / "t.png", style=hot, max_size=400, tissue=half_tissue
    )
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB")).astype(int)
    (red,) = colorize(np.ones((1, 1)), hot)[0][0].astype(int)[None]
    is_red = (np.abs(rgb - red) <= 1).all(axis=-1)
    is_slide = (rgb == 235).all(axis=-1)  # the slide's own grey
    y0, y1 = _first_run(is_slide.sum(axis=1) > 100)
    (r0, r1), (s0, s1) = (_first_run(flags.sum(axis=0) > 100) for flags in (is_red, is_slide))
    assert r1 - r0 == pytest.approx(s1 - s0, abs=2) and 0 <= s0 - r1 <= 2  # two halves
    assert is_red[y0 + 1 : y1 - 1, r0 + 1 : r1 - 1].all()  # tissue: tinted
    assert is_slide[y0 + 1 : y1 - 1, s0 + 1 : s1 - 1].all()  # background: the slide's pixels
    tiff = heatmap_tiff(slide, scores, tmp_path / "t.tif", style=hot, tissue=half_tissue)
    with SlideReader.open(tiff) as viewer:
        image = viewer.read_level(0, 0, 0, 800, 600).astype(int)
    inner = image[:584]  # JPEG: red next to the white padding of the last tile row bleeds
    assert np.abs(inner[:, 404:] - 235).max() <= 3  # background: the slide's pixels
    assert np.abs(inner[:, :396] - red).max() <= 6  # tissue: tinted


def test_opacity_is_checked_and_sets_the_blend(slide):
    assert HeatmapStyle.for_attention().alpha == ATTENTION_OPACITY == 0.55  # the usual look
    assert check_opacity(0) == 0.0 and check_opacity(1) == 1.0
    for bad in (-0.1, 1.5, float("nan"), "much"):
        with pytest.raises(ValueError, match="opacity must be a number from 0 .* to 1"):
            HeatmapStyle(alpha=bad)
    with pytest.raises(ValueError, match="--opacity must be a number from 0"):
        check_opacity(2, "--opacity")
    image = np.full((300, 400, 3), 100, np.uint8)
    white = HeatmapStyle(cmap="gray", vmin=0.0, vmax=1.0, alpha=0.25)
    out = overlay(slide, np.ones((3, 4)), image, style=white)
    assert (out == round(100 * 0.75 + 255 * 0.25)).all()


def test_title_is_on_the_figure_and_in_the_png(slide, tmp_path):
    title = slide_title("s1", "positive", 0.93)
    fig = heatmap_figure(slide, np.ones((3, 4)), title=title, max_size=256)
    assert fig.axes[0].get_title() == title
    path = attention_heatmap_png(slide, np.ones((3, 4)), tmp_path / "t.png", title=title)
    with Image.open(path) as img:
        assert img.text["Title"] == title
