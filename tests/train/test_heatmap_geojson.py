"""The attention beside every heatmap as QuPath GeoJSON tiles (``attention_tiles``: grid cells
of a streamed model, patch corners of a patch model, a feature file's coords) and lesion
contours drawn from annotation files (``write_heatmaps(annotation_dir=...)``)."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from PIL import Image

from gigastream.train.config import DataConfig
from gigastream.train.heatmaps import annotation_lesions, attention_tiles, write_heatmaps
from gigastream.wsi.annotation_readers import annotations_from_geojson
from gigastream.wsi.manifest import ManifestRow
from gigastream.wsi.reader import SlideReader


def _corners(data: dict) -> np.ndarray:
    """``(N, 2)`` level-0 top-left ``(x, y)`` of every tile."""
    return np.array([f["geometry"]["coordinates"][0][0] for f in data["features"]])


def _attention(data: dict) -> list[float]:
    return [f["properties"]["measurements"]["attention"] for f in data["features"]]


@pytest.fixture
def slide():
    """A 300 x 200 px slide at 0.5 um/px."""
    return SlideReader.from_array(np.full((200, 300, 3), 220, np.uint8), mpp=0.5)


def test_tiles_of_a_streamed_and_a_patch_model(slide):
    attention = np.array([[0.5, np.nan, 0.25], [np.nan, 0.25, np.nan]])
    cell_um = 10.5  # 21 level-0 px per cell: patch corners are floored as patch_grid lays them
    grid = attention_tiles(attention, slide, cell_um)
    assert _corners(grid).tolist() == [[0.0, 0.0], [42.0, 0.0], [21.0, 21.0]]
    assert _attention(grid) == [0.5, 0.25, 0.25]
    patches = attention_tiles(attention * 1.0, slide, 7.25, kind="patches")  # 14.5 px cells
    assert _corners(patches).tolist() == [[0.0, 0.0], [29.0, 0.0], [14.0, 14.0]]
    square = np.array(patches["features"][2]["geometry"]["coordinates"][0])
    assert (square.max(axis=0) - square.min(axis=0)).tolist() == [14.5, 14.5]


def test_tiles_of_a_feature_model_at_the_files_coords(slide, tmp_path):
    coords = np.array([[5, 3], [37, 3], [37, 35], [69, 3]])  # 32 px patches off the grid
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:
        f["coords"] = coords
        f["features"] = np.zeros((4, 8), np.float32)
    attention = np.array([[0.25, 0.5, np.nan], [np.nan, 0.25, np.nan]])  # (69, 3): no instance
    data = attention_tiles(attention, slide, 16.0, kind="features", features_path=path)
    assert _corners(data).tolist() == [[5.0, 3.0], [37.0, 3.0], [37.0, 35.0]]
    assert _attention(data) == [0.25, 0.5, 0.25]
    grid = attention_tiles(attention, slide, 16.0, kind="features", features_path=tmp_path / "x")
    assert _corners(grid).tolist() == [[0.0, 0.0], [32.0, 0.0], [32.0, 32.0]]  # no file: grid


def test_write_heatmaps_annotation_contours_and_geojson(tmp_path, caplog):
    image = np.full((256, 256, 3), 240, np.uint8)
    image[64:192, 64:192] = (190, 100, 170)
    for name in ("s", "t"):
        Image.fromarray(image).save(tmp_path / f"{name}.png")
    notes = tmp_path / "notes"
    notes.mkdir()
    ring = [[96, 96], [160, 96], [160, 160], [96, 160], [96, 96]]
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
               "properties": {"classification": {"name": "Tumor"}}}  # fmt: skip
    (notes / "s.geojson").write_text(json.dumps(feature))
    attention = np.full((16, 16), 1 / 256)
    results = [
        {"slide_id": i, "label": 1, "probs": [0.3, 0.7], "attention_map": attention} for i in "st"
    ]
    rows = [ManifestRow(i, tmp_path / f"{i}.png", "positive", i, mpp=1.0) for i in "st"]
    module = SimpleNamespace(class_names=["n", "p"], model=SimpleNamespace(output_stride=16))
    data = DataConfig(mpp=1.0, num_workers=0, mask_dir=str(tmp_path / "masks"))
    out = tmp_path / "maps"
    paths = write_heatmaps(module, results, rows, out, data, annotation_dir=notes)
    assert paths == [out / "s.png", out / "t.png"]  # the pictures; the GeoJSON beside them
    for name in "st":
        tiles = json.loads((out / f"{name}.attention.geojson").read_text())["features"]
        assert len(tiles) == 256 and tiles[17]["geometry"]["coordinates"][0][0] == [16.0, 16.0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "1 heatmap(s) without lesion contours" in warnings[0]
    assert warnings[0].endswith("for t")
    with pytest.raises(ValueError, match="not both"):
        write_heatmaps(module, results, rows, out, data, lesion_dir=notes, annotation_dir=notes)


def test_annotation_lesions_at_the_heatmaps_resolution():
    slide = SlideReader.from_array(np.zeros((3000, 4096, 3), np.uint8), mpp=0.25)
    ring = [[1024, 1024], [2048, 1024], [2048, 2048], [1024, 2048], [1024, 1024]]
    notes = annotations_from_geojson(
        [
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
             "properties": {"classification": {"name": "Tumor: Positive"}}},
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
             "properties": {"classification": {"name": "Stroma"}}},
        ]
    )  # fmt: skip
    lesions = annotation_lesions(notes, slide)
    assert lesions.mask.shape == (1500, 2048) and lesions.mpp == pytest.approx(0.5)
    assert lesions.mask.sum() == 512 * 512  # the tumour (a derived class), not the stroma
