"""Region annotations of slides: CAMELYON (ASAP) XML and QuPath GeoJSON, read, rasterised, written.

Reading (:func:`~gigastream.wsi.annotation_readers.read_annotations`, or
``read_asap_xml`` / ``read_geojson`` of :mod:`gigastream.wsi.annotation_readers`) gives an
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
by default (:meth:`Annotations.geometry`, :meth:`Annotations.mask`); :data:`TUMOUR_CLASSES`
are the classes taken as tumour (lesion contours on heatmaps, ``evaluate --annotations``) unless
others are chosen (``--tumour-classes``, checked by :func:`check_classes`;
:func:`warn_if_no_class` tells when no region is of them).

Rasterising (:meth:`Annotations.mask`, :func:`rasterize`) gives a
:class:`~gigastream.wsi.tissue.TissueMask` at any mpp (or level-0 downsample) covering the
whole slide, so it drops into the heatmap contours (``contours=``), ROI and tissue code. A
mask pixel is True when its **centre** lies inside the region (holes and exclusions
subtracted): an exact even-odd scanline fill in numpy at sub-pixel vertex positions. (PIL's
``ImageDraw.polygon`` rounds vertices to whole pixels and fills the outline too, half a
pixel beyond the edge; ``skimage.draw.polygon`` tests every pixel of the bounding box against
every vertex, too slow for slide-sized masks. The tests check this fill against
``skimage.draw.polygon`` pixel for pixel.)

Writing (:mod:`gigastream.wsi.annotation_geojson`: ``mask_to_geojson``, ``write_geojson``)
turns a mask into QuPath-importable GeoJSON contours; :meth:`Annotations.to_geojson` converts
read annotations (e.g. CAMELYON XML) to QuPath GeoJSON without rasterising.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from gigastream.wsi.reader import SlideReader
from gigastream.wsi.tissue import TissueMask

logger = logging.getLogger(__name__)

#: Class of a region whose file gives none (QuPath's name for "no classification").
UNCLASSIFIED = "Unclassified"
#: Classes subtracted from the others by default (case-insensitive; ``*`` ends a prefix):
#: CAMELYON16's exclusion group ``_2`` (``Exclusion`` in its test set) and QuPath's ``Ignore*``.
EXCLUSION_CLASSES = ("_2", "Exclusion", "Ignore*")
#: Classes drawn as lesion contours and scored as tumour (``heatmap``/``evaluate
#: --annotations``; case-insensitive, ``*`` ends a prefix): CAMELYON16's groups ``_0``/``_1``,
#: ``Tumor``/``Tumour`` (QuPath's class, and derived ones such as ``Tumor: Positive``),
#: CAMELYON17's ``metastases``, ``Lesion*``, ``Carcinoma*``, and regions without a class.
TUMOUR_CLASSES = (
    "_0",
    "_1",
    "Tumor*",
    "Tumour*",
    "Metasta*",
    "Lesion*",
    "Carcinoma*",
    UNCLASSIFIED,
)
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


def check_classes(classes: str | Iterable[str], flag: str = "--tumour-classes") -> tuple[str, ...]:
    """Class names (or ``"Name*"`` prefixes) checked before any work: at least one, none
    empty; a single string is one name.

    Args:
        classes: the names, e.g. :data:`TUMOUR_CLASSES` or a command line's.
        flag: how the message names them.

    Returns:
        The names as a tuple, in the order given.

    Raises:
        ValueError: no name, an empty (or blank) name, or one that is not a string.

    Example:
        >>> check_classes(["Cancer", "Tumor*"])
        ('Cancer', 'Tumor*')
    """
    names = (classes,) if isinstance(classes, str) else tuple(classes)
    if not names:
        raise ValueError(f"{flag} needs at least one class name, e.g. {flag} Tumor")
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"{flag}: class names must be strings, got {name!r}")
        if not name.strip():
            raise ValueError(
                f"{flag}: an empty class name among {list(names)}; give the names of the "
                "classes as the annotation files write them (e.g. Tumor, 'Metasta*')"
            )
    return names


def warn_if_no_class(
    notes: Iterable[Annotations], classes: Collection[str], flag: str = "--tumour-classes"
) -> bool:
    """Log one warning when annotations hold regions but none of them is of ``classes``
    (e.g. QuPath's class ``Cancer`` and the default :data:`TUMOUR_CLASSES`): it names the
    classes the files do hold and ``flag``, the way to choose others.

    Args:
        notes: the annotations read (of one folder).
        classes: the classes asked for (case-insensitive; ``"Name*"`` is a prefix).
        flag: the option that chooses ``classes``, named in the warning.

    Returns:
        Whether any region is of ``classes`` (``True`` when there is no region at all).

    Example:
        >>> square = Polygon([(0, 0), (10, 0), (10, 10), (0, 10)])
        >>> warn_if_no_class([Annotations((Region(square, "Cancer"),))], ["Cancer"])
        True
    """
    notes = list(notes)
    found = list(dict.fromkeys(name for a in notes for name in a.class_names))
    if not found or any(_matches(name, classes) for name in found):
        return True
    shown = ", ".join(found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
    example = next((n for n in found if not _matches(n, EXCLUSION_CLASSES)), found[0])
    logger.warning(
        "no region of the %d annotation file(s) is of the tumour classes %s: their classes are "
        "%s; choose the tumour classes with %s NAME [NAME ...] (e.g. %s %s)",
        len(notes),
        " ".join(classes),
        shown,
        flag,
        flag,
        f"'{example}'" if " " in example else example,
    )
    return False


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
        from gigastream.wsi.annotation_geojson import feature_collection, geometry_feature

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


__all__ = [
    "CLASS_COLOURS",
    "DEFAULT_COLOUR",
    "EXCLUSION_CLASSES",
    "TUMOUR_CLASSES",
    "UNCLASSIFIED",
    "AnnotationError",
    "Annotations",
    "Region",
    "check_classes",
    "rasterize",
    "warn_if_no_class",
]
