"""Region annotations of slides: CAMELYON (ASAP) XML and QuPath GeoJSON, read, rasterised, written.

Reading (:func:`read_annotations`, or :func:`read_asap_xml` / :func:`read_geojson`) gives an
:class:`Annotations`: the annotated regions of one slide as shapely polygons in **level-0
pixels** (origin at the top-left corner of the full-resolution image, pixel ``i`` spanning
``[i, i + 1)``), each with its class name.

- **ASAP XML**, the format of the CAMELYON16/17 lesion annotations (Ehteshami Bejnordi et al.,
  JAMA 2017; Bándi et al., IEEE TMI 2019): ``<ASAP_Annotations><Annotations><Annotation
  Name=".." Type="Polygon" PartOfGroup="_0" Color="#F4FA58"><Coordinates><Coordinate
  Order="0" X=".." Y=".."/>...``. The class is the group (``PartOfGroup``). CAMELYON16 marks
  tumour as ``_0``/``_1`` (``Tumor`` in its test set), regions to leave out of a tumour as
  ``_2`` (``Exclusion``); CAMELYON17 marks lesions ``metastases``. Some files write numbers
  with a decimal comma (``X="1234,5"``); they are read as well. ``Spline`` annotations are
  taken as the polygon through their control points; ``Dot``/``PointSet``/``Measurement``
  annotations have no area and are skipped.
- **QuPath GeoJSON** (Bankhead et al., Sci. Rep. 2017; what *File > Export objects as GeoJSON*
  writes): a ``FeatureCollection``, a list of ``Feature`` s or one ``Feature``, with
  ``Polygon``/``MultiPolygon`` geometry (interior rings are holes); the class is
  ``properties.classification.name`` (``names`` joined by ``": "`` for a derived class, or
  the bare name string older versions wrote), the object type ``properties.objectType``
  (``annotation``, ``detection``, ``tile``, ...). Points and lines have no area and are
  skipped.

A region's class is ``Unclassified`` when the file gives none. Classes named in
:data:`EXCLUSION_CLASSES` (``_2``, ``Exclusion``, ``Ignore*``) are subtracted from the others
by default (:meth:`Annotations.geometry`, :meth:`Annotations.mask`).

Rasterising (:meth:`Annotations.mask`, :func:`rasterize`) gives a
:class:`~gigastream.wsi.tissue.TissueMask` at any mpp (or level-0 downsample) covering the
whole slide, so it drops into the heatmap contours (``contours=``), ROI and tissue code. A
mask pixel is True when its **centre** lies inside the region (holes and exclusions
subtracted): an exact even-odd scanline fill in numpy at sub-pixel vertex positions. (PIL's
``ImageDraw.polygon`` rounds vertices to whole pixels and fills the outline too, half a
pixel beyond the edge; ``skimage.draw.polygon`` tests every pixel of the bounding box against
every vertex, too slow for slide-sized masks. The tests check this fill against
``skimage.draw.polygon`` pixel for pixel.)

Writing (:func:`mask_to_geojson`, :func:`write_geojson`) turns a mask (tissue, lesions) into
QuPath-importable GeoJSON contours in level-0 pixels: marching squares at level 0.5 pass
between every pixel centre inside and every centre outside, so the contours rasterise back
to the same mask (tested). :meth:`Annotations.to_geojson` converts read annotations (e.g.
CAMELYON XML) to QuPath GeoJSON without rasterising. :func:`geometry_feature` builds one
QuPath feature (also used for attention tiles, :mod:`gigastream.viz.geojson`).

Example:
    >>> import numpy as np
    >>> from gigastream.wsi.tissue import TissueMask
    >>> lesion = TissueMask(np.pad(np.ones((4, 6), bool), 2), mpp=8.0)  # 10 x 8 px at 8 um/px
    >>> data = mask_to_geojson(lesion, "Tumor", slide_mpp=0.25)  # level-0 px at 0.25 um/px
    >>> outline = Polygon(data["features"][0]["geometry"]["coordinates"][0])
    >>> outline.bounds  # pixel columns 2..7, rows 2..5 of 32 level-0 px
    (64.0, 64.0, 256.0, 192.0)
    >>> back = annotations_from_geojson(data).mask(mpp=8.0, slide_mpp=0.25, dimensions=(320, 256))
    >>> bool((back.mask == lesion.mask).all())
    True
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

from gigastream.wsi.reader import SlideReader
from gigastream.wsi.tissue import TissueMask

logger = logging.getLogger(__name__)

#: Class of a region whose file gives none (QuPath's name for "no classification").
UNCLASSIFIED = "Unclassified"
#: Classes subtracted from the others by default (case-insensitive; ``*`` ends a prefix):
#: CAMELYON16's exclusion group ``_2`` (``Exclusion`` in its test set) and QuPath's ``Ignore*``.
EXCLUSION_CLASSES = ("_2", "Exclusion", "Ignore*")
#: Colours of the classes QuPath knows by default (RGB), used by :func:`geometry_feature`.
CLASS_COLOURS = {
    "Tumor": (200, 0, 0),
    "Stroma": (150, 200, 150),
    "Immune cells": (160, 90, 160),
    "Necrosis": (50, 50, 50),
    "Other": (255, 200, 0),
    "Region*": (0, 0, 180),
    "Ignore*": (180, 180, 180),
    "Tissue": (0, 190, 255),  # gigastream's tissue outline colour (viz.tissue.TISSUE_COLOUR)
}
#: Colour of any other class.
DEFAULT_COLOUR = (255, 200, 0)

_ASAP_AREA_TYPES = ("polygon", "spline", "rectangle")
_ASAP_POINT_TYPES = ("dot", "pointset", "measurement")
_GEOJSON_NO_AREA = ("Point", "MultiPoint", "LineString", "MultiLineString")
_GEOJSON_GEOMETRIES = ("Polygon", "MultiPolygon", "GeometryCollection", *_GEOJSON_NO_AREA)


class AnnotationError(ValueError):
    """An annotation file that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class Region:
    """One annotated region.

    Attributes:
        geometry: a valid ``Polygon`` or ``MultiPolygon`` in level-0 pixels.
        class_name: its class (ASAP group, QuPath classification; :data:`UNCLASSIFIED`).
        object_type: QuPath's object type (``"annotation"``, ``"detection"``, ``"tile"``, ...;
            ``"annotation"`` for ASAP).
        name: the annotation's own name, if any (ASAP ``Name``, QuPath ``properties.name``).
        color: its RGB colour, if the file gives one.
    """

    geometry: Polygon | MultiPolygon
    class_name: str
    object_type: str = "annotation"
    name: str | None = None
    color: tuple[int, int, int] | None = None


