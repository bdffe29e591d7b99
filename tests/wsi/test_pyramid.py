"""The streaming pyramid TIFF writer: one page per level, tiles, resolution tags, errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from gigastream.wsi.pyramid import PyramidConfig, level_dimensions, write_pyramid


def test_pages_levels_tiles_and_resolution(tiff_slide):
    path, _ = tiff_slide
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 4  # one page per level, no SubIFDs
        for k, page in enumerate(tif.pages):
            assert page.is_tiled and page.tilewidth == 256 and page.compression == 7
            assert page.subfiletype == (0 if k == 0 else 1)
            assert not page.subifds
            x_res = page.tags["XResolution"].value
            assert page.tags["ResolutionUnit"].value == 3  # centimetre
            mpp = 1e4 * x_res[1] / x_res[0]
            assert mpp == pytest.approx(0.25 * 1300 / page.imagewidth, rel=1e-6)


def test_level_dimensions():
    assert level_dimensions(256, 256, 256) == [(256, 256)]
    assert level_dimensions(257, 10, 256) == [(257, 10), (129, 5)]


def test_strip_heights_need_not_match_tiles(tmp_path, image_factory):
    image = image_factory(300, 200, seed=3)
    strips = [image[:7], image[7:250], image[250:]]
    dims = write_pyramid(
        tmp_path / "s.tif",
        iter(strips),
        200,
        300,
        mpp=1.0,
        config=PyramidConfig(tile_size=64, quality=95),
    )
    assert dims == [(200, 300), (100, 150), (50, 75), (25, 38)]
    with tifffile.TiffFile(tmp_path / "s.tif") as tif:
        got = tif.pages[0].asarray().astype(int)
    assert np.abs(got - image).mean() < 3


@pytest.mark.parametrize(
    ("strips", "message"),
    [
        ([np.zeros((64, 100, 3), np.uint8)], "strips must be"),
        ([np.zeros((64, 128, 3), np.uint8)], "strips hold 64 rows, expected height=128"),
        ([np.zeros((100, 128, 3), np.uint8)] * 2, "more than height=128"),
        ([np.zeros((128, 128, 3), np.float32)], "strips must be"),
    ],
    ids=["width", "short", "long", "dtype"],
)
def test_bad_strips_raise_and_leave_no_file(tmp_path, strips, message):
    path = tmp_path / "bad.tif"
    with pytest.raises(ValueError, match=message):
        write_pyramid(path, iter(strips), 128, 128, mpp=1.0, config=PyramidConfig(tile_size=64))
    assert not path.exists() and not list(tmp_path.iterdir())


def test_bad_tile_size(tmp_path):
    with pytest.raises(ValueError, match="multiple of 16"):
        write_pyramid(
            tmp_path / "x.tif", iter([]), 64, 64, mpp=1.0, config=PyramidConfig(tile_size=100)
        )
