"""The optional cuCIM backend (``data.backend: cucim``): RAPIDS cuCIM's fast TIFF decoder.

cuCIM decodes generic tiled TIFF, Aperio SVS and Philips TIFF with many threads and, on a
GPU machine, nvJPEG; published figures put it at ~5x OpenSlide's single-thread rate. It is
never required: install it where it helps (``pip install cucim-cu13``, or ``cucim-cu12``
for CUDA 12; on a CPU-only machine the wheel's reader works without its CUDA packages:
``pip install --no-deps cucim-cu13 lazy_loader``). Reads go through the same level and
resampling code as the other backends, so pixels equal OpenSlide's on gigastream's
pyramids (tested where cuCIM is installed).

Example:
    >>> slide = SlideReader.open("slide.tif", backend="cucim")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from gigastream.wsi.backends import (
    DOCUMENT_MPP,
    _composite_on_white,
    _positive_float,
    read_on_block_grid,
    white_canvas,
)
from gigastream.wsi.reader import Level, SlideError, SlideReader

logger = logging.getLogger(__name__)

#: What to do when cuCIM is missing.
INSTALL_HINT = (
    "install it with `pip install cucim-cu13` (CUDA 13; cucim-cu12 for CUDA 12) or use "
    "data.backend auto, openslide or tiffslide"
)

_MICRONS = {"micrometer": 1.0, "micron": 1.0, "um": 1.0, "millimeter": 1e3, "centimeter": 1e4}


def _import_cuimage():
    try:
        from cucim import CuImage
    except ImportError as exc:
        raise SlideError(
            f"the cucim backend needs cuCIM, which is not installed: {INSTALL_HINT}"
        ) from exc
    return CuImage


def _metadata(image) -> dict:
    raw = image.metadata
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return {}
    return dict(raw or {})


def cucim_mpp(image) -> float | None:
    """Microns per level-0 pixel from cuCIM's metadata: Aperio's ``MPP``, else the TIFF
    resolution (``spacing``) when it is in length units and not a document's dpi."""
    meta = _metadata(image)
    aperio = _positive_float((meta.get("aperio") or {}).get("MPP"))
    if aperio:
        return aperio
    tiff = meta.get("tiff") or {}
    if str(tiff.get("resolution_unit", "")).lower() in ("", "none"):
        return None
    spacing, units = image.spacing(), image.spacing_units()
    sizes = []
    for value, unit in zip(spacing[:2], units[:2], strict=True):
        factor = _MICRONS.get(str(unit).lower())
        size = _positive_float(value)
        if factor is None or size is None:
            return None
        sizes.append(size * factor)
    mpp = sum(sizes) / 2
    return None if mpp > DOCUMENT_MPP else mpp


class CuCIMReader(SlideReader):
    """A slide read with cuCIM (``CuImage``); its handle is read from several threads at
    once (cuCIM's reader is thread-safe)."""

    backend = "cucim"
    #: Level pixels per aligned block read on levels whose downsample is not an integer.
    block_size = 512

    def __init__(self, path: Path, mpp: float | None = None) -> None:
        cuimage = _import_cuimage()
        try:
            image = cuimage(str(path))
            res = image.resolutions
        except Exception as exc:  # cuCIM raises RuntimeError and others
            raise SlideError(f"{path}: cuCIM cannot open it: {exc}") from exc
        tiles = list(res.get("level_tile_sizes") or ())
        tiles += [None] * (len(res["level_dimensions"]) - len(tiles))
        levels = tuple(
            Level(
                (int(w), int(h)),
                float(ds),
                (int(t[0]), int(t[1])) if t is not None and min(t) > 0 else None,
            )
            for (w, h), ds, t in zip(
                res["level_dimensions"], res["level_downsamples"], tiles, strict=True
            )
        )
        file_mpp = cucim_mpp(image)
        if mpp is None and file_mpp is None:
            logger.info("%s: no mpp metadata", path)
        super().__init__(path, levels, mpp if mpp is not None else file_mpp)
        self._image = image

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        return read_on_block_grid(self, level, x, y, width, height)

    def _read_direct(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """The level region, white outside the level (cuCIM fills it with black for
        generic TIFFs: only the part inside the level is read)."""
        out, inside = white_canvas(self.levels[level].dimensions, x, y, width, height)
        if inside is None:
            return out
        xs, ys, xe, ye = inside
        ds = self.levels[level].downsample
        location = (round(xs * ds), round(ys * ds))
        region = np.asarray(self._image.read_region(location, (xe - xs, ye - ys), level))
        if region.ndim != 3 or region.shape[:2] != (ye - ys, xe - xs):
            raise SlideError(
                f"{self.name}: cuCIM returned a {region.shape} region for "
                f"{xe - xs}x{ye - ys} px of level {level}"
            )
        if region.shape[2] == 4:  # RGBA: on white, as the other backends
            region = _composite_on_white(region)
        out[ys - y : ye - y, xs - x : xe - x] = region[..., :3]
        return out

    def close(self) -> None:
        image, self._image = self._image, None
        if image is not None and callable(getattr(image, "close", None)):
            image.close()