def _matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether ``name`` is one of ``patterns`` (case-insensitive; ``"Ignore*"`` is a prefix)."""
    key = name.casefold()
    for pattern in patterns:
        p = pattern.casefold()
        if key == p or (p.endswith("*") and key.startswith(p[:-1])):
            return True
    return False


@dataclass(frozen=True)
class Annotations:
    """The annotated regions of one slide, in level-0 pixels.

    Attributes:
        regions: every region, in file order.
        path: the file they were read from (``None`` when built in memory).
    """

    regions: tuple[Region, ...]
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.regions)

    @property
    def class_names(self) -> list[str]:
        """The class names, in order of first appearance."""
        return list(dict.fromkeys(r.class_name for r in self.regions))

    def classes(self) -> dict[str, Polygon | MultiPolygon]:
        """Each class's regions merged into one geometry (level-0 pixels), by class name."""
        return {name: self.geometry([name], exclude=()) for name in self.class_names}

    def geometry(
        self, classes: Collection[str] | None = None, exclude: Collection[str] | None = None
    ) -> Polygon | MultiPolygon:
        """The union of the regions of ``classes`` minus those of ``exclude`` (level-0 px).

        Args:
            classes: class names to take (case-insensitive; ``"Name*"`` matches a prefix);
                ``None``: every class that is not an exclusion class.
            exclude: class names to subtract; ``None``: :data:`EXCLUSION_CLASSES` (those not
                asked for in ``classes``); ``()``: nothing.

        Returns:
            A valid ``Polygon`` or ``MultiPolygon``, empty when no region matches.

        Example:
            >>> square = Polygon([(0, 0), (10, 0), (10, 10), (0, 10)])
            >>> hole = Polygon([(4, 4), (6, 4), (6, 6), (4, 6)])
            >>> a = Annotations((Region(square, "_0"), Region(hole, "_2")))
            >>> a.geometry().area, a.geometry(exclude=()).area
            (96.0, 100.0)
        """
        classes = [classes] if isinstance(classes, str) else classes
        exclude = [exclude] if isinstance(exclude, str) else exclude
        if classes is None:
            take = [r for r in self.regions if not _matches(r.class_name, EXCLUSION_CLASSES)]
        else:
            take = [r for r in self.regions if _matches(r.class_name, classes)]
        if exclude is None:
            asked = classes or ()
            drop = [
                r
                for r in self.regions
                if _matches(r.class_name, EXCLUSION_CLASSES) and not _matches(r.class_name, asked)
            ]
        else:
            drop = [r for r in self.regions if _matches(r.class_name, exclude)]
        geometry = _union([r.geometry for r in take])
        if drop and not geometry.is_empty:
            geometry = _polygonal(shapely.difference(geometry, _union([r.geometry for r in drop])))
        return geometry

    def mask(
        self,
        classes: Collection[str] | None = None,
        exclude: Collection[str] | None = None,
        *,
        mpp: float | None = None,
        downsample: float | None = None,
        slide: SlideReader | None = None,
        slide_mpp: float | None = None,
        dimensions: tuple[int, int] | None = None,
    ) -> TissueMask:
        """The regions of ``classes`` minus ``exclude`` (see :meth:`geometry`) as a mask.

        The mask covers the whole slide at ``mpp`` microns per pixel (or ``downsample``
        level-0 pixels per pixel); see :func:`rasterize` for the arguments.

        Example:
            >>> square = Polygon([(100, 100), (500, 100), (500, 500), (100, 500)])
            >>> m = Annotations((Region(square, "Tumor"),)).mask(
            ...     mpp=4.0, slide_mpp=0.25, dimensions=(1600, 800))
            >>> m.mask.shape, m.mpp, int(m.mask.sum())
            ((50, 100), 4.0, 625)
        """
        shape, scale, mask_mpp = _mask_grid(mpp, downsample, slide, slide_mpp, dimensions)
        pixels = _fill(_rings(self.geometry(classes, exclude)), shape, scale)
        return TissueMask(pixels, mask_mpp)

    def to_geojson(self, object_type: str | None = None) -> dict[str, Any]:
        """The regions as a QuPath GeoJSON ``FeatureCollection`` (one feature per region,
        its class and colour kept; ``object_type`` overrides every region's own)."""
        features = [
            geometry_feature(
                r.geometry,
                r.class_name if r.class_name != UNCLASSIFIED else None,
                color=r.color,
                object_type=object_type or r.object_type,
                name=r.name,
            )
            for r in self.regions
        ]
        return feature_collection(features)


