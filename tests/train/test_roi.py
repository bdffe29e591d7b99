"""Regions of interest (``gigastream.train.roi``, ``data.roi_dir``): the tissue mask cut to the
annotated regions minus exclusions, the cache keyed by the ROI file's content (not its name),
the up-front check of every slide's file, and ``data.roi_dir`` validated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gigastream.train.config import ConfigError, DataConfig
from gigastream.train.config_files import load_config
from gigastream.train.data import SlideExamples, mask_key, slide_tissue_mask
from gigastream.train.roi import check_roi_files, restrict_to_roi, roi_identity
from gigastream.wsi.annotations import AnnotationError
from gigastream.wsi.manifest import ManifestRow
from gigastream.wsi.reader import SlideError, SlideReader
from gigastream.wsi.tissue import NoTissueError, TissueMask


def _square(x0: float, y0: float, x1: float, y1: float) -> dict:
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Polygon", "coordinates": [ring]}


def _roi(path: Path, *regions: tuple[dict, str]) -> Path:
    features = [
        {"type": "Feature", "geometry": g, "properties": {"classification": {"name": name}}}
        for g, name in regions
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


@pytest.fixture
def slide_file(tmp_path) -> Path:
    """A 256x256 px slide at 0.5 um/px: grey glass, a pink tissue block 64-192 px."""
    image = np.full((256, 256, 3), 240, np.uint8)
    image[64:192, 64:192] = (190, 100, 170)
    path = tmp_path / "s.png"
    Image.fromarray(image).save(path)
    return path


@pytest.fixture
def rois(tmp_path) -> Path:
    """``s``'s ROI: the left half [0, 128) x [0, 256) level-0 px minus an Ignore* square
    [0, 128) x [0, 96)."""
    folder = tmp_path / "rois"
    folder.mkdir()
    _roi(
        folder / "s.geojson",
        (_square(0, 0, 128, 256), "Region*"),
        (_square(0, 0, 128, 96), "Ignore*"),
    )
    return folder


def test_restrict_to_roi_on_the_masks_grid(slide_file, rois):
    with SlideReader.open(slide_file, mpp=0.5) as slide:
        tissue = TissueMask(np.ones((64, 64), bool), mpp=2.0)  # 4 level-0 px per mask px
        cut = restrict_to_roi(tissue, slide, "s", rois)
    expected = np.zeros((64, 64), bool)
    expected[24:, :32] = True  # rows from 96 px, columns below 128 px
    assert cut.mpp == 2.0 and (cut.mask == expected).all()
    with SlideReader.open(slide_file, mpp=0.5) as slide:
        off = TissueMask(np.zeros((64, 64), bool), mpp=2.0)
        off.mask[:, 40:] = True  # tissue only right of the ROI
        with pytest.raises(NoTissueError, match="s: no tissue inside the ROI"):
            restrict_to_roi(off, slide, "s", rois)
        with pytest.raises(SlideError, match="t: no ROI file t.xml/.geojson/.json in"):
            restrict_to_roi(tissue, slide, "t", rois)


def test_check_roi_files_lists_missing_malformed_and_empty(tmp_path, rois):
    check_roi_files(rois, ["s"])
    with pytest.raises(ConfigError, match=r"no ROI file .* for 2 of the 3 slides: a, b; add"):
        check_roi_files(rois, ["s", "a", "b"])
    (rois / "a.xml").write_text("<ASAP_Annotations><Annotations><Annotation Type='Polygon'>")
    with pytest.raises(AnnotationError, match=r"a.xml: not valid XML"):
        check_roi_files(rois, ["s", "a"])
    (rois / "a.xml").unlink()
    _roi(rois / "a.geojson", (_square(0, 0, 10, 10), "Ignore*"))  # only an exclusion
    with pytest.raises(ConfigError, match="the ROI files of a hold no region"):
        check_roi_files(rois, ["s", "a"])
    with pytest.raises(AnnotationError, match="--roi .*nowhere: not found"):
        check_roi_files(tmp_path / "nowhere", ["s"])


def test_cache_key_holds_the_roi_files_content(slide_file, rois, tmp_path):
    plain = DataConfig(mpp=1.0, mask_dir=str(tmp_path / "m"))
    cut = DataConfig(mpp=1.0, mask_dir=str(tmp_path / "m"), roi_dir=str(rois))
    with SlideReader.open(slide_file, mpp=0.5) as slide:
        assert "roi" not in json.loads(mask_key(slide, plain, "s"))  # unchanged without ROI
        key = json.loads(mask_key(slide, cut, "s"))
        assert key["roi"] == roi_identity(rois, "s") and len(key["roi"]["sha256"]) == 64
        before = mask_key(slide, cut, "s")
        _roi(rois / "s.geojson", (_square(0, 0, 256, 256), "Region*"))  # same name, new ROI
        assert mask_key(slide, cut, "s") != before


def test_slide_tissue_mask_is_cut_cached_and_recomputed_for_a_new_roi(slide_file, rois, tmp_path):
    data = DataConfig(mpp=1.0, num_workers=0, mask_dir=str(tmp_path / "m"), roi_dir=str(rois))
    (tmp_path / "m").mkdir()
    with SlideReader.open(slide_file, mpp=0.5) as slide:
        tissue = slide_tissue_mask(slide, "s", DataConfig(mpp=1.0), save=False)
        mask = slide_tissue_mask(slide, "s", data)
        assert mask.mask.any() and not (mask.mask & ~tissue.mask).any()  # inside the tissue
        columns = np.flatnonzero(mask.mask.any(axis=0))
        assert columns.max() * mask.mpp < 64  # inside the ROI: x < 128 level-0 px = 64 um
        cached = tmp_path / "m" / "s.png"
        assert (TissueMask.load(cached).mask == mask.mask).all()  # the cut mask is cached
        _roi(rois / "s.geojson", (_square(128, 0, 256, 256), "Region*"))  # the right half
        right = slide_tissue_mask(slide, "s", data)
        assert np.flatnonzero(right.mask.any(axis=0)).min() * right.mpp >= 64
        assert (TissueMask.load(cached).mask == right.mask).all()  # replaced


def test_a_given_mask_is_cut_too_and_kept(slide_file, rois, tmp_path):
    given = tmp_path / "m" / "s.png"
    given.parent.mkdir()
    TissueMask(np.ones((64, 64), bool), mpp=2.0).save(given)
    data = DataConfig(mpp=1.0, num_workers=0, mask_dir=str(given.parent), roi_dir=str(rois))
    with SlideReader.open(slide_file, mpp=0.5) as slide:
        mask = slide_tissue_mask(slide, "s", data)
    assert mask.mask.sum() == 40 * 32 and TissueMask.load(given).mask.all()  # the file kept


def test_slide_examples_restricted_or_skipped(slide_file, rois):
    data = DataConfig(mpp=1.0, num_workers=0, roi_dir=str(rois))
    rows = [ManifestRow(s, slide_file, "a", s, mpp=0.5) for s in ("s", "t")]
    examples = SlideExamples(rows, ["a"], data)
    assert examples[0].error is None and examples[0].tissue_mask.mask.any()
    assert "no ROI file t.xml" in examples[1].error  # listed as skipped, not a crash


def test_roi_dir_must_be_a_folder(tmp_path, rois):
    assert load_config({"data": {"roi_dir": str(rois)}}).data.roi_dir == str(rois)
    with pytest.raises(ConfigError, match=r"data.roi_dir \(--roi\) .*nowhere: not found"):
        load_config({"data": {"roi_dir": str(tmp_path / "nowhere")}})
    with pytest.raises(ConfigError, match="is a file"):
        DataConfig(roi_dir=str(rois / "s.geojson")).validate()
