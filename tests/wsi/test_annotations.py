"""Annotation files: CAMELYON (ASAP) XML and QuPath GeoJSON read into polygons, rasterised at
pixel centres at any mpp (holes and exclusions subtracted), masks written back as GeoJSON
contours (round trip), class names, and one clear error per malformed file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from shapely.geometry import Polygon

from gigastream import SlideReader
from gigastream.viz.heatmap import contour_lines
from gigastream.wsi.annotation_geojson import mask_geometry, mask_to_geojson, write_geojson
from gigastream.wsi.annotation_readers import (
    annotations_from_geojson,
    read_annotations,
    read_asap_xml,
    read_geojson,
)
from gigastream.wsi.annotations import UNCLASSIFIED, AnnotationError, Annotations, Region, rasterize
from gigastream.wsi.tissue import TissueMask


def asap_xml(annotations: list[tuple[str, str, str, list[tuple[str, str]]]]) -> str:
    """An annotation file as ASAP writes it: ``(name, type, group, [(x, y), ...])`` each."""
    lines = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "\t<Annotations>"]
    for name, kind, group, points in annotations:
        lines.append(
            f'\t\t<Annotation Name="{name}" Type="{kind}" PartOfGroup="{group}" Color="#F4FA58">'
        )
        lines.append("\t\t\t<Coordinates>")
        lines += [
            f'\t\t\t\t<Coordinate Order="{k}" X="{x}" Y="{y}" />' for k, (x, y) in enumerate(points)
        ]
        lines += ["\t\t\t</Coordinates>", "\t\t</Annotation>"]
    lines += ["\t</Annotations>", "\t<AnnotationGroups>"]
    for group, colour in (("_0", "#FF0000"), ("_1", "#FF0000"), ("_2", "#FFFF00")):
        lines.append(f'\t\t<Group Name="{group}" PartOfGroup="None" Color="{colour}">')
        lines += ["\t\t\t<Attributes />", "\t\t</Group>"]
    lines += ["\t</AnnotationGroups>", "</ASAP_Annotations>", ""]
    return "\n".join(lines)


def square(x0: float, y0: float, x1: float, y1: float) -> list[tuple[str, str]]:
    return [(str(x), str(y)) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def feature(geometry: dict, classification=None, object_type="annotation") -> dict:
    properties = {"objectType": object_type}
    if classification is not None:
        properties["classification"] = classification
    return {"type": "Feature", "geometry": geometry, "properties": properties}


# ---------------------------------------------------------------------------- CAMELYON XML
@pytest.mark.parametrize(
    ("tumour", "exclusion"), [("_0", "_2"), ("Tumor", "Exclusion"), ("metastases", "_2")]
)
def test_camelyon_xml_tumour_minus_exclusion(tmp_path, tumour, exclusion):
    """CAMELYON16 training (_0/_1 minus _2), test set (Tumor minus Exclusion) and CAMELYON17
    (metastases) files: the exclusion inside a tumour is cut out of the mask."""
    path = tmp_path / "tumor_001.xml"
    path.write_text(
        asap_xml(
            [
                ("Annotation 0", "Polygon", tumour, square(1000, 1000, 3000, 3000)),
                ("Annotation 1", "Polygon", exclusion, square(1800, 1800, 2200, 2200)),
                (
                    "Annotation 2",
                    "Spline",
                    "_1",
                    [("5000,25", "1000"), ("7000", "1000,5"), ("6000", "2500")],
                ),
            ]
        )
    )
    annotations = read_annotations(path)
    assert annotations.path == path and len(annotations) == 3
    assert annotations.class_names == [tumour, exclusion, "_1"]
    assert annotations.regions[0].color == (0xF4, 0xFA, 0x58)
    # decimal commas: X="5000,25", Y="1000,5"
    assert annotations.regions[2].geometry.bounds == (5000.25, 1000.0, 7000.0, 2500.0)

    mask = annotations.mask(mpp=2.0, slide_mpp=0.25, dimensions=(8000, 6000))  # 8 px per pixel
    assert isinstance(mask, TissueMask) and mask.mpp == 2.0 and mask.mask.shape == (750, 1000)

    def at(x: float, y: float) -> bool:  # the mask pixel over level-0 (x, y)
        return bool(mask.mask[int(y // 8), int(x // 8)])

    assert at(1200, 1200) and at(2900, 2100)  # tumour
    assert not at(2000, 2000)  # the exclusion inside it
    assert not at(4000, 4000) and not at(900, 900)  # outside
    assert at(6000, 1500)  # the second tumour (a spline, through its control points)
    # centres (c + 0.5) * 8 inside (1000, 3000): c = 125..374, minus c = 225..274 (exclusion)
    assert mask.mask[:, :500].sum() == 250**2 - 50**2
    # asked for explicitly, the exclusion class is a region like any other
    assert (
        annotations.mask([exclusion], mpp=2.0, slide_mpp=0.25, dimensions=(8000, 6000))
        .mask[:, :500]
        .sum()
        == 50**2
    )
    assert annotations.geometry(exclude=()).area == 2000**2 + annotations.regions[2].geometry.area


def test_asap_coordinate_order_and_point_annotations(tmp_path):
    """Coordinates are joined in their Order; dots, point sets and rulers have no area."""
    text = asap_xml(
        [
            ("dot", "Dot", "_0", [("10", "10")]),
            ("points", "PointSet", "_0", [("10", "10"), ("20", "20")]),
            ("ruler", "Measurement", "None", [("10", "10"), ("90", "10")]),
            ("box", "Rectangle", "None", square(0, 0, 40, 20)),
        ]
    )
    # the rectangle's corners written out of order: 0, 2, 1, 3
    text = text.replace('Order="1" X="40" Y="0"', 'Order="2" X="40" Y="0"', 1)
    text = text.replace('Order="2" X="40" Y="20"', 'Order="1" X="40" Y="20"', 1)
    path = tmp_path / "a.xml"
    path.write_text(text)
    annotations = read_asap_xml(path)
    assert len(annotations) == 1 and annotations.class_names == [UNCLASSIFIED]
    polygon = annotations.regions[0].geometry
    assert polygon.is_valid and polygon.area < 40 * 20  # (0,0) (40,20) (40,0) (0,20): a bow tie
    assert polygon.area == pytest.approx(400.0)  # two triangles, repaired, not dropped


# ---------------------------------------------------------------------------- QuPath GeoJSON
def test_geojson_holes_multipolygons_and_object_types(tmp_path):
    outer = [[100, 100], [500, 100], [500, 500], [100, 500], [100, 100]]
    hole = [[200, 200], [300, 200], [300, 300], [200, 300], [200, 200]]
    data = {
        "type": "FeatureCollection",
        "features": [
            feature({"type": "Polygon", "coordinates": [outer, hole]}, {"name": "Tumor"}),
            feature(
                {
                    "type": "MultiPolygon",
                    "coordinates": [
                        [[[600, 100], [900, 100], [900, 400], [600, 400]]],  # not closed
                        [
                            [[600, 500], [900, 500], [900, 800], [600, 800], [600, 500]],
                            [[700, 600], [800, 600], [800, 700], [700, 700], [700, 600]],
                        ],
                    ],
                },
                {"name": "Tumor"},
            ),
            feature({"type": "Polygon", "coordinates": [hole]}, {"name": "Tumor"}, "detection"),
        ],
    }
    path = tmp_path / "slide.geojson"
    path.write_text(json.dumps(data))
    everything = read_annotations(path)
    annotations = read_geojson(path, object_types={"annotation"})
    assert len(everything) == 3 and len(annotations) == 2
    assert [r.object_type for r in everything.regions] == ["annotation", "annotation", "detection"]
    assert len(list(annotations.regions[0].geometry.interiors)) == 1

    mask = annotations.mask(downsample=10.0, dimensions=(1000, 1000)).mask  # (100, 100)

    def at(x: float, y: float) -> bool:
        return bool(mask[int(y // 10), int(x // 10)])

    assert at(150, 150) and not at(250, 250)  # the polygon and its hole
    assert at(650, 150) and at(650, 550) and not at(750, 650)  # the multipolygon, its hole
    assert not at(550, 550)
    assert mask.sum() == 40**2 - 10**2 + 30**2 + 30**2 - 10**2
    # the detection fills the first polygon's hole when it is read
    assert everything.mask(downsample=10.0, dimensions=(1000, 1000)).mask[25, 25]


@pytest.mark.parametrize("form", ["collection", "list", "feature", "geometry"])
def test_geojson_top_level_forms(tmp_path, form):
    geometry = {"type": "Polygon", "coordinates": [[[0, 0], [30, 0], [30, 30], [0, 30], [0, 0]]]}
    one = feature(geometry, {"name": "Tumor"})
    data = {
        "collection": {"type": "FeatureCollection", "features": [one]},
        "list": [one],
        "feature": one,
        "geometry": geometry,
    }[form]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    annotations = read_annotations(path)
    assert len(annotations) == 1 and annotations.regions[0].geometry.area == 900.0
    assert annotations.class_names == (["Tumor"] if form != "geometry" else [UNCLASSIFIED])


def test_classification_names_and_colours(tmp_path):
    geometry = {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 9], [0, 0]]]}
    data = [
        feature(geometry, {"name": "Tumor", "color": [200, 0, 0]}),  # QuPath 0.4+
        feature(geometry, {"names": ["Tumor", "Positive"], "color": [100, 0, 0]}),  # derived
        feature(geometry, "Stroma"),  # before QuPath 0.4: the name as a string
        feature(geometry),  # none
        feature(geometry, {"name": "Ignore*"}),
    ]
    path = tmp_path / "classes.geojson"
    path.write_text(json.dumps(data))
    annotations = read_annotations(path)
    assert annotations.class_names == [
        "Tumor",
        "Tumor: Positive",
        "Stroma",
        UNCLASSIFIED,
        "Ignore*",
    ]
    assert annotations.regions[0].color == (200, 0, 0) and annotations.regions[2].color is None
    assert set(annotations.classes()) == set(annotations.class_names)
    # Ignore* is an exclusion class: subtracted from the rest by default
    assert annotations.geometry().is_empty
    assert annotations.geometry(exclude=()).area == 81.0
    assert annotations.geometry(["tumor"]).area == 0.0  # the ignored square covers it too
    assert annotations.geometry(["tumor"], exclude=()).area == 81.0  # case-insensitive
    assert annotations.geometry(["Tumor*"], exclude=()).area == 81.0  # prefix
    assert annotations.geometry("Stroma", exclude="Tumor").is_empty  # one name as a string


# ---------------------------------------------------------------------------- rasterising
def test_fill_matches_skimage_pixel_centres():
    """The scanline fill equals skimage's point-in-polygon test at every pixel centre, for a
    non-convex polygon with a hole at a non-integer downsample."""
    from skimage.draw import polygon as skimage_polygon

    rng = np.random.default_rng(0)

    def star(radius: tuple[float, float], points: int) -> np.ndarray:
        angles = np.sort(rng.uniform(0, 2 * np.pi, points))
        r = rng.uniform(*radius, points)
        return np.stack([503.3 + r * np.cos(angles), 471.9 + r * np.sin(angles)], axis=1)

    shell, hole = star((200, 420), 40), star((40, 90), 12)
    geometry = Polygon(shell, [hole])
    assert geometry.is_valid
    scale, shape = 3.7, (260, 280)
    ours = rasterize(geometry, downsample=scale, dimensions=(int(280 * 3.7), int(260 * 3.7)))
    assert ours.mask.shape == shape

    def reference(ring: np.ndarray) -> np.ndarray:
        out = np.zeros(shape, bool)
        rr, cc = skimage_polygon(ring[:, 1] / scale - 0.5, ring[:, 0] / scale - 0.5, shape)
        out[rr, cc] = True
        return out

    expected = reference(shell) & ~reference(hole)
    assert expected.sum() > 5000
    np.testing.assert_array_equal(ours.mask, expected)


def test_non_power_of_two_downsample_on_a_slide():
    """Level-0 mpp 0.25 rasterised at 0.9 um/px (3.6 level-0 px per pixel): pixel centres
    decide, and the mask drops into the heatmap's contour and tissue code."""
    slide = SlideReader.from_array(np.zeros((1000, 1200, 3), np.uint8), mpp=0.25)
    rectangle = [[100, 200], [460, 200], [460, 560], [100, 560], [100, 200]]
    annotations = annotations_from_geojson(feature({"type": "Polygon", "coordinates": [rectangle]}))
    mask = annotations.mask(slide=slide, mpp=0.9)
    assert mask.mpp == 0.9 and mask.mask.shape == (round(1000 / 3.6), round(1200 / 3.6))
    # columns: (c + 0.5) * 3.6 in (100, 460) -> c = 28..127; rows: in (200, 560) -> r = 56..155
    cols = np.flatnonzero(mask.mask.any(axis=0))
    rows = np.flatnonzero(mask.mask.any(axis=1))
    assert (cols[0], cols[-1], rows[0], rows[-1]) == (28, 127, 56, 155)
    assert mask.mask.sum() == 100 * 100

    def at(x: float, y: float) -> bool:  # level-0 px -> the mask pixel under it
        return bool(mask.mask[int(y / 3.6), int(x / 3.6)])

    assert at(300, 400) and at(105, 205) and at(455, 555)
    assert not at(470, 400) and not at(300, 190) and not at(99, 400)
    # microns (TissueMask.any_in): the rectangle is 25..115 x 50..140 um
    assert mask.any_in(30, 60, 31, 61) and not mask.any_in(120, 60, 130, 70)
    # heatmap contours: drawn on a 0.45 um/px picture, within a mask pixel of the edges
    (line,) = contour_lines(mask, slide, (0.45, 0.45))
    x_level0 = (line[:, 0] + 0.5) * 0.45 / 0.25
    y_level0 = (line[:, 1] + 0.5) * 0.45 / 0.25
    assert abs(x_level0.min() - 100) < 3.6 and abs(x_level0.max() - 460) < 3.6
    assert abs(y_level0.min() - 200) < 3.6 and abs(y_level0.max() - 560) < 3.6