# ---------------------------------------------------------------------------- geometry helpers
def _polygons(geometry: BaseGeometry) -> list[Polygon]:
    """The non-empty polygons in ``geometry`` (points and lines dropped)."""
    if isinstance(geometry, Polygon):
        return [] if geometry.is_empty else [geometry]
    if hasattr(geometry, "geoms"):
        return [p for part in geometry.geoms for p in _polygons(part)]
    return []


def _polygonal(geometry: BaseGeometry) -> Polygon | MultiPolygon:
    """The polygonal part of a valid geometry as one ``Polygon`` or ``MultiPolygon``."""
    parts = _polygons(geometry)
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return MultiPolygon()
    if isinstance(geometry, MultiPolygon):
        return geometry
    return _polygonal(shapely.union_all(parts))


def _union(geometries: Sequence[BaseGeometry]) -> Polygon | MultiPolygon:
    if not geometries:
        return MultiPolygon()
    if len(geometries) == 1:
        return _polygonal(geometries[0])
    return _polygonal(shapely.union_all(list(geometries)))


def _rings(geometry: BaseGeometry) -> list[np.ndarray]:
    """Every ring (exteriors and holes) of a valid polygonal geometry, ``(n, 2)`` level-0 px."""
    rings = []
    for polygon in _polygons(geometry):
        rings.append(np.asarray(polygon.exterior.coords)[:, :2])
        rings += [np.asarray(hole.coords)[:, :2] for hole in polygon.interiors]
    return rings


