"""Attention against annotated tumour (``gigastream.train.annotation_eval``): which cells
overlap a mask, the attention mass and instance AUC of one slide and over slides (mean and
pooled), all on hand-made arrays whose answers are known, and the whole measurement on a
slide file with a QuPath GeoJSON annotation (tumour minus an exclusion)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from gigastream.train.annotation_eval import (
    annotation_metrics,
    cells_on_mask,
    describe,
    instance_auc,
    slide_localisation,
    summarize_localisation,
)
from gigastream.train.config import DataConfig
from gigastream.wsi.annotations import AnnotationError
from gigastream.wsi.manifest import ManifestRow
from gigastream.wsi.tissue import TissueMask


def test_cells_on_mask_any_pixel_of_the_cell():
    mask = np.zeros((8, 12), bool)  # 1 um/px; cells of 4 um: a 2 x 3 grid
    mask[0, 0] = True  # one corner pixel of cell (0, 0)
    mask[7, 11] = True  # the far corner pixel of cell (1, 2)
    mask[5, 5] = True  # inside cell (1, 1)
    cells = cells_on_mask(TissueMask(mask, mpp=1.0), (2, 3), cell_um=4.0)
    assert cells.tolist() == [[True, False, False], [False, True, True]]
    # a grid larger than the mask: the cells beyond its edge do not overlap
    assert cells_on_mask(TissueMask(mask, mpp=1.0), (3, 4), 4.0)[2:, :].sum() == 0
    # a coarse mask (16 um/px) is sampled at 4 x 4 points per 4 um cell
    coarse = TissueMask(np.array([[True, False]]), mpp=16.0)
    assert cells_on_mask(coarse, (4, 8), 4.0).sum(axis=0).tolist() == [4] * 4 + [0] * 4


def test_cells_on_mask_errors():
    mask = TissueMask(np.ones((2, 2), bool), mpp=1.0)
    with pytest.raises(ValueError, match="cell_um must be a positive number"):
        cells_on_mask(mask, (1, 1), 0.0)
    with pytest.raises(ValueError, match="samples must be >= 1"):
        cells_on_mask(mask, (1, 1), 2.0, samples=0)


def test_instance_auc_is_sklearns_with_ties():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(200), 1)  # many ties
    labels = rng.random(200) < 0.3
    assert instance_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert instance_auc(np.array([3.0, 1.0]), np.array([True, False])) == 1.0
    assert instance_auc(np.array([1.0, 3.0]), np.array([True, False])) == 0.0
    assert math.isnan(instance_auc(np.array([1.0, 2.0]), np.array([True, True])))


def test_one_slide_mass_fraction_enrichment_auc():
    attention = np.full((4, 4), 1.0)
    attention[0, :] = np.nan  # no instance: 12 instances
    attention[2:, 2:] = 4.0  # the 4 tumour cells: mass 16 / (8 + 16)
    attention /= np.nansum(attention)
    inside = np.zeros((4, 4), bool)
    inside[2:, 2:] = True
    inside[0, 0] = True  # tumour without an instance does not count
    s = slide_localisation(attention, inside)
    assert (s["instances"], s["tumour_instances"]) == (12, 4)
    assert s["attention_in_tumour"] == pytest.approx(16 / 24, abs=1e-12)
    assert s["tumour_instance_fraction"] == pytest.approx(4 / 12, abs=1e-12)
    assert s["enrichment"] == pytest.approx(2.0, abs=1e-12)
    assert s["instance_auc"] == 1.0
    none = slide_localisation(attention, np.zeros((4, 4), bool))
    assert none["attention_in_tumour"] == 0.0 and math.isnan(none["enrichment"])
    assert math.isnan(none["instance_auc"])
    with pytest.raises(ValueError, match="differ in shape"):
        slide_localisation(attention, inside[:3])


def test_summary_mean_and_pooled_over_slides_with_tumour():
    a = (np.array([[0.75, 0.25]]), np.array([[True, False]]))  # mass 0.75, AUC 1
    b = (np.array([[0.125, 0.125, 0.25, 0.5]]), np.array([[True, False, False, False]]))
    c = (np.array([[0.5, 0.5]]), np.array([[False, False]]))  # no tumour: left out
    s = summarize_localisation([a, b, c])
    assert s["slides_with_tumour"] == 2
    assert s["mean"]["attention_in_tumour"] == pytest.approx((0.75 + 0.125) / 2)
    assert s["mean"]["tumour_instance_fraction"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert s["mean"]["enrichment"] == pytest.approx((1.5 + 0.5) / 2)
    # b: its tumour instance ties one of three others and is below the two others: 0.5 / 3
    assert s["mean"]["instance_auc"] == pytest.approx((1.0 + 0.5 / 3) / 2)
    # pooled: attention x N: a [1.5, 0.5], b [0.5, 0.5, 1, 2]; tumour 1.5 and 0.5 of 6
    assert s["pooled"]["attention_in_tumour"] == pytest.approx(2.0 / 6.0)
    assert s["pooled"]["tumour_instance_fraction"] == pytest.approx(2 / 6)
    assert s["pooled"]["enrichment"] == pytest.approx(1.0)
    positives, negatives = [1.5, 0.5], [0.5, 0.5, 1.0, 2.0]
    pairs = [(p > n) + 0.5 * (p == n) for p in positives for n in negatives]
    assert s["pooled"]["instance_auc"] == pytest.approx(np.mean(pairs))
    empty = summarize_localisation([c])
    assert empty["slides_with_tumour"] == 0 and math.isnan(empty["pooled"]["instance_auc"])
    assert "0 of 1 annotated slides" in describe({**empty, "slides": 1, "skipped": {}})


def _square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _feature(ring, name: str) -> dict:
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"objectType": "annotation", "classification": {"name": name}},
    }


def test_annotation_metrics_on_a_slide_file(tmp_path):
    """A 256 px slide at 1 um/px, 16 um cells (a 16 x 16 grid): tumour [64, 128) px minus an
    Ignore* square [64, 96) px covers cells 4-7 x 4-7 but 4-5 x 4-5: 12 cells."""
    Image.fromarray(np.full((256, 256, 3), 200, np.uint8)).save(tmp_path / "s.png")
    Image.fromarray(np.full((256, 256, 3), 200, np.uint8)).save(tmp_path / "t.png")
    notes = tmp_path / "notes"
    notes.mkdir()
    collection = {
        "type": "FeatureCollection",
        "features": [
            _feature(_square(64, 64, 128, 128), "Tumor"),
            _feature(_square(64, 64, 96, 96), "Ignore*"),
            _feature(_square(192, 192, 256, 256), "Stroma"),  # not tumour
        ],
    }
    (notes / "s.geojson").write_text(json.dumps(collection))
    attention = np.ones((16, 16))
    attention[4:8, 4:8] = 3.0  # the 16 cells of the tumour's square ...
    attention[4:6, 4:6] = 5.0  # ... of which the excluded 4
    attention /= attention.sum()
    results = [
        {"slide_id": "s", "label": 1, "probs": [0.2, 0.8], "attention_map": attention},
        {"slide_id": "t", "label": 0, "probs": [0.9, 0.1], "attention_map": attention},
        {"slide_id": "u", "label": 0, "error": "unreadable"},
    ]
    rows = [ManifestRow(i, tmp_path / f"{i}.png", "x", i, mpp=1.0) for i in "st"]
    rows.append(ManifestRow("u", tmp_path / "u.png", "x", "u", mpp=1.0))
    module = SimpleNamespace(model=SimpleNamespace(output_stride=16))
    m = annotation_metrics(module, results, rows, DataConfig(mpp=1.0), notes)
    total = 240 + 12 * 3.0 + 4 * 5.0
    s = m["per_slide"]["s"]
    assert (s["instances"], s["tumour_instances"]) == (256, 12)
    assert s["attention_in_tumour"] == pytest.approx(36 / total, abs=1e-12)
    assert s["tumour_instance_fraction"] == pytest.approx(12 / 256)
    assert s["instance_auc"] == pytest.approx(240 / 244)  # the excluded cells rank above
    assert m["slides"] == m["slides_with_tumour"] == 1
    assert m["without_annotation"] == ["t", "u"] and m["skipped"] == {}
    assert m["pooled"]["attention_in_tumour"] == pytest.approx(s["attention_in_tumour"])
    (notes / "u.xml").write_text("<ASAP_Annotations>")  # a malformed file is named
    with pytest.raises(AnnotationError, match="u.xml: not valid XML"):
        annotation_metrics(module, results, rows, DataConfig(mpp=1.0), notes)
