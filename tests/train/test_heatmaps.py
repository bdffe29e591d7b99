"""Attention heatmaps (``gigastream.train.heatmaps``): which slides, where lesion masks are
found, the micron size of an attention cell, one slide's PNG and TIFF."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gigastream.train.heatmaps import (
    choose_slides,
    instance_cell_um,
    lesion_mask_for,
    slide_heatmap,
)
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