# ---------------------------------------------------------------------------- rasterising
def _mask_grid(
    mpp: float | None,
    downsample: float | None,
    slide: SlideReader | None,
    slide_mpp: float | None,
    dimensions: tuple[int, int] | None,
) -> tuple[tuple[int, int], tuple[float, float], float]:
    """``(shape, (x, y) level-0 px per mask px, mask mpp)`` of a whole-slide mask."""
    if slide is not None:
        dimensions = dimensions or slide.dimensions
        slide_mpp = slide_mpp or slide.mpp
    if dimensions is None:
        raise ValueError("the slide's level-0 size is needed: pass slide=... or dimensions=(w, h)")
    if (mpp is None) == (downsample is None):
        raise ValueError(
            "give the mask's resolution as mpp=... (microns per pixel) or downsample=... "
            "(level-0 pixels per pixel), one of them"
        )
    if mpp is not None:
        if slide_mpp is None:
            raise ValueError(
                "mpp=... needs the slide's level-0 mpp: pass slide_mpp=... or a slide with mpp "
                "metadata, or give downsample=... instead"
            )
        _check_positive(mpp, "mpp")
        _check_positive(slide_mpp, "slide_mpp")
        scale = mpp / slide_mpp
        mask_mpp = float(mpp)
    else:
        _check_positive(downsample, "downsample")
        scale = float(downsample)
        # without the slide's mpp, "microns" are level-0 pixels (as in gigastream.viz.heatmap)
        mask_mpp = scale * slide_mpp if slide_mpp is not None else scale
    width, height = dimensions
    if not (width >= 1 and height >= 1):
        raise ValueError(f"dimensions must be (width, height) >= 1, got {dimensions}")
    shape = (max(1, round(height / scale)), max(1, round(width / scale)))
    return shape, (scale, scale), mask_mpp