def test_mask_arguments():
    annotations = Annotations((Region(Polygon([(0, 0), (8, 0), (8, 8)]), "Tumor"),))
    with pytest.raises(ValueError, match="slide_mpp"):
        annotations.mask(mpp=2.0, dimensions=(64, 64))
    with pytest.raises(ValueError, match="one of them"):
        annotations.mask(mpp=2.0, downsample=4.0, slide_mpp=0.5, dimensions=(64, 64))
    with pytest.raises(ValueError, match="dimensions"):
        annotations.mask(mpp=2.0, slide_mpp=0.5)
    with pytest.raises(ValueError, match="positive"):
        annotations.mask(mpp=-1.0, slide_mpp=0.5, dimensions=(64, 64))
    # a slide without mpp: downsample in level-0 px, the mask's "mpp" in level-0 px too
    no_mpp = SlideReader.from_array(np.zeros((64, 64, 3), np.uint8), mpp=None)
    mask = annotations.mask(slide=no_mpp, downsample=4.0)
    assert mask.mpp == 4.0 and mask.mask.shape == (16, 16)


# ---------------------------------------------------------------------------- writing
def two_regions_and_a_hole() -> np.ndarray:
    mask = np.zeros((60, 80), bool)
    mask[5:31, 5:41] = True  # a rectangle ...
    mask[12:21, 15:26] = False  # ... with a hole ...
    mask[16, 20] = True  # ... holding an island
    rows, cols = np.mgrid[:60, :80]
    mask |= (rows - 45) ** 2 + (cols - 60) ** 2 <= 100  # and a disc
    return mask


