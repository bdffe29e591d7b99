"""JPEG 2000 pyramids: tags, read back by tiffslide at every level, refused by OpenSlide
(so the default backend falls back to tiffslide); the default JPEG tiles unchanged."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
import tifffile

from gigastream.wsi.pyramid import PyramidConfig, write_pyramid
from gigastream.wsi.reader import SlideError, SlideReader


@pytest.fixture(scope="module")
def slides(tmp_path_factory, image_factory):
    """The same 300x400 image written as a JPEG and as a JPEG 2000 pyramid (tile 128)."""
    image = image_factory(300, 400, seed=5)
    folder = tmp_path_factory.mktemp("j2k")
    paths = {}
    for compression in ("jpeg", "jpeg2000"):
        paths[compression] = folder / f"{compression}.tif"
        strips = (image[y : y + 70] for y in range(0, 300, 70))
        config = PyramidConfig(tile_size=128, compression=compression)
        write_pyramid(paths[compression], strips, 400, 300, mpp=0.5, config=config)
    return image, paths


def test_jpeg2000_pages_are_tagged_34712_with_every_level(slides):
    _, paths = slides
    with tifffile.TiffFile(paths["jpeg2000"]) as tif:
        assert [p.compression for p in tif.pages] == [34712, 34712, 34712]
        assert [p.imagewidth for p in tif.pages] == [400, 200, 100]


def test_tiffslide_reads_jpeg2000_close_to_jpeg_and_the_image(slides):
    image, paths = slides
    levels = {}
    for compression, path in paths.items():
        with SlideReader.open(path, backend="tiffslide") as slide:
            assert slide.mpp == pytest.approx(0.5)
            levels[compression] = [
                slide.read_level(k, 0, 0, *slide.levels[k].dimensions).astype(np.int16)
                for k in range(len(slide.levels))
            ]
    assert np.abs(levels["jpeg2000"][0] - image).mean() < 3
    for jpeg, jpeg2000 in zip(levels["jpeg"], levels["jpeg2000"], strict=True):
        assert jpeg.shape == jpeg2000.shape
        assert np.abs(jpeg - jpeg2000).mean() < 4


def test_openslide_refuses_jpeg2000_and_the_default_backend_reads_it_with_tiffslide(slides):
    _, paths = slides
    with pytest.raises(SlideError, match="Unsupported TIFF compression: 34712"):
        SlideReader.open(paths["jpeg2000"], backend="openslide")
    with SlideReader.open(paths["jpeg2000"]) as slide:  # auto: OpenSlide names it, cannot open it
        assert slide.backend == "tiffslide" and slide.dimensions == (400, 300)


def test_default_jpeg_tiles_are_unchanged(slides):
    """The JPEG tiles are imagecodecs' baseline RGB->YCbCr 4:2:0 at quality 90, as before."""
    image, paths = slides
    with tifffile.TiffFile(paths["jpeg"]) as tif, open(paths["jpeg"], "rb") as fh:
        page = tif.pages[0]
        assert page.compression == 7
        fh.seek(page.dataoffsets[0])
        stored = fh.read(page.databytecounts[0])
    expected = imagecodecs.jpeg8_encode(
        np.ascontiguousarray(image[:128, :128]),
        level=90,
        colorspace="RGB",
        outcolorspace="YCBCR",
        subsampling=(2, 2),
    )
    assert stored == expected


def test_unknown_compression(tmp_path):
    with pytest.raises(ValueError, match="compression must be one of jpeg, jpeg2000"):
        write_pyramid(tmp_path / "x.tif", iter([]), 64, 64, 1.0, PyramidConfig(compression="webp"))
    assert not list(tmp_path.iterdir())
