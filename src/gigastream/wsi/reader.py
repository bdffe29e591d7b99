"""Whole-slide image reading: one interface over OpenSlide, tiffslide and in-memory arrays.

Conventions (as in OpenSlide): a *location* is ``(x, y)`` in level-0 pixels, a *size* is
``(width, height)`` in pixels of the requested resolution, and images come back as
``(height, width, 3)`` uint8 RGB arrays. Resolution is always given with its unit: a
pyramid ``level`` index or a target ``mpp`` (microns per pixel). Reading at an mpp picks
the finest level that is not finer than needed and resizes from it on a global pixel
grid (:mod:`gigastream.wsi.resample`), so every crop of the virtual image at that mpp is
exactly the same crop of the whole virtual image, which streaming relies on.

Example:
    >>> import numpy as np
    >>> from gigastream import SlideReader
    >>> slide = SlideReader.from_array(np.full((512, 768, 3), 240, np.uint8), mpp=0.5)
    >>> slide.region((0, 0), (100, 50), mpp=1.0).shape
    (50, 100, 3)
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gigastream.wsi.resample import apply_axis, plan_axis, to_uint8

logger = logging.getLogger(__name__)

#: Relative tolerance under which a level's mpp counts as equal to a requested mpp.
MPP_TOLERANCE = 0.01
#: Largest source window (pixels) read at once when resizing; larger reads go in row chunks.
MAX_READ_PIXELS = 32 * 2**20


class SlideError(RuntimeError):
    """A slide cannot be opened or read; the message names the file and the cause."""


#: What a :class:`SlideReadError` tells the user to do.
READ_ERROR_FIX = "the file is corrupt or truncated: re-export it or remove it from the manifest"


class SlideReadError(SlideError):
    """Pixels of a slide cannot be read (a corrupt or truncated tile), e.g. mid-stream.

    Raised by every pixel read (:meth:`SlideReader.read_level`, :meth:`SlideReader.read_scaled`,
    :meth:`~gigastream.wsi.source.SlideSource.read`) of every backend, chained from the
    backend's exception; a trainer catches :class:`SlideError` per slide, skips the slide
    and records it. The message names the file, the region and the fix.

    Attributes:
        path: the slide file (``None`` for an in-memory image).
        level: pyramid level of the failed read.
        region: ``(x, y, width, height)`` in pixels of ``level`` (or of the target mpp,
            when the message says so).
    """

    def __init__(
        self,
        path: Path | None,
        level: int,
        region: tuple[int, int, int, int],
        cause: BaseException,
        units: str = "level pixels",
    ) -> None:
        x, y, width, height = region
        name = str(path) if path is not None else "<array>"
        super().__init__(
            f"{name}: reading level {level} region x={x}, y={y}, w={width}, h={height} "
            f"({units}) failed: {type(cause).__name__}: {cause}; {READ_ERROR_FIX}"
        )
        self.path = path
        self.level = level
        self.region = region

    def __reduce__(self):
        # the same message and attributes across a process boundary (a read worker's error)
        return _rebuild_read_error, (str(self), self.path, self.level, self.region)


def _rebuild_read_error(
    message: str, path: Path | None, level: int, region: tuple[int, int, int, int]
) -> SlideReadError:
    error = SlideReadError.__new__(SlideReadError)
    RuntimeError.__init__(error, message)
    error.path, error.level, error.region = path, level, region
    return error


@dataclass(frozen=True)
class Level:
    """One level of a slide pyramid.

    Attributes:
        dimensions: ``(width, height)`` in pixels.
        downsample: level-0 pixels per pixel of this level.
        tile_size: ``(width, height)`` of the file's own tiles on this level, where the
            backend says (``None``: not tiled, or not known); region reads in parallel are
            cut on this grid.
    """

    dimensions: tuple[int, int]
    downsample: float
    tile_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class Resolution:
    """Where a read at a target mpp comes from.

    Attributes:
        level: pyramid level read from.
        scale: level pixels per target pixel (1.0: no resizing).
        dimensions: ``(width, height)`` of the whole slide at the target mpp.
        mpp: the exact microns per pixel of such a read (level mpp × ``scale``; it may
            differ from the target within :data:`MPP_TOLERANCE`), or ``None`` for reads
            that need no mpp metadata.
    """

    level: int
    scale: float
    dimensions: tuple[int, int]
    mpp: float | None = None


class SlideReader(ABC):
    """A whole-slide image: its pyramid levels, resolution metadata and region reads.

    Open one with :meth:`open` (a file) or :meth:`from_array` (an image in memory).
    Readers are context managers; :meth:`close` releases the file.

    Attributes:
        path: the file, or ``None`` for an in-memory image.
        levels: the pyramid, finest first.
        objective_power: scanner objective magnification, when the file states it.
        backend: name of the backend (``"openslide"``, ``"tiffslide"``, ``"array"``).
    """

    backend: str = ""

    def __init__(
        self,
        path: Path | None,
        levels: tuple[Level, ...],
        mpp: float | None,
        objective_power: float | None = None,
    ) -> None:
        if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
            raise SlideError(f"{self._name(path)}: mpp must be a positive number, got {mpp!r}")
        self.path = path
        self.levels = levels
        self._mpp = mpp
        self.objective_power = objective_power

    # ---------------------------------------------------------------- construction
    @classmethod
    def open(
        cls,
        path: str | Path,
        mpp: float | None = None,
        backend: str = "auto",
        *,
        default_mpp: float | None = None,
    ) -> SlideReader:
        """Open a slide file with the backend that reads it.

        OME-TIFF goes to tiffslide (it reads the OME-XML mpp); otherwise OpenSlide reads
        what it recognises (svs, ndpi, mrxs, scn, vms, bif, Philips and generic tiled
        TIFF) and other TIFFs go to tiffslide; plain PNG/JPEG images are read into memory.
        A TIFF resolution in inches coarser than :data:`~gigastream.wsi.backends.DOCUMENT_MPP`
        (an image editor's 72 or 300 dpi, not a scan) counts as no metadata.

        Args:
            path: the slide file.
            mpp: microns per level-0 pixel that *overrides* the file's metadata (a
                manifest's ``mpp`` column: one slide known to be mislabelled).
            backend: ``"auto"``, ``"openslide"``, ``"tiffslide"`` or ``"image"``.
            default_mpp: microns per level-0 pixel of a file that has *no* metadata (the
                CLI's ``--slide-mpp``); a slide with its own mpp keeps it.

        Returns:
            An open reader.

        Raises:
            SlideError: the file is missing, truncated, unsupported or unreadable, or
                ``default_mpp`` is not a positive number; the message names the file and
                the cause.

        Example:
            >>> slide = SlideReader.open("CMU-1-Small-Region.svs")  # doctest: +SKIP
            >>> slide.mpp, slide.levels[0].dimensions  # doctest: +SKIP
            (0.499, (2220, 2967))
            >>> SlideReader.open("CMU-1-Small-Region.svs", default_mpp=2.0).mpp  # doctest: +SKIP
            0.499
        """
        from gigastream.wsi import backends

        slide = backends.open_slide(Path(path), mpp=mpp, backend=backend)
        if default_mpp is not None and slide.mpp is None:
            if not (math.isfinite(default_mpp) and default_mpp > 0):
                slide.close()
                raise SlideError(
                    f"{slide.name}: the default mpp (--slide-mpp) must be a positive number, "
                    f"got {default_mpp!r}"
                )
            slide._mpp = float(default_mpp)
        return slide

    @classmethod
    def from_array(
        cls, image: np.ndarray, mpp: float | None, objective_power: float | None = None
    ) -> SlideReader:
        """Wrap an ``(H, W, 3)`` uint8 RGB image (or ``(3, H, W)`` tensor-like) as a slide.

        A pyramid of 2x levels is built down to 256 px.

        Example:
            >>> import numpy as np
            >>> SlideReader.from_array(np.zeros((1024, 1024, 3), np.uint8), mpp=0.5).levels[-1]
            Level(dimensions=(256, 256), downsample=4.0)
        """
        from gigastream.wsi.backends import ArrayReader

        return ArrayReader(image, mpp=mpp, objective_power=objective_power)

    # ---------------------------------------------------------------- metadata
    @property
    def name(self) -> str:
        """The file name, or ``"<array>"``."""
        return self._name(self.path)

    @staticmethod
    def _name(path: Path | None) -> str:
        return str(path) if path is not None else "<array>"

    @property
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` of level 0."""
        return self.levels[0].dimensions

    @property
    def mpp(self) -> float | None:
        """Microns per level-0 pixel, or ``None`` when unknown."""
        return self._mpp

    def require_mpp(self) -> float:
        """The level-0 mpp, or a :class:`SlideError` saying how to supply it."""
        if self._mpp is None:
            raise SlideError(
                f"{self.name}: the slide has no microns-per-pixel metadata; "
                "pass mpp=... when opening it (CLI: --slide-mpp, or the manifest's mpp column)"
            )
        return self._mpp

    def level_mpp(self, level: int) -> float:
        """Microns per pixel of ``level``."""
        return self.require_mpp() * self.levels[self._check_level(level)].downsample

    def resolution(self, mpp: float) -> Resolution:
        """Pick the level to read a target ``mpp`` from.

        The coarsest level whose mpp is at most the target (within
        :data:`MPP_TOLERANCE`) is used, so nothing is upsampled unless the target is
        finer than level 0.
        """
        if not (math.isfinite(mpp) and mpp > 0):
            raise SlideError(f"{self.name}: target mpp must be a positive number, got {mpp!r}")
        base = self.require_mpp()
        best = 0
        for i, level in enumerate(self.levels):
            if base * level.downsample <= mpp * (1 + MPP_TOLERANCE):
                best = i
        scale = mpp / (base * self.levels[best].downsample)
        if abs(scale - 1) <= MPP_TOLERANCE:
            scale = 1.0
        w, h = self.levels[best].dimensions
        dimensions = (max(1, round(w / scale)), max(1, round(h / scale)))
        return Resolution(best, scale, dimensions, base * self.levels[best].downsample * scale)

    def _check_level(self, level: int) -> int:
        if not 0 <= level < len(self.levels):
            raise SlideError(
                f"{self.name}: level {level} does not exist ({len(self.levels)} levels)"
            )
        return level

    # ---------------------------------------------------------------- reading
    @abstractmethod
    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Read ``(height, width, 3)`` uint8 RGB at ``level`` from level-pixel ``(x, y)``.

        Pixels outside the slide are white.
        """

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Read a rectangle given in the pixel coordinates of ``level``.

        Returns:
            ``(height, width, 3)`` uint8 RGB; pixels outside the slide are white.

        Raises:
            SlideReadError: the backend cannot decode the region (corrupt or truncated
                file); the message names the file, the level, the region and the fix.
            SlideError: a level that does not exist or a size that is not positive.
        """
        self._check_level(level)
        if width <= 0 or height <= 0:
            raise SlideError(f"{self.name}: region size must be positive, got {(width, height)}")
        x, y, width, height = int(x), int(y), int(width), int(height)
        try:
            return self._read_level(level, x, y, width, height)
        except (SlideError, MemoryError):
            raise
        except Exception as exc:  # backend errors: corrupt tiles, truncated data
            raise SlideReadError(self.path, level, (x, y, width, height), exc) from exc

    def read_scaled(
        self, res: Resolution, x: float, y: float, width: int, height: int
    ) -> np.ndarray:
        """Read a rectangle of the virtual image at ``res`` (target-pixel coordinates).

        Every target pixel depends only on its global position, so crops agree with the
        whole image read the same way.

        Raises:
            SlideReadError: the pixels cannot be read (see :meth:`read_level`).
        """
        if res.scale == 1.0 and float(x).is_integer() and float(y).is_integer():
            return self.read_level(res.level, int(x), int(y), width, height)
        cols = plan_axis(x, width, res.scale)
        src_width = cols.src_stop - cols.src_start
        chunk = max(1, int(MAX_READ_PIXELS / (src_width * res.scale)))  # target rows per read
        if height > chunk:  # bound the source read; exact, as pixels depend on global position
            return np.concatenate(
                [
                    self.read_scaled(res, x, y + top, width, min(chunk, height - top))
                    for top in range(0, height, chunk)
                ]
            )
        rows = plan_axis(y, height, res.scale)
        src = self.read_level(
            res.level,
            cols.src_start,
            rows.src_start,
            cols.src_stop - cols.src_start,
            rows.src_stop - rows.src_start,
        )
        out = apply_axis(apply_axis(src, rows, axis=0), cols, axis=1)
        return to_uint8(out)

    def region(
        self,
        location: tuple[float, float],
        size: tuple[int, int],
        *,
        level: int | None = None,
        mpp: float | None = None,
    ) -> np.ndarray:
        """Read a region at a pyramid ``level`` or at a target ``mpp`` (give exactly one).

        Args:
            location: top-left ``(x, y)`` in level-0 pixels.
            size: ``(width, height)`` in pixels of the requested resolution.
            level: pyramid level.
            mpp: target microns per pixel.

        Returns:
            ``(height, width, 3)`` uint8 RGB.

        Example:
            >>> import numpy as np
            >>> slide = SlideReader.from_array(np.zeros((64, 64, 3), np.uint8), mpp=0.25)
            >>> slide.region((8, 8), (16, 16), level=0).shape
            (16, 16, 3)
        """
        if (level is None) == (mpp is None):
            raise SlideError(f"{self.name}: give exactly one of level= or mpp=")
        width, height = (int(s) for s in size)
        x0, y0 = location
        if level is not None:
            ds = self.levels[self._check_level(level)].downsample
            return self.read_level(level, round(x0 / ds), round(y0 / ds), width, height)
        res = self.resolution(float(mpp))
        per_target = self.levels[res.level].downsample * res.scale  # level-0 px per target px
        return self.read_scaled(res, x0 / per_target, y0 / per_target, width, height)

    def read_at_mpp(self, mpp: float) -> np.ndarray:
        """The whole slide at a target mpp (best level, resized).

        Example:
            >>> import numpy as np
            >>> SlideReader.from_array(np.zeros((64, 96, 3), np.uint8), mpp=1).read_at_mpp(2).shape
            (32, 48, 3)
        """
        res = self.resolution(mpp)
        w, h = res.dimensions
        return self.read_scaled(res, 0, 0, w, h)

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """The whole slide shrunk so that its longer side is at most ``max_size`` pixels.

        Does not need mpp metadata.
        """
        w0, h0 = self.dimensions
        factor = max(w0, h0) / max_size  # level-0 px per thumbnail px
        level = 0
        for i, lv in enumerate(self.levels):
            if lv.downsample <= max(factor, 1.0) * (1 + MPP_TOLERANCE):
                level = i
        lw, lh = self.levels[level].dimensions
        scale = max(factor / self.levels[level].downsample, 1.0)
        res = Resolution(level, scale, (max(1, round(lw / scale)), max(1, round(lh / scale))))
        if res.scale <= 1 + MPP_TOLERANCE:
            return self.read_level(level, 0, 0, lw, lh)
        return self.read_scaled(res, 0, 0, *res.dimensions)

    # ---------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Release the file (a no-op for in-memory images)."""
        return None

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, dimensions={self.dimensions}, "
            f"levels={len(self.levels)}, mpp={self._mpp})"
        )