@pytest.mark.parametrize("merge", [False, True])
def test_mask_geojson_round_trip(tmp_path, merge):
    """mask -> GeoJSON file -> mask: the same pixels (IoU 1), components and hole kept."""
    original = TissueMask(two_regions_and_a_hole(), mpp=4.0)
    data = mask_to_geojson(original, "Tumor", slide_mpp=0.5, merge=merge)
    path = write_geojson(data, tmp_path / "lesions.geojson")
    features = json.loads(path.read_text())["features"]
    if merge:
        assert len(features) == 1 and features[0]["geometry"]["type"] == "MultiPolygon"
    else:
        assert len(features) == 3  # the rectangle with its hole, the island, the disc
        assert sorted(len(f["geometry"]["coordinates"]) for f in features) == [1, 1, 2]
    annotations = read_annotations(path)
    assert annotations.class_names == ["Tumor"]
    back = annotations.mask(mpp=4.0, slide_mpp=0.5, dimensions=(80 * 8, 60 * 8))
    assert back.mask.shape == original.mask.shape
    assert iou(back.mask, original.mask) >= 0.99
    np.testing.assert_array_equal(back.mask, original.mask)


def test_mask_geometry_level0_coordinates_and_orientation():
    mask = TissueMask(two_regions_and_a_hole(), mpp=4.0)
    geometry = mask_geometry(mask, slide_mpp=0.5)  # 8 level-0 px per mask pixel
    assert geometry.is_valid and len(geometry.geoms) == 3
    rectangle = max(geometry.geoms, key=lambda p: p.area)
    # pixel columns 5..40, rows 5..30: edges at the pixel boundaries, 8 level-0 px each
    assert rectangle.bounds == (40.0, 40.0, 328.0, 248.0)
    data = mask_to_geojson(mask, "Tissue", slide_mpp=0.5)
    for f in data["features"]:
        rings = f["geometry"]["coordinates"]
        assert signed_area(rings[0]) > 0  # exterior counter-clockwise in (x, y) numbers
        assert all(signed_area(r) < 0 for r in rings[1:])  # holes clockwise
        assert f["properties"]["classification"] == {"name": "Tissue", "color": [0, 190, 255]}
    # the same from a slide: its mpp
    slide = SlideReader.from_array(np.zeros((480, 640, 3), np.uint8), mpp=0.5)
    assert mask_geometry(mask, slide=slide).equals(geometry)
    # a slide without mpp: the mask covers it
    assert mask_geometry(mask, dimensions=(640, 480)).equals(geometry)
    with pytest.raises(ValueError, match="slide"):
        mask_geometry(mask)