def _check_positive(value: float | None, name: str) -> None:
    if value is None or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _fill(
    rings: Sequence[np.ndarray], shape: tuple[int, int], scale: tuple[float, float]
) -> np.ndarray:
    """Even-odd fill of closed ``rings`` (level-0 px) at the centres of mask pixels.

    Mask pixel ``(r, c)`` has its centre at level-0 ``((c + 0.5) * sx, (r + 0.5) * sy)``.
    Each edge crosses the rows whose centre line it spans (half-open, so a vertex on a row
    counts once); a crossing toggles every pixel whose centre lies at or right of it. The
    rings of a valid polygonal geometry do not overlap, so even-odd is its interior.

    Returns:
        ``(rows, cols)`` bool.
    """
    height, width = shape
    sx, sy = scale
    toggles = np.zeros((height, width + 1), np.uint8)
    for ring in rings:
        u0 = ring[:, 0] / sx - 0.5  # mask px, pixel centres at integers
        v0 = ring[:, 1] / sy - 0.5
        u1, v1 = np.roll(u0, -1), np.roll(v0, -1)
        low = np.clip(np.ceil(np.minimum(v0, v1)), 0, height).astype(np.int64)
        high = np.clip(np.ceil(np.maximum(v0, v1)), 0, height).astype(np.int64)
        counts = high - low  # rows r with min(v) <= r < max(v)
        total = int(counts.sum())
        if total == 0:
            continue
        edge = np.repeat(np.arange(len(u0)), counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        rows = low[edge] + (np.arange(total) - first)
        t = (rows - v0[edge]) / (v1[edge] - v0[edge])
        x = u0[edge] + t * (u1[edge] - u0[edge])
        cols = np.ceil(np.clip(x, -1.0, width)).clip(0, width).astype(np.int64)
        np.add.at(toggles.reshape(-1), rows * (width + 1) + cols, 1)  # parity survives wrap
    np.cumsum(toggles, axis=1, dtype=np.uint8, out=toggles)
    return (toggles[:, :width] & 1).astype(bool)


def rasterize(
    geometry: BaseGeometry,
    *,
    mpp: float | None = None,
    downsample: float | None = None,
    slide: SlideReader | None = None,
    slide_mpp: float | None = None,
    dimensions: tuple[int, int] | None = None,
) -> TissueMask:
    """A polygonal geometry in level-0 pixels as a whole-slide mask (True at pixel centres inside).

    Args:
        geometry: polygons in level-0 pixels (overlaps and self-intersections are repaired).
        mpp: microns per mask pixel (needs the slide's level-0 mpp) ...
        downsample: ... or level-0 pixels per mask pixel (the mask's ``mpp`` is then
            ``downsample * slide_mpp``, or ``downsample`` when the slide has no mpp, in
            level-0 pixels as :mod:`gigastream.viz.heatmap` takes it).
        slide: the slide (its level-0 dimensions and mpp) ...
        slide_mpp: ... or its level-0 microns per pixel ...
        dimensions: ... and its level-0 ``(width, height)``.

    Returns:
        A :class:`~gigastream.wsi.tissue.TissueMask` of ``round(height / s) x round(width / s)``
        pixels, ``s = mpp / slide_mpp`` (or ``downsample``) level-0 pixels each.

    Raises:
        ValueError: neither or both of ``mpp``/``downsample``; ``mpp`` without the slide's
            mpp; no dimensions; a non-positive resolution.

    Example:
        >>> square = Polygon([(0, 0), (90, 0), (90, 90), (0, 90)])
        >>> m = rasterize(square, mpp=0.9, slide_mpp=0.25, dimensions=(360, 360))
        >>> m.mask.shape, int(m.mask.sum())  # 3.6 level-0 px per pixel; centres below 90
        ((100, 100), 625)
    """
    shape, scale, mask_mpp = _mask_grid(mpp, downsample, slide, slide_mpp, dimensions)
    valid = _union([shapely.make_valid(geometry)])
    return TissueMask(_fill(_rings(valid), shape, scale), mask_mpp)


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


# ---------------------------------------------------------------------------- writing
def _mask_scale(
    mask: TissueMask,
    slide: SlideReader | None,
    slide_mpp: float | None,
    dimensions: tuple[int, int] | None,
) -> tuple[float, float]:
    """``(x, y)`` level-0 pixels per mask pixel."""
    if slide is not None:
        slide_mpp = slide_mpp or slide.mpp
        dimensions = dimensions or slide.dimensions
    if slide_mpp is not None:
        _check_positive(slide_mpp, "slide_mpp")
        _check_positive(mask.mpp, "the mask's mpp")
        return (mask.mpp / slide_mpp, mask.mpp / slide_mpp)
    if dimensions is not None:  # no mpp: the mask is taken to cover the whole slide
        rows, cols = mask.mask.shape
        return (dimensions[0] / cols, dimensions[1] / rows)
    raise ValueError(
        "placing a mask in level-0 pixels needs the slide: pass slide=..., slide_mpp=... or "
        "dimensions=(w, h)"
    )


def mask_geometry(
    mask: TissueMask,
    *,
    slide: SlideReader | None = None,
    slide_mpp: float | None = None,
    dimensions: tuple[int, int] | None = None,
    simplify: float = 0.0,
) -> MultiPolygon:
    """The regions of a mask as polygons with holes in level-0 pixels.

    One polygon per 4-connected region, traced by marching squares at 0.5: the outline runs
    through the midpoints between pixel centres inside and outside (so it cuts a corner
    pixel's outer quarter diagonally, and diagonal neighbours are separate regions), and
    rasterising it at the mask's pixel centres gives the mask back. Exteriors are
    counter-clockwise and holes clockwise in (x, y) numbers (GeoJSON's right-hand rule).

    Args:
        mask: the mask and its mpp.
        slide: the slide it covers (its level-0 mpp) ...
        slide_mpp: ... or the slide's level-0 mpp ...
        dimensions: ... or, for a slide without mpp, its level-0 ``(width, height)`` (the
            mask is then taken to cover the whole slide).
        simplify: Douglas-Peucker tolerance in mask pixels; ``0`` drops only collinear
            vertices, so the polygons rasterise back to exactly the same mask.

    Example:
        >>> m = TissueMask(np.pad(np.ones((2, 3), bool), 1), mpp=2.0)
        >>> mask_geometry(m, slide_mpp=0.5).bounds  # pixels 1..3 x 1..2 of 4 level-0 px
        (4.0, 4.0, 16.0, 12.0)
    """
    from scipy import ndimage
    from skimage.measure import find_contours

    pixels = np.asarray(mask.mask, dtype=bool)
    if pixels.ndim != 2:
        raise ValueError(f"the mask must be 2-d (rows, cols), got shape {pixels.shape}")
    sx, sy = _mask_scale(mask, slide, slide_mpp, dimensions)
    labels, count = ndimage.label(pixels)  # 4-connected, as find_contours' default ("low")
    polygons = []
    for k, box in enumerate(ndimage.find_objects(labels), 1):
        crop = np.pad(labels[box] == k, 1).astype(np.float32)
        rings = []
        for line in find_contours(crop, 0.5):  # (points, 2) (row, col), centres at integers
            cols = line[:, 1] - 1 + box[1].start
            rows = line[:, 0] - 1 + box[0].start
            rings.append(np.stack([cols, rows], axis=1))
        rings.sort(key=lambda r: -abs(_shoelace(r)))  # the outline encloses its holes
        polygon = Polygon(rings[0], rings[1:])
        if simplify >= 0:
            polygon = shapely.simplify(polygon, simplify, preserve_topology=True)
        polygon = shapely.transform(polygon, lambda xy: (xy + 0.5) * np.array([sx, sy]))
        polygons.append(orient(polygon, sign=1.0))
    logger.debug("mask of %d regions -> %d polygons", count, len(polygons))
    return MultiPolygon(polygons)


def _shoelace(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _ring_json(ring: Any, decimals: int) -> list[list[float]]:
    return np.round(np.asarray(ring.coords)[:, :2], decimals).tolist()


def geojson_geometry(geometry: BaseGeometry, decimals: int = 3) -> dict[str, Any]:
    """A ``Polygon`` or ``MultiPolygon`` (level-0 px) as a GeoJSON geometry object, its
    coordinates rounded to ``decimals`` (milli-pixels by default)."""
    polygons = _polygons(geometry)
    if not polygons:
        raise ValueError("an empty geometry has no GeoJSON polygon")
    as_lists = [
        [_ring_json(p.exterior, decimals)] + [_ring_json(h, decimals) for h in p.interiors]
        for p in (orient(p, sign=1.0) for p in polygons)
    ]
    if len(as_lists) == 1:
        return {"type": "Polygon", "coordinates": as_lists[0]}
    return {"type": "MultiPolygon", "coordinates": as_lists}


def class_colour(name: str) -> tuple[int, int, int]:
    """The colour of a class: QuPath's default colour for its known classes
    (:data:`CLASS_COLOURS`), else :data:`DEFAULT_COLOUR`."""
    for known, colour in CLASS_COLOURS.items():
        if _matches(name, [known]):
            return colour
    return DEFAULT_COLOUR


def _check_colour(color: Sequence[int]) -> list[int]:
    values = list(color)
    if len(values) != 3 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255
        for v in values
    ):
        raise ValueError(f"a colour must be 3 integers 0-255 (r, g, b), got {color!r}")
    return [int(v) for v in values]


def geometry_feature(
    geometry: BaseGeometry,
    class_name: str | None = None,
    *,
    color: Sequence[int] | None = None,
    object_type: str = "annotation",
    measurements: Mapping[str, float] | None = None,
    name: str | None = None,
    decimals: int = 3,
) -> dict[str, Any]:
    """One QuPath GeoJSON feature: ``{"type": "Feature", "geometry": ..., "properties": ...}``.

    ``properties`` holds ``objectType``, ``classification`` ``{"name", "color": [r, g, b]}``
    (when ``class_name`` is given; ``color`` defaults to :func:`class_colour`), ``name`` (when
    given) and ``measurements`` ``{name: number}`` (when given), as QuPath 0.4+ writes and
    reads them (qupath-core ``PathObjectTypeAdapters``); coordinates are rounded to
    ``decimals`` decimals of a level-0 pixel.

    Raises:
        ValueError: an empty geometry, a bad colour, or a measurement that is not a finite
            number.

    Example:
        >>> f = geometry_feature(Polygon([(0, 0), (4, 0), (4, 4)]), "Tumor", measurements={"p": 1})
        >>> f["geometry"]["coordinates"], f["properties"]["classification"]
        ([[[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 0.0]]], {'name': 'Tumor', 'color': [200, 0, 0]})
    """
    properties: dict[str, Any] = {"objectType": object_type}
    if name is not None:
        properties["name"] = name
    if class_name is not None:
        colour = _check_colour(color if color is not None else class_colour(class_name))
        properties["classification"] = {"name": class_name, "color": colour}
    if measurements is not None:
        values = {}
        for key, value in measurements.items():
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(f"measurement {key!r} is {value!r}, not a finite number")
            values[str(key)] = number
        properties["measurements"] = values
    return {
        "type": "Feature",
        "geometry": geojson_geometry(geometry, decimals),
        "properties": properties,
    }


def feature_collection(features: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``{"type": "FeatureCollection", "features": [...]}`` (join several by their features)."""
    return {"type": "FeatureCollection", "features": list(features)}


def mask_to_geojson(
    mask: TissueMask,
    class_name: str = "Tissue",
    *,
    color: Sequence[int] | None = None,
    slide: SlideReader | None = None,
    slide_mpp: float | None = None,
    dimensions: tuple[int, int] | None = None,
    object_type: str = "annotation",
    merge: bool = False,
    simplify: float = 0.0,
) -> dict[str, Any]:
    """A mask's contours as QuPath-importable GeoJSON in level-0 pixels.

    Args:
        mask: e.g. a tissue mask or a lesion mask.
        class_name: the features' classification (``"Tissue"``, ``"Tumor"``, ...).
        color: its RGB colour (default: :func:`class_colour`).
        slide, slide_mpp, dimensions: where the mask lies (see :func:`mask_geometry`).
        object_type: QuPath object type of the features.
        merge: one feature (a ``MultiPolygon`` when the mask has several regions) instead
            of one ``Polygon`` feature per region.
        simplify: contour simplification in mask pixels (see :func:`mask_geometry`).

    Returns:
        A ``FeatureCollection`` dict (no feature for an empty mask); write it with
        :func:`write_geojson` and import it in QuPath with *File > Import objects from file*.
    """
    geometry = mask_geometry(
        mask, slide=slide, slide_mpp=slide_mpp, dimensions=dimensions, simplify=simplify
    )
    parts = [geometry] if merge else list(geometry.geoms)
    return feature_collection(
        geometry_feature(part, class_name, color=color, object_type=object_type)
        for part in parts
        if not part.is_empty
    )


def write_geojson(data: Mapping[str, Any] | Sequence[Any], path: str | Path) -> Path:
    """Write GeoJSON as strict JSON (no NaN), atomically (a temporary file renamed into place)."""
    path = Path(path)
    text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


__all__ = [
    "CLASS_COLOURS",
    "DEFAULT_COLOUR",
    "EXCLUSION_CLASSES",
    "UNCLASSIFIED",
    "AnnotationError",
    "Annotations",
    "Region",
    "annotations_from_geojson",
    "class_colour",
    "feature_collection",
    "geojson_geometry",
    "geometry_feature",
    "mask_geometry",
    "mask_to_geojson",
    "rasterize",
    "read_annotations",
    "read_asap_xml",
    "read_geojson",
    "write_geojson",
]
