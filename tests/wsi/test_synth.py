"""Synthetic slides: readable by both backends with every level and mpp, seeded, lesions planted."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gigastream import SlideReader
from gigastream.wsi.manifest import read_manifest
from gigastream.wsi.synth import (
    Lesion,
    SlideRenderer,
    SynthConfig,
    build_texture_bank,
    find_sources,
    lesion_mask,
    lesion_modulation,
    synthesize_dataset,
)
from gigastream.wsi.tissue import TissueMask, TissueMaskConfig, compute_tissue_mask

CONFIG = SynthConfig(
    slides=2,
    size=1024,
    positive_fraction=0.5,
    lesion_size=96,
    min_lesions=2,
    max_lesions=2,
    block_size=256,
    bank_size=8,
    seed=3,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("synth")
    synthesize_dataset(out, CONFIG, [data_dir / "images", data_dir / "slides"], progress=False)
    return out


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_every_level_and_mpp_visible_to_both_backends(dataset, backend):
    with SlideReader.open(dataset / "slides" / "synth_000.tif", backend=backend) as slide:
        assert [lv.dimensions for lv in slide.levels] == [(1024, 1024), (512, 512), (256, 256)]
        assert [lv.downsample for lv in slide.levels] == [1.0, 2.0, 4.0]
        assert slide.mpp == pytest.approx(CONFIG.mpp)


def test_manifest_masks_and_labels(dataset):
    manifest = read_manifest(dataset / "manifest.csv")
    assert [r.slide_id for r in manifest.rows] == ["synth_000", "synth_001"]
    assert sorted(r.label for r in manifest.rows) == ["negative", "positive"]
    assert all(r.mpp == CONFIG.mpp for r in manifest.rows)
    for row in manifest.rows:
        info = json.loads((dataset / "lesions" / f"{row.slide_id}.json").read_text())
        mask = TissueMask.load(dataset / "lesions" / f"{row.slide_id}.png")
        assert mask.mpp == CONFIG.mpp * CONFIG.mask_downsample
        assert mask.mask.shape == (64, 64)
        assert (len(info["lesions"]) == 2) == (row.label == "positive")
        assert mask.mask.any() == (row.label == "positive")
    assert json.loads((dataset / "synth.json").read_text())["seed"] == 3


def test_slides_have_tissue_and_background(dataset):
    with SlideReader.open(dataset / "slides" / "synth_001.tif") as slide:
        mask = compute_tissue_mask(
            slide, TissueMaskConfig(mpp=2.0, min_object_um2=1000)
        )  # a tiny slide
    assert 0.1 < mask.tissue_fraction < 0.9


def test_lesion_visible_at_full_resolution_and_gone_when_downsampled(dataset, data_dir):
    manifest = read_manifest(dataset / "manifest.csv")
    positive = next(r for r in manifest.rows if r.label == "positive")
    lesion = json.loads((dataset / "lesions" / f"{positive.slide_id}.json").read_text())["lesions"][
        0
    ]
    # re-render the same slide without lesions: the difference is the lesion alone
    bank = build_texture_bank(find_sources([data_dir / "images", data_dir / "slides"]), CONFIG)
    index = int(positive.slide_id.split("_")[1])
    with_lesions = SlideRenderer(CONFIG, bank, index, positive=True)
    plain = SlideRenderer(CONFIG, bank, index, positive=False)
    a = np.concatenate(list(with_lesions.strips())).astype(np.float32)
    b = np.concatenate(list(plain.strips())).astype(np.float32)
    x, y, r = lesion["x"], lesion["y"], int(lesion["radius"])
    diff = (a - b)[y - r : y + r, x - r : x + r]
    full_res = np.abs(diff).mean()
    # 16x downsampling (8 um/px): box-average 16x16 blocks of the difference
    blocks = diff[: 2 * r // 16 * 16, : 2 * r // 16 * 16]
    blocks = blocks.reshape(2 * r // 16, 16, 2 * r // 16, 16, 3).mean(axis=(1, 3))
    assert full_res > 10  # plainly visible at full resolution
    assert np.abs(blocks).mean() < 0.2 * full_res  # mostly averaged away at 16x
    # and outside the lesions the slides are identical
    assert np.array_equal(a[: y - r - 10], b[: y - r - 10]) or np.array_equal(
        a[y + r + 10 :], b[y + r + 10 :]
    )


def test_same_seed_same_pixels(dataset, tmp_path, data_dir):
    synthesize_dataset(tmp_path, CONFIG, [data_dir / "images", data_dir / "slides"], progress=False)
    with (
        SlideReader.open(tmp_path / "slides" / "synth_000.tif") as again,
        SlideReader.open(dataset / "slides" / "synth_000.tif") as first,
    ):
        np.testing.assert_array_equal(
            again.read_level(1, 0, 0, 512, 512), first.read_level(1, 0, 0, 512, 512)
        )


def test_lesion_pattern_is_zero_mean():
    pattern = lesion_modulation(Lesion(100, 100, 48.0), CONFIG, np.random.default_rng(0))
    assert pattern.shape == (97, 97)
    assert abs(pattern.sum()) < 1e-2
    assert pattern.max() > 0.4 and pattern.min() < -0.2


def test_lesion_mask_geometry():
    mask = lesion_mask([Lesion(64, 32, 16.0)], size=128, downsample=8)
    assert mask.shape == (16, 16) and mask[4, 8] and not mask[0, 0]


def test_config_and_source_errors(tmp_path):
    with pytest.raises(ValueError, match="slides must be >= 1"):
        SynthConfig(slides=0).validate()
    with pytest.raises(ValueError, match="lesion_size"):
        SynthConfig(size=1024, lesion_size=512).validate()
    with pytest.raises(FileNotFoundError, match="H&E source not found"):
        find_sources([tmp_path / "absent"])
    with pytest.raises(FileNotFoundError, match="no H&E source images"):
        find_sources([tmp_path])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"size": 128}, "size must be >= 256"),
        ({"block_size": 100, "feather": 16}, "block_size must be a multiple of 16"),
        ({"feather": 100}, "feather must be in"),
        ({"positive_fraction": 1.5}, "positive_fraction"),
        ({"min_lesions": 3, "max_lesions": 2}, "min_lesions <= max_lesions"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        SynthConfig(**{**CONFIG.__dict__, **changes}).validate()


def test_sources_smaller_than_a_block_are_refused(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((100, 100, 3), 200, np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(
        ValueError, match=r"no source image is at least block_size \+ 2 \* feather = 320 px"
    ):
        build_texture_bank(find_sources([tmp_path]), CONFIG)