def signed_area(ring: list[list[float]]) -> float:
    xy = np.asarray(ring)
    return 0.5 * float(
        np.dot(xy[:, 0], np.roll(xy[:, 1], -1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], -1))
    )


def test_camelyon_xml_to_qupath_geojson(tmp_path):
    """CAMELYON XML converted to QuPath GeoJSON keeps classes, colours and the mask."""
    path = tmp_path / "tumor_002.xml"
    path.write_text(
        asap_xml(
            [
                ("A", "Polygon", "_0", square(100, 100, 900, 700)),
                ("B", "Polygon", "_2", square(300, 300, 500, 500)),
            ]
        )
    )
    annotations = read_annotations(path)
    converted = annotations_from_geojson(json.loads(json.dumps(annotations.to_geojson())))
    assert converted.class_names == ["_0", "_2"]
    assert converted.regions[0].color == (0xF4, 0xFA, 0x58)
    grid = {"mpp": 2.0, "slide_mpp": 0.25, "dimensions": (1000, 800)}
    np.testing.assert_array_equal(converted.mask(**grid).mask, annotations.mask(**grid).mask)


def test_empty_mask_writes_no_feature():
    data = mask_to_geojson(TissueMask(np.zeros((8, 8), bool), 2.0), slide_mpp=0.5)
    assert data == {"type": "FeatureCollection", "features": []}


