"""Shared fixtures of the whole-slide tests: the real CMU-1 slide and small written slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gigastream.wsi.pyramid import PyramidConfig, write_pyramid

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
CMU1 = DATA / "slides" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared test data not found at {DATA} (clone with ../shared/data to run)")
    return DATA


@pytest.fixture(scope="session")
def cmu1() -> Path:
    if not CMU1.is_file():
        pytest.skip(f"real test slide not found at {CMU1} (clone with ../shared/data to run)")
    return CMU1


def make_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth colourful test image (JPEG-friendly), (H, W, 3) uint8."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 6, size=3)
    image = np.stack(
        [128 + 100 * np.sin(xx / 37 + phase[c]) * np.cos(yy / 53 + c) for c in range(3)], axis=-1
    )
    return image.astype(np.uint8)


@pytest.fixture(scope="session")
def image_factory():
    """:func:`make_image` as a fixture (test modules here are not a package)."""
    return make_image


@pytest.fixture(scope="session")
def tiff_slide(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 3-level 1000x1300 pyramidal JPEG TIFF at 0.25 um/px and its level-0 pixels."""
    image = make_image(1000, 1300)
    path = tmp_path_factory.mktemp("slides") / "pyramid.tif"
    strips = (image[y : y + 96] for y in range(0, 1000, 96))
    write_pyramid(
        path, strips, 1300, 1000, mpp=0.25, config=PyramidConfig(tile_size=256, quality=95)
    )
    return path, image


@pytest.fixture(scope="session")
def corrupt_slide(tmp_path_factory, tiff_slide) -> Path:
    """``tiff_slide`` with one tile of level 1 (level pixels x, y 256..512) overwritten."""
    import tifffile

    data = bytearray(tiff_slide[0].read_bytes())
    with tifffile.TiffFile(tiff_slide[0]) as tif:
        page = tif.pages[1]  # level 1: 650 x 500, 256 px tiles, 3 across
        assert page.shape[:2] == (500, 650) and page.tilewidth == 256
        tile = 1 * 3 + 1  # tile row 1, column 1
        offset, count = page.dataoffsets[tile], page.databytecounts[tile]
    rng = np.random.default_rng(0)  # random bytes: not a JPEG stream any decoder accepts
    data[offset : offset + count] = rng.integers(0, 256, count, dtype=np.uint8).tobytes()
    path = tmp_path_factory.mktemp("corrupt") / "corrupt.tif"
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def two_conv_trunk():
    """A seeded float64 trunk of two conv + ReLU + max-pool stages (stride 4), to stream."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
    ).double()
