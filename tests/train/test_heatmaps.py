"""Attention heatmaps (``gigastream.train.heatmaps``): which slides, where lesion masks are
found, the micron size of an attention cell, one slide's PNG and TIFF, tinted only on the
slide's tissue at the given opacity, and the labels of slide files for their titles."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from gigastream.train.heatmaps import (
    choose_slides,
    instance_cell_um,
    lesion_mask_for,
    slide_heatmap,
    slide_labels,
    write_heatmaps,
)
from gigastream.wsi.manifest import ManifestRow
from gigastream.wsi.reader import SlideReader
from gigastream.wsi.tissue import TissueMask


def _result(slide_id: str, label: int | None) -> dict:
    attention = torch.full((4, 4), 1 / 16)
    return {"slide_id": slide_id, "label": label, "probs": [0.4, 0.6], "attention_map": attention}


def test_choose_slides_alternates_between_classes():
    results = [_result("n1", 0), _result("n2", 0), _result("n3", 0), _result("p1", 1)]
    results.append({"slide_id": "bad", "label": 1, "error": "unreadable"})
    assert [r["slide_id"] for r in choose_slides(results, 3)] == ["n1", "p1", "n2"]
    assert [r["slide_id"] for r in choose_slides(results, None)] == ["n1", "n2", "n3", "p1"]
    assert choose_slides(results, 0) == []


def test_lesion_mask_is_found_next_to_synth_slides_or_in_a_folder(tmp_path):
    slide = tmp_path / "data" / "slides" / "s1.tif"
    slide.parent.mkdir(parents=True)
    assert lesion_mask_for(slide, "s1") is None
    (tmp_path / "data" / "lesions").mkdir()
    TissueMask(np.eye(8, dtype=bool), mpp=4.0).save(tmp_path / "data" / "lesions" / "s1.png")
    assert lesion_mask_for(slide, "s1").mask.shape == (8, 8)
    other = tmp_path / "masks"
    other.mkdir()
    TissueMask(np.ones((2, 3), bool), mpp=4.0).save(other / "s1.png")
    assert lesion_mask_for(slide, "s1", other).mask.shape == (2, 3)  # the given folder first


def test_instance_cell_and_one_slide_heatmap(tmp_path):
    slide = SlideReader.from_array(np.full((256, 256, 3), 200, np.uint8), mpp=0.5)
    cell_um = instance_cell_um(slide, 1.0, 16)
    assert cell_um == pytest.approx(16.0)
    paths = slide_heatmap(
        slide, _result("s", 1), tmp_path / "s.png", cell_um, ["negative", "positive"], tiff=True
    )
    assert paths == [tmp_path / "s.png", tmp_path / "s.tif"]
    assert all(p.stat().st_size > 0 for p in paths)


# ------------------------------------------------------------------ issue 16: pictures
def _slide_file(tmp_path) -> Path:
    """A 256x256 px PNG slide (read at 1 um/px): grey glass, a pink tissue block 64-192 px."""
    image = np.full((256, 256, 3), 240, np.uint8)
    image[64:192, 64:192] = (190, 100, 170)
    path = tmp_path / "s.png"
    Image.fromarray(image).save(path)
    return path


def test_write_heatmaps_tints_only_the_tissue_at_the_opacity(tmp_path):
    from gigastream.train.config import DataConfig
    from gigastream.viz.heatmap import HeatmapStyle, attention_times_n, colorize

    path = _slide_file(tmp_path)
    attention = np.where(np.indices((16, 16)).sum(axis=0) % 2 == 0, 10.0, 0.1)  # every cell
    result = {"slide_id": "s", "label": 1, "probs": [0.3, 0.7], "attention_map": attention}
    module = SimpleNamespace(
        class_names=["negative", "positive"], model=SimpleNamespace(output_stride=16)
    )
    rows = [ManifestRow("s", path, "positive", "s", mpp=1.0)]
    data = DataConfig(mpp=1.0, num_workers=0, mask_dir=str(tmp_path / "masks"))
    out = tmp_path / "maps"
    paths = write_heatmaps(module, [result], rows, out, data, tiff=True, opacity=1.0)
    assert paths == [out / "s.png", out / "s.tif"]
    with SlideReader.open(out / "s.tif") as viewer:
        tiff = viewer.read_level(0, 0, 0, 256, 256).astype(int)
    assert np.abs(tiff[:48] - 240).max() <= 3 and np.abs(tiff[208:232] - 240).max() <= 3  # glass
    colours, _ = colorize(attention_times_n(attention), HeatmapStyle.for_attention())
    expected = np.repeat(np.repeat(colours, 16, axis=0), 16, axis=1).astype(int)  # opacity 1
    tissue = tiff[72:184, 72:184]
    assert np.median(np.abs(tissue - expected[72:184, 72:184])) <= 2  # tissue: tinted (JPEG)
    assert np.abs(tissue - (190, 100, 170)).mean() > 60  # not the slide's own pink
    with Image.open(out / "s.png") as img:
        assert img.text["Title"] == "s — label: positive — p(positive) = 0.70"
        png = np.asarray(img.convert("RGB")).astype(int)
    glass = (png == 240).all(axis=-1).sum()
    assert glass > 0.8 * (256**2 - 128**2)  # the glass around the tissue keeps its own grey


def test_slide_heatmap_opacity(tmp_path):
    grey = SlideReader.from_array(np.full((256, 256, 3), 200, np.uint8), mpp=1.0)
    result = _result("s", 1)  # uniform 4x4 attention: the neutral (near-white) colour
    for opacity, grey_left in ((0.0, True), (1.0, False)):
        (png,) = slide_heatmap(
            grey, result, tmp_path / f"o{opacity}.png", 64.0, ["n", "p"], opacity=opacity
        )
        with Image.open(png) as img:
            rgb = np.asarray(img.convert("RGB")).astype(int)
        assert ((rgb == 200).all(axis=-1).sum() > 200 * 200) == grey_left
    with pytest.raises(ValueError, match="opacity must be a number from 0"):
        slide_heatmap(grey, result, tmp_path / "x.png", 64.0, ["n", "p"], opacity=1.2)


def test_slide_labels_from_a_manifest_or_one_label(tmp_path):
    from gigastream.train.config import ConfigError

    slides = [tmp_path / "slides" / "a.tif", tmp_path / "b.tif", tmp_path / "c.tif"]
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "slide_id,path,label,case_id,mpp\n"
        "a,slides/a.tif,tumour,p1,0.25\n"  # by path
        "b,elsewhere/b.tif,normal,p2,\n"  # by slide id
    )
    labels = slide_labels(slides, manifest=manifest)
    assert {k: (r.label, r.mpp) for k, r in labels.items()} == {
        "a": ("tumour", 0.25),
        "b": ("normal", None),
    }  # c: in no row, no label
    assert {k: r.label for k, r in slide_labels(slides, label="tumour").items()} == {
        "a": "tumour",
        "b": "tumour",
        "c": "tumour",
    }
    assert slide_labels(slides) == {}
    with pytest.raises(ConfigError, match="not both"):
        slide_labels(slides, manifest=manifest, label="tumour")
    with pytest.raises(ConfigError, match="empty label"):
        slide_labels(slides, label=" ")