# ---------------------------------------------------------------------------- malformed files
POLYGON_2 = {"type": "Polygon", "coordinates": [[[0, 0], [5, 5], [0, 0]]]}
MALFORMED = {
    "not_xml_or_json": ("a.xml", "tumour at the top left", "neither XML nor JSON"),
    "empty": ("a.geojson", "", "the file is empty"),
    "broken_xml": ("a.xml", "<ASAP_Annotations><Annotations>", "not valid XML"),
    "broken_json": ("a.geojson", '{"type": "FeatureCollection", ', "not valid JSON"),
    "other_xml": ("a.xml", "<svg><rect/></svg>", "expected <ASAP_Annotations>"),
    "no_coordinates": (
        "a.xml",
        '<ASAP_Annotations><Annotations><Annotation Name="T1" Type="Polygon" '
        'PartOfGroup="_0"/></Annotations></ASAP_Annotations>',
        "annotation 'T1': no coordinates",
    ),
    "no_y": (
        "a.xml",
        asap_xml([("T1", "Polygon", "_0", square(0, 0, 9, 9))]).replace(' Y="9"', "", 1),
        "annotation 'T1', coordinate 2: Y is missing",
    ),
    "not_a_number": (
        "a.xml",
        asap_xml([("T1", "Polygon", "_0", [("1", "1"), ("abc", "2"), ("3", "1")])]),
        "coordinate 1: X='abc' is not a number",
    ),
    "two_point_xml": (
        "a.xml",
        asap_xml([("T1", "Polygon", "_0", [("1", "1"), ("5", "5")])]),
        "annotation 'T1': a polygon needs at least 3 points, got 2",
    ),
    "unknown_asap_type": (
        "a.xml",
        asap_xml([("T1", "Ellipse", "_0", square(0, 0, 9, 9))]),
        "unknown annotation type 'Ellipse'",
    ),
    "two_point_geojson": (
        "a.geojson",
        json.dumps([feature(POLYGON_2)]),
        "feature 0: a polygon needs at least 3 points, got 2",
    ),
    "unknown_geometry": (
        "a.geojson",
        json.dumps([feature({"type": "Circle", "coordinates": [5, 5]})]),
        "feature 0: unknown geometry type 'Circle'",
    ),
    "no_geometry": (
        "a.geojson",
        json.dumps([{"type": "Feature", "properties": {}}]),
        "no geometry",
    ),
    "no_coordinates_geojson": (
        "a.geojson",
        json.dumps([feature({"type": "Polygon"})]),
        "a Polygon without coordinates",
    ),
    "ragged_coordinates": (
        "a.geojson",
        json.dumps([feature({"type": "Polygon", "coordinates": [[[0, 0], [1], [2, 2]]]})]),
        "malformed coordinates",
    ),
    "features_not_a_list": (
        "a.geojson",
        json.dumps({"type": "FeatureCollection", "features": {}}),
        "without a 'features' list",
    ),
    "bad_classification": (
        "a.geojson",
        json.dumps([feature(POLYGON_2, classification=3)]),
        "classification 3",
    ),
    "not_geojson": ("a.json", json.dumps({"type": "Topology"}), "not GeoJSON"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_one_clear_error(tmp_path, case):
    name, text, problem = MALFORMED[case]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(AnnotationError) as info:
        read_annotations(path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert message.startswith(f"{path}: ") and problem in message
    assert "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(AnnotationError, match="annotation file not found"):
        read_annotations(tmp_path / "nothing.xml")


def test_points_and_lines_have_no_area(tmp_path):
    data = [
        feature({"type": "Point", "coordinates": [5, 5]}),
        feature({"type": "MultiPoint", "coordinates": [[5, 5], [6, 6]]}),
        feature({"type": "LineString", "coordinates": [[5, 5], [6, 6]]}),
    ]
    path = tmp_path / "points.geojson"
    path.write_text(json.dumps(data))
    annotations = read_annotations(path)
    assert len(annotations) == 0
    assert not annotations.mask(downsample=1.0, dimensions=(10, 10)).mask.any()
