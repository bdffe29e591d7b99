"""Attention as QuPath-importable GeoJSON: one square tile per instance, attention as measurements.

QuPath (Bankhead et al., Sci. Rep. 2017) imports a GeoJSON ``FeatureCollection`` with *File >
Import objects from file* (or drag and drop). The format is QuPath's own, as its reader and
writer define it (qupath-core ``qupath/lib/io/PathObjectTypeAdapters.java``, checked in the
source): each object is a ``Feature`` whose ``geometry`` is in level-0 pixels (origin at the
top-left corner of the full-resolution image, qupath-docs *Exporting annotations*), and whose
``properties`` hold ``objectType`` (``"tile"``, ``"detection"``, ``"annotation"``, ``"cell"``;
an unknown or missing type becomes an annotation), optionally ``classification``
``{"name", "color": [r, g, b]}`` and ``measurements``. Since v0.4.0 QuPath writes
``measurements`` as an object ``{name: number}`` ("Approach used before v0.4.0" was a list of
``{"name", "value"}``); its reader takes both. Tiles and detections are what *Measure > Show
measurement maps* colours by a measurement, so the attention map can be inspected over the
slide in QuPath.

:func:`attention_geojson` lays the tiles from

- an attention **grid** (``(rows, cols)``, NaN where there is no instance, as
  :func:`gigastream.viz.heatmap.attention_heatmap_png` takes it) with its cell edge
  ``cell_um`` in microns and the slide's level-0 mpp: cell ``[i, j]`` is the square
  ``[j * e, (j + 1) * e) x [i * e, (i + 1) * e)`` level-0 px, ``e = cell_um / slide_mpp``; or
- a patch model's instances: per-instance attention ``(N,)`` with the level-0 top-left
  ``coords`` ``(N, 2)`` ``(x, y)`` of the patches and their edge ``patch_size`` in level-0
  pixels (``PatchGrid.coords`` and ``PatchGrid.level0_patch``; CLAM/TRIDENT feature files'
  ``coords``).

Each tile carries the measurements ``attention`` (the raw weight) and ``attention x N``
(relative to uniform attention, :func:`gigastream.viz.heatmap.attention_times_n`: 1 = an
average instance, as the heatmaps colour it), plus any given per instance.

Example:
    >>> import numpy as np
    >>> attention = np.array([[0.25, 0.25], [np.nan, 0.5]])
    >>> data = attention_geojson(attention, cell_um=16.0, slide_mpp=0.5)  # 32 level-0 px cells
    >>> len(data["features"]), data["features"][1]["geometry"]["coordinates"][0][0]
    (3, [32.0, 0.0])
    >>> data["features"][2]["properties"]["measurements"]
    {'attention': 0.5, 'attention x N': 1.5}
    >>> write_attention_geojson("slide_001.geojson", attention, cell_um=16.0, slide_mpp=0.5)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gigastream.viz.heatmap import attention_times_n
from gigastream.wsi.annotation_geojson import feature_collection, write_geojson
from gigastream.wsi.reader import SlideReader

#: QuPath object types an attention tile may be given (both are shown by measurement maps).
TILE_OBJECT_TYPES = ("tile", "detection")


def _finite_positive(value: float | None, name: str) -> float:
    if value is None or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def attention_geojson(
    attention: np.ndarray,
    *,
    cell_um: float | None = None,
    slide: SlideReader | None = None,
    slide_mpp: float | None = None,
    coords: np.ndarray | None = None,
    patch_size: float | None = None,
    measurements: Mapping[str, np.ndarray] | None = None,
    object_type: str = "tile",
    decimals: int = 3,
) -> dict[str, Any]:
    """Attention as a QuPath GeoJSON ``FeatureCollection``: one square tile per instance.

    Args:
        attention: ``(rows, cols)`` grid of attention (NaN: no instance) with ``cell_um``, or
            ``(N,)`` per-instance attention with ``coords`` and ``patch_size``.
        cell_um: grid mode: edge of one cell in microns (e.g.
            :func:`gigastream.train.heatmaps.instance_cell_um`).
        slide: grid mode: the slide (its level-0 mpp) ...
        slide_mpp: ... or its level-0 microns per pixel.
        coords: patch mode: ``(N, 2)`` level-0 ``(x, y)`` of each patch's top-left corner.
        patch_size: patch mode: patch edge in level-0 pixels.
        measurements: more measurements per instance, ``name -> values`` shaped like
            ``attention`` (e.g. per-class attention); finite wherever there is an instance.
        object_type: ``"tile"`` or ``"detection"``.
        decimals: coordinates are rounded to this many decimals of a level-0 pixel.

    Returns:
        ``{"type": "FeatureCollection", "features": [...]}``, the features in row-major cell
        order (grid) or instance order (patches); write it with :func:`write_attention_geojson`.

    Raises:
        ValueError: both or neither of the two modes, shapes that disagree, a missing or
            non-positive size or mpp, non-finite attention at an instance (patch mode), no
            instance, or an unknown ``object_type``.
    """
    if object_type not in TILE_OBJECT_TYPES:
        raise ValueError(f"object_type must be one of {TILE_OBJECT_TYPES}, got {object_type!r}")
    values = np.asarray(attention, dtype=np.float64)
    if coords is None:
        if patch_size is not None:
            raise ValueError("patch_size goes with coords=... (patch mode); a grid needs cell_um")
        corners, edge, index = _grid_tiles(values, cell_um, slide, slide_mpp)
    else:
        if cell_um is not None:
            raise ValueError("give cell_um (an attention grid) or coords (patches), not both")
        corners, edge, index = _patch_tiles(values, coords, patch_size)
    weights = values[index]
    columns = {"attention": weights, "attention x N": attention_times_n(weights)}
    for name, extra in (measurements or {}).items():
        extra = np.asarray(extra, dtype=np.float64)
        if extra.shape != values.shape:
            raise ValueError(
                f"measurement {name!r} has shape {extra.shape}, the attention {values.shape}"
            )
        if not np.isfinite(extra[index]).all():
            raise ValueError(f"measurement {name!r} is not finite at every instance")
        columns[str(name)] = extra[index]
    # squares (N, 5, 2): top-left, top-right, bottom-right, bottom-left, closed; counter-
    # clockwise in (x, y) numbers, GeoJSON's right-hand rule, as geometry_feature orients
    x0, y0 = corners[:, 0], corners[:, 1]
    x1, y1 = x0 + edge, y0 + edge
    squares = np.stack(
        [np.stack(p, axis=1) for p in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0))], axis=1
    )
    rows = zip(
        np.round(squares, decimals).tolist(), *(c.tolist() for c in columns.values()), strict=True
    )
    names = list(columns)
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [square]},
            "properties": {
                "objectType": object_type,
                "measurements": dict(zip(names, numbers, strict=True)),
            },
        }
        for square, *numbers in rows
    ]
    return feature_collection(features)


def _grid_tiles(
    values: np.ndarray, cell_um: float | None, slide: SlideReader | None, slide_mpp: float | None
) -> tuple[np.ndarray, float, tuple[np.ndarray, ...]]:
    """``(corners (N, 2) level-0 (x, y), edge level-0 px, index of the N finite cells)``."""
    if values.ndim != 2:
        raise ValueError(
            f"an attention grid must be (rows, cols), got shape {values.shape}; per-instance "
            "attention (N,) needs coords=... and patch_size=..."
        )
    cell_um = _finite_positive(cell_um, "cell_um")
    if slide_mpp is None and slide is not None:
        slide_mpp = slide.require_mpp()
    if slide_mpp is None:
        raise ValueError(
            "an attention grid needs the slide's level-0 mpp: slide=... or slide_mpp=..."
        )
    edge = cell_um / _finite_positive(slide_mpp, "slide_mpp")
    index = np.nonzero(np.isfinite(values))
    if len(index[0]) == 0:
        raise ValueError("the attention grid holds no instance (every cell is NaN)")
    corners = np.stack([index[1] * edge, index[0] * edge], axis=1)
    return corners, edge, index


def _patch_tiles(
    values: np.ndarray, coords: np.ndarray, patch_size: float | None
) -> tuple[np.ndarray, float, tuple[np.ndarray, ...]]:
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) == 0:
        raise ValueError(f"coords must be (N, 2) level-0 (x, y) with N >= 1, got {coords.shape}")
    if values.shape != (len(coords),):
        raise ValueError(
            f"per-instance attention must be ({len(coords)},) like coords, got {values.shape}"
        )
    if not np.isfinite(coords).all():
        raise ValueError("coords must be finite")
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise ValueError(f"attention is not finite at instances {bad[:5].tolist()}")
    edge = _finite_positive(patch_size, "patch_size (level-0 px)")
    return coords, edge, (np.arange(len(coords)),)


def write_attention_geojson(path: str | Path, attention: np.ndarray, **kwargs: Any) -> Path:
    """Write :func:`attention_geojson` (same keyword arguments) to ``path`` atomically, as
    strict JSON, for QuPath's *File > Import objects from file*."""
    return write_geojson(attention_geojson(attention, **kwargs), path)


__all__ = ["TILE_OBJECT_TYPES", "attention_geojson", "write_attention_geojson"]
