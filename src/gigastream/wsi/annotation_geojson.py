"""Writing region annotations and masks as QuPath-importable GeoJSON (level-0 pixels).

:func:`mask_to_geojson` turns a mask (tissue, lesions) into contours: marching squares at
level 0.5 pass between every pixel centre inside and every centre outside, so the contours
rasterise back to the same mask (tested). :func:`geometry_feature` builds one QuPath feature
(also used for attention tiles, :mod:`gigastream.viz.geojson`); :func:`write_geojson` writes
a collection atomically, as strict JSON.

Example:
    >>> import numpy as np
    >>> from shapely.geometry import Polygon
    >>> from gigastream.wsi.annotation_readers import annotations_from_geojson
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

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

from gigastream.atomic import atomic_write
from gigastream.wsi.annotations import (
    CLASS_COLOURS,
    DEFAULT_COLOUR,
    _check_positive,
    _matches,
    _polygons,
)
from gigastream.wsi.reader import SlideReader
from gigastream.wsi.tissue import TissueMask

logger = logging.getLogger(__name__)


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
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


__all__ = [
    "class_colour",
    "feature_collection",
    "geojson_geometry",
    "geometry_feature",
    "mask_geometry",
    "mask_to_geojson",
    "write_geojson",
]
