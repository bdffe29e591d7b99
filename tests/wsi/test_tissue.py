"""Tissue masks: Otsu on saturation, cleanup, resolution, PNG round trip, user masks, empty slides."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gigastream import SlideError, SlideReader
from gigastream.wsi.tissue import (
    NoTissueError,
    TissueMask,
    TissueMaskConfig,
    compute_tissue_mask,
    mask_from_image,
    otsu_threshold,
    require_tissue,
)


def _blob_image() -> np.ndarray:
    image = np.full((400, 400, 3), 244, np.uint8)
    image[100:300, 80:320] = (200, 110, 170)  # tissue
    image[180:186, 180:186] = 244  # a small hole in it
    image[20:23, 20:23] = (120, 30, 120)  # a speck of dust
    return image


def test_mask_finds_tissue_fills_holes_drops_specks():
    mask = mask_from_image(_blob_image(), mpp=4.0)  # 16 um^2 per pixel
    assert mask.mask[150, 150] and mask.mask[183, 183]  # hole of 36 px = 576 um^2 filled
    assert not mask.mask[21, 21]  # speck of 9 px = 144 um^2 removed
    assert not mask.mask[350, 350]
    assert mask.tissue_fraction == pytest.approx(200 * 240 / 400**2, rel=0.01)


def test_border_background_is_not_a_hole():
    image = np.full((64, 64, 3), 244, np.uint8)
    image[:, 32:] = (200, 110, 170)
    mask = mask_from_image(image, mpp=8.0)
    assert not mask.mask[:, :30].any()


def test_otsu_separates_two_modes():
    values = np.concatenate([np.full(100, 0.1), np.full(100, 0.7)])
    assert 0.1 < otsu_threshold(values) <= 0.7


def test_empty_slide_is_reported():
    blank = SlideReader.from_array(np.full((512, 512, 3), 243, np.uint8), mpp=0.5)
    mask = compute_tissue_mask(blank)
    assert mask.is_empty()
    with pytest.raises(NoTissueError, match="blank: no tissue found"):
        require_tissue(mask, "blank")
    assert issubclass(NoTissueError, SlideError)


def test_noisy_glass_is_not_tissue():
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(240, 4, size=(256, 256, 3)), 0, 255).astype(np.uint8)
    assert mask_from_image(glass, mpp=8.0).is_empty()


def test_mask_at_any_resolution_and_region_query():
    mask = TissueMask(np.zeros((10, 20), bool), mpp=8.0)
    mask.mask[2:5, 10:15] = True
    big = mask.resize((40, 80))
    assert big.shape == (40, 80) and big[8:20, 40:60].all() and big.sum() == 12 * 20
    assert mask.any_in(80, 16, 100, 30)  # microns
    assert not mask.any_in(0, 0, 70, 70)


def test_png_round_trip_keeps_mpp(tmp_path):
    mask = mask_from_image(_blob_image(), mpp=4.0)
    path = mask.save(tmp_path / "mask.png")
    loaded = TissueMask.load(path)
    assert loaded.mpp == 4.0
    np.testing.assert_array_equal(loaded.mask, mask.mask)


def test_user_mask_without_mpp_takes_it_from_the_slide(tmp_path):
    slide = SlideReader.from_array(np.full((800, 1600, 3), 240, np.uint8), mpp=0.5)
    user = np.zeros((50, 100), np.uint8)
    user[10:20, 30:60] = 255
    Image.fromarray(user).save(tmp_path / "user.png")
    mask = TissueMask.load(tmp_path / "user.png", slide=slide)
    assert mask.mpp == pytest.approx(8.0)
    assert mask.mask.sum() == 300


def test_mask_load_errors(tmp_path):
    with pytest.raises(SlideError, match="mask file not found"):
        TissueMask.load(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(SlideError, match=r"bad\.png: cannot read the mask image"):
        TissueMask.load(tmp_path / "bad.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "plain.png")
    with pytest.raises(SlideError, match="mpp is unknown"):
        TissueMask.load(tmp_path / "plain.png")


def test_save_is_atomic_and_keeps_a_cache_key(tmp_path, monkeypatch):
    from gigastream.wsi.tissue import CACHE_KEY, stored_text

    path = tmp_path / "m.png"
    TissueMask(np.ones((8, 8), bool), 2.0).save(path, key="abc")
    assert stored_text(path)[CACHE_KEY] == "abc" and TissueMask.load(path).mpp == 2.0
    before = path.read_bytes()

    def disk_full(self, fp, *args, **kwargs):  # half a file, then the disk is full
        with open(fp, "wb") as f:
            f.write(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        TissueMask(np.zeros((8, 8), bool), 2.0).save(path)
    assert path.read_bytes() == before  # the old mask, whole
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]  # no temporary left


def test_cmu1_has_tissue(cmu1):
    with SlideReader.open(cmu1) as slide:
        mask = compute_tissue_mask(slide, TissueMaskConfig(mpp=8.0))
    assert mask.mask.shape == (185, 138)
    assert 0.2 < mask.tissue_fraction < 0.6
    require_tissue(mask, "cmu1")
