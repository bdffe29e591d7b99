"""Attention as QuPath GeoJSON: one square tile per instance in level-0 pixels (from an
attention grid or from patch coordinates), numeric measurements, strict JSON, and the
structure QuPath reads (qupath-core PathObjectTypeAdapters: Feature / geometry / properties
with objectType, classification {name, color}, measurements {name: number})."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gigastream import SlideReader
from gigastream.viz.geojson import attention_geojson, write_attention_geojson
from gigastream.wsi.annotation_geojson import mask_to_geojson
from gigastream.wsi.annotation_readers import read_annotations
from gigastream.wsi.annotations import rasterize
from gigastream.wsi.tissue import TissueMask

#: Object types QuPath's GeoJSON reader knows (PathObjectTypeAdapters.MAP_TYPES).
QUPATH_OBJECT_TYPES = {"tile", "cell", "detection", "annotation", "tmaCore", "root"}


def check_qupath_geojson(data: dict) -> None:
    """Fail unless ``data`` has the structure QuPath 0.4+ writes and reads."""
    assert set(data) == {"type", "features"} and data["type"] == "FeatureCollection"
    for feature in data["features"]:
        assert set(feature) <= {"type", "id", "geometry", "properties"}
        assert feature["type"] == "Feature"
        geometry = feature["geometry"]
        assert geometry["type"] in ("Polygon", "MultiPolygon")
        polygons = geometry["coordinates"]
        polygons = [polygons] if geometry["type"] == "Polygon" else polygons
        for rings in polygons:
            for ring in rings:
                assert len(ring) >= 4 and ring[0] == ring[-1]  # closed linear rings
                assert all(len(p) == 2 and all(isinstance(v, float) for v in p) for p in ring)
        properties = feature["properties"]
        assert properties["objectType"] in QUPATH_OBJECT_TYPES
        if "classification" in properties:
            classification = properties["classification"]
            assert isinstance(classification["name"], str)
            colour = classification["color"]
            assert len(colour) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in colour)
        if "measurements" in properties:  # an object name -> number since QuPath v0.4.0
            measurements = properties["measurements"]
            assert isinstance(measurements, dict) and measurements
            for name, value in measurements.items():
                assert isinstance(name, str)
                assert isinstance(value, float) and math.isfinite(value)


@pytest.fixture
def attention() -> np.ndarray:
    grid = np.array(
        [
            [0.05, 0.10, np.nan, 0.05],
            [0.10, 0.20, 0.10, np.nan],
            [np.nan, 0.25, 0.15, np.nan],
        ]
    )
    assert np.nansum(grid) == pytest.approx(1.0)
    return grid


def test_grid_attention_tiles(attention):
    data = attention_geojson(attention, cell_um=16.0, slide_mpp=0.5)  # 32 level-0 px cells
    check_qupath_geojson(data)
    features = data["features"]
    assert len(features) == int(np.isfinite(attention).sum()) == 8  # one per instance
    # row-major: cell (2, 1) is the 7th instance, the square x 32..64, y 64..96 level-0 px
    cell = features[6]
    assert cell["geometry"] == {
        "type": "Polygon",
        "coordinates": [[[32.0, 64.0], [64.0, 64.0], [64.0, 96.0], [32.0, 96.0], [32.0, 64.0]]],
    }
    assert cell["properties"]["objectType"] == "tile"
    assert cell["properties"]["measurements"] == {
        "attention": 0.25,
        "attention x N": pytest.approx(0.25 * 8),
    }
    weights = [f["properties"]["measurements"]["attention"] for f in features]
    np.testing.assert_allclose(weights, attention[np.isfinite(attention)])
    relative = [f["properties"]["measurements"]["attention x N"] for f in features]
    assert sum(relative) == pytest.approx(8.0)
    # the same from the slide's own mpp
    slide = SlideReader.from_array(np.zeros((96, 128, 3), np.uint8), mpp=0.5)
    assert attention_geojson(attention, cell_um=16.0, slide=slide) == data
    detection = attention_geojson(attention, cell_um=16.0, slide_mpp=0.5, object_type="detection")
    assert {f["properties"]["objectType"] for f in detection["features"]} == {"detection"}


def test_patch_attention_tiles():
    """A patch model: coords (N, 2) level-0 top-left corners and the level-0 patch edge."""
    coords = np.array([[0, 0], [448, 0], [896, 448], [4480, 2240]])
    weights = np.array([0.1, 0.2, 0.3, 0.4])
    p_tumour = np.array([0.9, 0.8, 0.1, 0.0])
    data = attention_geojson(
        weights, coords=coords, patch_size=448.0, measurements={"p(tumour)": p_tumour}
    )
    check_qupath_geojson(data)
    features = data["features"]
    assert len(features) == 4
    ring = features[2]["geometry"]["coordinates"][0]
    assert ring == [
        [896.0, 448.0],
        [1344.0, 448.0],
        [1344.0, 896.0],
        [896.0, 896.0],
        [896.0, 448.0],
    ]
    for k, f in enumerate(features):
        m = f["properties"]["measurements"]
        assert set(m) == {"attention", "attention x N", "p(tumour)"}
        assert m["attention"] == weights[k] and m["p(tumour)"] == p_tumour[k]
        assert m["attention x N"] == pytest.approx(weights[k] * 4)


def test_written_file_is_strict_json_and_reads_back(tmp_path, attention):
    """The file is strict JSON (no NaN), and its tiles rasterised at the cell size give the
    instance grid back: the coordinates are those of the cells."""
    path = write_attention_geojson(
        tmp_path / "slide.geojson", attention, cell_um=16.0, slide_mpp=0.5
    )
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    check_qupath_geojson(data)
    annotations = read_annotations(path)
    assert len(annotations) == 8 and {r.object_type for r in annotations.regions} == {"tile"}
    tiles = rasterize(annotations.geometry(), mpp=16.0, slide_mpp=0.5, dimensions=(128, 96))
    np.testing.assert_array_equal(tiles.mask, np.isfinite(attention))


def test_mask_geojson_has_the_qupath_structure():
    mask = np.zeros((20, 30), bool)
    mask[2:12, 3:20] = True
    mask[5:8, 6:9] = False
    data = mask_to_geojson(TissueMask(mask, 2.0), "Tumor", slide_mpp=0.25)
    check_qupath_geojson(data)
    (feature,) = data["features"]
    assert feature["properties"] == {
        "objectType": "annotation",
        "classification": {"name": "Tumor", "color": [200, 0, 0]},
    }
    assert len(feature["geometry"]["coordinates"]) == 2  # the outline and the hole


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cell_um": 16.0}, "level-0 mpp"),
        ({"cell_um": 0.0, "slide_mpp": 0.5}, "cell_um must be a positive number"),
        ({"slide_mpp": 0.5}, "cell_um must be a positive number"),
        ({"cell_um": 16.0, "slide_mpp": 0.5, "object_type": "cell"}, "object_type"),
        ({"cell_um": 16.0, "slide_mpp": 0.5, "coords": np.zeros((12, 2))}, "not both"),
        ({"cell_um": 16.0, "slide_mpp": 0.5, "patch_size": 4.0}, "patch mode"),
        (
            {"cell_um": 16.0, "slide_mpp": 0.5, "measurements": {"p": np.ones(8)}},
            "measurement 'p' has shape (8,)",
        ),
    ],
)
def test_grid_errors(attention, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        attention_geojson(attention, **kwargs)


@pytest.mark.parametrize(
    ("weights", "coords", "patch_size", "message"),
    [
        (np.ones(3), np.zeros((4, 2)), 10.0, "must be (4,) like coords"),
        (np.ones(4), np.zeros((4, 3)), 10.0, "coords must be (N, 2)"),
        (np.array([0.5, np.nan, 0.5, 0.0]), np.zeros((4, 2)), 10.0, "not finite at instances [1]"),
        (np.ones(4), np.zeros((4, 2)), None, "patch_size"),
        (np.ones(4), np.zeros((4, 2)), -2.0, "patch_size"),
    ],
)
def test_patch_errors(weights, coords, patch_size, message):
    with pytest.raises(ValueError) as info:
        attention_geojson(weights, coords=coords, patch_size=patch_size)
    assert message in str(info.value)


def test_grid_without_instances():
    with pytest.raises(ValueError, match="no instance"):
        attention_geojson(np.full((2, 2), np.nan), cell_um=8.0, slide_mpp=0.5)
    with pytest.raises(ValueError, match="coords=..."):
        attention_geojson(np.ones(4), cell_um=8.0, slide_mpp=0.5)
