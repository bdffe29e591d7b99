"""Reading region annotations: CAMELYON (ASAP) XML and QuPath GeoJSON into
:class:`~gigastream.wsi.annotations.Annotations` (the formats are described there).

:func:`read_annotations` tells the format by the file's content; :func:`read_asap_xml`,
:func:`read_geojson` and :func:`annotations_from_geojson` read one format each. A malformed
file is one :class:`~gigastream.wsi.annotations.AnnotationError` line naming the file and
the problem. :func:`read_annotation_folder` reads the files ``<slide_id>.xml`` /
``.geojson`` / ``.json`` of a folder (``--annotations DIR``, ``--roi DIR``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon

from gigastream.wsi.annotations import (
    _ASAP_AREA_TYPES,
    _ASAP_POINT_TYPES,
    _GEOJSON_GEOMETRIES,
    _GEOJSON_NO_AREA,
    UNCLASSIFIED,
    AnnotationError,
    Annotations,
    Region,
    _polygonal,
    _union,
)

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- reading
def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read the annotation file: {exc}") from exc


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def read_annotations(path: str | Path, object_types: Collection[str] | None = None) -> Annotations:
    """Read an ASAP/CAMELYON XML or a QuPath GeoJSON annotation file (told apart by content).

    Args:
        path: the file (``.xml``, ``.geojson``, ``.json``; the name does not matter).
        object_types: GeoJSON only: keep features of these QuPath object types (e.g.
            ``{"annotation"}`` to leave out cell detections); ``None``: all.

    Raises:
        AnnotationError: a missing file, one that is neither XML nor JSON, or a malformed
            one (missing coordinates, a polygon of fewer than 3 points, an unknown geometry
            type, ...); one line naming the file and the problem.

    Example:
        >>> a = read_annotations("tumor_001.xml")  # doctest: +SKIP
        >>> a.class_names, a.mask(slide=slide, mpp=2.0).tissue_fraction  # doctest: +SKIP
        (['_0', '_2'], 0.0123)
    """
    path = Path(path)
    data = _read_bytes(path)
    start = data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if start == b"<":
        return _asap(path, data)
    if start in (b"{", b"["):
        return _geojson(path, data, object_types)
    raise AnnotationError(
        f"{path}: neither XML nor JSON (expected ASAP/CAMELYON XML or QuPath GeoJSON)"
        + ("; the file is empty" if not data.strip() else "")
    )


def read_asap_xml(path: str | Path) -> Annotations:
    """Read an ASAP XML annotation file (CAMELYON16/17); see :func:`read_annotations`."""
    path = Path(path)
    return _asap(path, _read_bytes(path))


def read_geojson(path: str | Path, object_types: Collection[str] | None = None) -> Annotations:
    """Read a QuPath GeoJSON file (a FeatureCollection, a list of Features or one Feature);
    see :func:`read_annotations`."""
    path = Path(path)
    return _geojson(path, _read_bytes(path), object_types)


def annotations_from_geojson(
    data: Any, object_types: Collection[str] | None = None, source: str = "<geojson>"
) -> Annotations:
    """Annotations from parsed GeoJSON (a dict or list as :func:`json.loads` gives it);
    errors name ``source``.

    Example:
        >>> ring = [[0, 0], [8, 0], [8, 8], [0, 8], [0, 0]]
        >>> a = annotations_from_geojson({"type": "Polygon", "coordinates": [ring]})
        >>> a.class_names, a.regions[0].geometry.area
        (['Unclassified'], 64.0)
    """
    return Annotations(tuple(_geojson_regions(data, source, object_types)))


def _number(value: str | None, where: str) -> float:
    if value is None:
        raise AnnotationError(f"{where} is missing")
    text = value.strip()
    if "," in text and "." not in text:  # a decimal comma (some CAMELYON16 files)
        text = text.replace(",", ".")
    try:
        number = float(text)
    except ValueError:
        raise AnnotationError(f"{where}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise AnnotationError(f"{where}={value!r} is not a finite number")
    return number


def _ring(points: np.ndarray, where: str) -> np.ndarray:
    """``points`` ``(n, 2)`` without a closing repeat of the first; at least 3 distinct."""
    if len(points) > 1 and np.array_equal(points[0], points[-1]):
        points = points[:-1]
    distinct = len(np.unique(points, axis=0)) if len(points) else 0
    if distinct < 3:
        raise AnnotationError(
            f"{where}: a polygon needs at least 3 points, got {distinct}"
            + (f" distinct of {len(points)}" if distinct != len(points) else "")
        )
    return points


def _polygon(rings: Sequence[np.ndarray], where: str) -> Polygon | MultiPolygon | None:
    """A valid polygon from its exterior and hole rings; ``None`` (logged) without area."""
    shell = _ring(rings[0], where)
    holes = [_ring(r, f"{where}, hole {k}") for k, r in enumerate(rings[1:], 1)]
    polygon: Polygon | MultiPolygon = Polygon(shell, holes)
    if not polygon.is_valid:  # hand-drawn outlines cross themselves: repair, keep the area
        polygon = _polygonal(shapely.make_valid(polygon))
    if polygon.is_empty or polygon.area <= 0:
        logger.warning("%s: skipped: the polygon has no area", where)
        return None
    return polygon


def _hex_colour(text: str | None) -> tuple[int, int, int] | None:
    if text and len(text.strip()) == 7 and text.strip().startswith("#"):
        with contextlib.suppress(ValueError):
            value = int(text.strip()[1:], 16)
            return ((value >> 16) & 255, (value >> 8) & 255, value & 255)
    return None


def _asap(path: Path, data: bytes) -> Annotations:
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise AnnotationError(f"{path}: not valid XML: {_one_line(exc)}") from None
    if root.tag != "ASAP_Annotations":
        raise AnnotationError(
            f"{path}: root element <{root.tag}>, expected <ASAP_Annotations> "
            "(an ASAP/CAMELYON annotation file)"
        )
    regions = []
    for index, element in enumerate(root.iter("Annotation")):
        label = element.get("Name")
        where = f"{path}: annotation {label!r}" if label else f"{path}: annotation #{index}"
        kind = (element.get("Type") or "").strip()
        group = (element.get("PartOfGroup") or "").strip()
        if group in ("", "None"):
            group = UNCLASSIFIED
        if kind.casefold() in _ASAP_POINT_TYPES:
            logger.debug("%s: skipped: a %s has no area", where, kind)
            continue
        if kind.casefold() not in _ASAP_AREA_TYPES:
            raise AnnotationError(
                f"{where}: unknown annotation type {kind!r} (ASAP writes Polygon, Spline, "
                "Rectangle, Dot, PointSet or Measurement)"
            )
        coordinates = element.find("Coordinates")
        points = coordinates.findall("Coordinate") if coordinates is not None else []
        if not points:
            raise AnnotationError(f"{where}: no coordinates (<Coordinates><Coordinate X= Y=/>)")
        xy, order = [], []
        for k, point in enumerate(points):
            xy.append(
                (
                    _number(point.get("X"), f"{where}, coordinate {k}: X"),
                    _number(point.get("Y"), f"{where}, coordinate {k}: Y"),
                )
            )
            order.append(point.get("Order"))
        if all(o is not None for o in order):
            keys = [_number(o, f"{where}: Order") for o in order]
            xy = [p for _, p in sorted(zip(keys, xy, strict=True), key=lambda kp: kp[0])]
        polygon = _polygon([np.asarray(xy, dtype=np.float64)], where)
        if polygon is not None:
            regions.append(
                Region(polygon, group, "annotation", label, _hex_colour(element.get("Color")))
            )
    return Annotations(tuple(regions), path)


def _geojson(path: Path, data: bytes, object_types: Collection[str] | None) -> Annotations:
    try:
        parsed = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"{path}: not UTF-8 text: {_one_line(exc)}") from None
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{path}: not valid JSON: {_one_line(exc)}") from None
    return Annotations(tuple(_geojson_regions(parsed, str(path), object_types)), path)


def _features(data: Any, source: str) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        kind = data.get("type")
        if kind == "FeatureCollection":
            features = data.get("features")
            if not isinstance(features, list):
                raise AnnotationError(f"{source}: a FeatureCollection without a 'features' list")
            return features
        if kind == "Feature" or kind in _GEOJSON_GEOMETRIES:
            return [data]
        raise AnnotationError(
            f"{source}: not GeoJSON: expected a FeatureCollection, a list of Features or a "
            f"Feature, got an object of type {kind!r}"
        )
    raise AnnotationError(f"{source}: not GeoJSON: a JSON {type(data).__name__} at the top")


def _class_name(classification: Any, where: str) -> str:
    if classification is None:
        return UNCLASSIFIED
    if isinstance(classification, str):  # written by QuPath before v0.4
        return classification.strip() or UNCLASSIFIED
    if isinstance(classification, dict):
        name = classification.get("name")
        names = classification.get("names")
        if name is None and isinstance(names, list) and names:
            name = ": ".join(str(n) for n in names)  # a derived class, e.g. "Tumor: Positive"
        if isinstance(name, str):
            return name.strip() or UNCLASSIFIED
    raise AnnotationError(
        f"{where}: classification {classification!r} is neither a name nor an object with one"
    )


def _colour(value: Any) -> tuple[int, int, int] | None:
    if isinstance(value, dict):
        value = value.get("color")
    if isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) for v in value):
        return (value[0] & 255, value[1] & 255, value[2] & 255)
    if isinstance(value, int) and not isinstance(value, bool):  # packed (A)RGB
        return ((value >> 16) & 255, (value >> 8) & 255, value & 255)
    return None


def _positions(value: Any, where: str) -> np.ndarray:
    try:
        points = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: malformed coordinates (not a list of [x, y])") from None
    if points.ndim != 2 or points.shape[1] < 2 or isinstance(value, str):
        raise AnnotationError(f"{where}: malformed coordinates (not a list of [x, y])")
    points = points[:, :2]
    if not np.isfinite(points).all():
        raise AnnotationError(f"{where}: coordinates that are not finite numbers")
    return points


def _geojson_geometry(geometry: Any, where: str) -> Polygon | MultiPolygon | None:
    if not isinstance(geometry, dict):
        raise AnnotationError(f"{where}: no geometry")
    kind = geometry.get("type")
    if kind == "GeometryCollection":
        members = geometry.get("geometries")
        if not isinstance(members, list):
            raise AnnotationError(f"{where}: a GeometryCollection without a 'geometries' list")
        parts = [_geojson_geometry(g, f"{where}, geometry {k}") for k, g in enumerate(members)]
        kept = [p for p in parts if p is not None]
        return _union(kept) if kept else None
    if kind in _GEOJSON_NO_AREA:
        logger.debug("%s: skipped: a %s has no area", where, kind)
        return None
    if kind not in ("Polygon", "MultiPolygon"):
        raise AnnotationError(
            f"{where}: unknown geometry type {kind!r} (expected Polygon or MultiPolygon)"
        )
    coordinates = geometry.get("coordinates")
    if not isinstance(coordinates, list) or not coordinates:
        raise AnnotationError(f"{where}: a {kind} without coordinates")
    polygons = coordinates if kind == "MultiPolygon" else [coordinates]
    parts = []
    for k, rings in enumerate(polygons):
        at = f"{where}, polygon {k}" if kind == "MultiPolygon" else where
        if not isinstance(rings, list) or not rings:
            raise AnnotationError(f"{at}: malformed coordinates (not a list of rings)")
        polygon = _polygon([_positions(r, at) for r in rings], at)
        if polygon is not None:
            parts.append(polygon)
    return _union(parts) if parts else None


def _geojson_regions(
    data: Any, source: str, object_types: Collection[str] | None
) -> Iterable[Region]:
    for index, feature in enumerate(_features(data, source)):
        where = f"{source}: feature {index}"
        if not isinstance(feature, dict):
            raise AnnotationError(f"{where}: not a GeoJSON Feature (a JSON object)")
        if feature.get("type") in _GEOJSON_GEOMETRIES:  # a bare geometry (e.g. exported ROIs)
            geometry, properties = feature, {}
        elif feature.get("type") == "Feature":
            geometry, properties = feature.get("geometry"), feature.get("properties") or {}
        else:
            raise AnnotationError(f"{where}: type {feature.get('type')!r}, expected 'Feature'")
        if not isinstance(properties, dict):
            raise AnnotationError(f"{where}: 'properties' is not an object")
        # QuPath reads objectType, then the older object_type, then type; default annotation
        object_type = str(
            properties.get("objectType")
            or properties.get("object_type")
            or properties.get("type")
            or "annotation"
        )
        if object_types is not None and object_type not in object_types:
            continue
        classification = properties.get("classification")
        class_name = _class_name(classification, where)
        name = properties.get("name")
        if name is not None:
            where = f"{where} ({name!r})"
        polygon = _geojson_geometry(geometry, where)
        if polygon is None:
            continue
        yield Region(
            polygon,
            class_name,
            object_type,
            str(name) if name is not None else None,
            _colour(classification) or _colour(properties.get("color")),
        )


# ---------------------------------------------------------------------------- folders
#: The names an annotation file of a slide may have in a folder: ``<slide_id><suffix>``.
ANNOTATION_SUFFIXES = (".xml", ".geojson", ".json")


def check_annotation_folder(folder: str | Path, flag: str = "--annotations") -> Path:
    """``folder`` as a :class:`~pathlib.Path`, checked to be a folder (AnnotationError naming
    ``flag`` and the fix otherwise)."""
    path = Path(folder)
    if not path.is_dir():
        what = "is a file" if path.exists() else "not found"
        raise AnnotationError(
            f"{flag} {path}: {what}; give the folder of annotation files <slide_id>.xml "
            "(ASAP/CAMELYON) or <slide_id>.geojson (QuPath)"
        )
    return path


def find_annotation(folder: str | Path, slide_id: str) -> Path | None:
    """The annotation file of a slide in ``folder``: ``<slide_id>.xml``, ``.geojson`` or
    ``.json`` (``None`` when there is none).

    Raises:
        AnnotationError: two of them (which one is meant is not clear).
    """
    found = [
        p for suffix in ANNOTATION_SUFFIXES if (p := Path(folder) / f"{slide_id}{suffix}").is_file()
    ]
    if len(found) > 1:
        raise AnnotationError(
            f"{folder}: {len(found)} annotation files for slide {slide_id!r} "
            f"({', '.join(p.name for p in found)}); keep one"
        )
    return found[0] if found else None


def read_annotation_folder(
    folder: str | Path, slide_ids: Iterable[str], flag: str = "--annotations"
) -> dict[str, Annotations]:
    """The annotations of the slides that have a file in ``folder`` (:func:`find_annotation`),
    every file read, so that a malformed one refuses before any work.

    Args:
        folder: the folder of ``<slide_id>.xml`` / ``.geojson`` / ``.json`` files.
        slide_ids: the slides wanted (a slide without a file is left out).
        flag: how messages name the folder.

    Returns:
        ``slide_id -> Annotations``, in the order of ``slide_ids``.

    Raises:
        AnnotationError: ``folder`` is not a folder, or a file is malformed (the first
            problem, naming the file, and how many more files are malformed).

    Example:
        >>> notes = read_annotation_folder("annotations", ["tumor_001", "normal_001"])  # doctest: +SKIP
        >>> list(notes)  # doctest: +SKIP
        ['tumor_001']
    """
    folder = check_annotation_folder(folder, flag)
    found: dict[str, Annotations] = {}
    problems: list[str] = []
    for slide_id in dict.fromkeys(slide_ids):
        try:
            path = find_annotation(folder, slide_id)
            if path is not None:
                found[slide_id] = read_annotations(path)
        except AnnotationError as exc:
            problems.append(str(exc))
    if problems:
        more = f" (and {len(problems) - 1} more malformed files)" if len(problems) > 1 else ""
        raise AnnotationError(f"{problems[0]}{more}")
    return found


__all__ = [
    "ANNOTATION_SUFFIXES",
    "annotations_from_geojson",
    "check_annotation_folder",
    "find_annotation",
    "read_annotation_folder",
    "read_annotations",
    "read_asap_xml",
    "read_geojson",
]
