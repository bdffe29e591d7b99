"""Slide reader backends: OpenSlide, tiffslide, in-memory arrays, and the dispatch between them."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from gigastream.wsi.reader import READ_ERROR_FIX, Level, SlideError, SlideReader
from gigastream.wsi.resample import downsample2

logger = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff", ".svs", ".btf", ".tf8", ".tf2")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
BACKENDS = ("auto", "openslide", "tiffslide", "cucim", "image")
#: A TIFF resolution in inches coarser than this (um/px; 20 um/px = 1270 dpi) is a document
#: resolution - an image editor's 72, 96 or 300 dpi - not a scan's: it counts as no mpp.
DOCUMENT_MPP = 20.0


def _positive_float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA (not premultiplied, as OpenSlide/tiffslide return it) to RGB on white."""
    if rgba.shape[-1] == 3:
        return np.ascontiguousarray(rgba)
    rgb = np.ascontiguousarray(rgba[..., :3])
    alpha = rgba[..., 3]
    clear = alpha < 255
    if clear.any():  # only outside the slide or in its empty tiles: blend those pixels
        a = alpha[clear].astype(np.uint16)[:, None]
        rgb[clear] = (rgb[clear].astype(np.uint16) * a // 255 + (255 - a)).astype(np.uint8)
    return rgb


class ArrayReader(SlideReader):
    """An image held in memory, with a 2x pyramid down to 256 px."""

    backend = "array"

    def __init__(
        self,
        image: np.ndarray,
        mpp: float | None,
        objective_power: float | None = None,
        path: Path | None = None,
    ) -> None:
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[0] in (3, 4) and image.shape[-1] not in (3, 4):
            image = np.moveaxis(image, 0, -1)  # (C, H, W) -> (H, W, C)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        if image.ndim != 3 or image.shape[-1] not in (3, 4) or min(image.shape[:2]) < 1:
            raise SlideError(
                f"{self._name(path)}: expected an (H, W, 3) RGB image, got shape {image.shape}"
            )
        if image.dtype != np.uint8:
            raise SlideError(f"{self._name(path)}: expected uint8 pixels, got {image.dtype}")
        pyramid = [_composite_on_white(image)]
        while max(pyramid[-1].shape[:2]) > 256:
            pyramid.append(downsample2(pyramid[-1]))
        h0, w0 = pyramid[0].shape[:2]
        levels = tuple(
            Level((p.shape[1], p.shape[0]), (w0 / p.shape[1] + h0 / p.shape[0]) / 2)
            for p in pyramid
        )
        super().__init__(path, levels, mpp, objective_power)
        self._pyramid = pyramid

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        img = self._pyramid[level]
        out = np.full((height, width, 3), 255, np.uint8)
        h, w = img.shape[:2]
        xs, ys = max(x, 0), max(y, 0)
        xe, ye = min(x + width, w), min(y + height, h)
        if xe > xs and ye > ys:
            out[ys - y : ye - y, xs - x : xe - x] = img[ys:ye, xs:xe]
        return out


def _tile_size(props, prefix: str, level: int) -> tuple[int, int] | None:
    """``(width, height)`` of a level's file tiles from OpenSlide-style properties
    (``<prefix>.level[N].tile-width``); ``None`` where missing or 0 (a stripped image)."""
    try:
        width = int(props.get(f"{prefix}.level[{level}].tile-width", 0) or 0)
        height = int(props.get(f"{prefix}.level[{level}].tile-height", 0) or 0)
    except (TypeError, ValueError):
        return None
    return (width, height) if width > 0 and height > 0 else None


class _OpenSlideLike(SlideReader):
    """Shared code of the OpenSlide and tiffslide backends (they share an API)."""

    prefix = ""

    def __init__(self, path: Path, handle, mpp: float | None) -> None:
        props = handle.properties
        file_mpp = None
        mpp_x = _positive_float(props.get(f"{self.prefix}.mpp-x"))
        mpp_y = _positive_float(props.get(f"{self.prefix}.mpp-y"))
        if mpp_x and mpp_y:
            file_mpp = (mpp_x + mpp_y) / 2
        unit = str(props.get("tiff.ResolutionUnit", "")).upper()
        if file_mpp is not None and unit == "INCH" and file_mpp > DOCUMENT_MPP:
            logger.info(
                "%s: its resolution tags say %g dpi, an image's not a scan's: no mpp metadata",
                path,
                25400 / file_mpp,
            )
            file_mpp = None
        if mpp is None and file_mpp is None:
            logger.info("%s: no mpp metadata", path)
        levels = tuple(
            Level((int(w), int(h)), float(ds), _tile_size(props, self.prefix, k))
            for k, ((w, h), ds) in enumerate(
                zip(handle.level_dimensions, handle.level_downsamples, strict=True)
            )
        )
        objective = _positive_float(props.get(f"{self.prefix}.objective-power"))
        super().__init__(path, levels, mpp if mpp is not None else file_mpp, objective)
        self._handle = handle
        self._retired: list = []  # handles replaced after a failed read (OpenSlide)

    def _location0(self, level: int, x: int, y: int) -> tuple[int, int]:
        # level-0 coordinates whose division by the level's downsample lands nearest (x, y);
        # exact for power-of-two pyramids (ours), within 0.5 / downsample px for scanners'
        ds = self.levels[level].downsample
        return round(x * ds), round(y * ds)

    def close(self) -> None:
        self._handle.close()


class OpenSlideReader(_OpenSlideLike):
    """A slide read with OpenSlide."""

    backend = "openslide"
    prefix = "openslide"

    def __init__(self, path: Path, mpp: float | None = None) -> None:
        import openslide

        try:
            handle = openslide.OpenSlide(str(path))
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideError(f"{path}: OpenSlide cannot open it: {exc}") from exc
        super().__init__(path, handle, mpp)

    #: Level pixels per aligned block read on levels whose downsample is not an integer.
    block_size = 512

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        return read_on_block_grid(self, level, x, y, width, height)

    def _read_direct(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        try:
            region = self._handle.read_region(self._location0(level, x, y), level, (width, height))
        except Exception:
            self._reopen()
            raise  # read_level turns it into a SlideReadError naming the region
        return _composite_on_white(np.asarray(region))

    def _reopen(self) -> None:
        """A fresh handle: after a failed read, OpenSlide fails every later read too."""
        import openslide

        try:
            handle = openslide.OpenSlide(str(self.path))
        except Exception:  # the file went away: keep the failed handle, reads keep failing
            logger.debug("%s: cannot reopen after a failed read", self.path, exc_info=True)
            return
        # other threads may still be reading the failed handle (read-ahead, bands): closing
        # it under them aborts the process, so it is closed with the reader
        self._retired.append(self._handle)
        self._handle = handle

    def close(self) -> None:
        for handle in self._retired:
            handle.close()
        self._retired.clear()
        super().close()


def white_canvas(
    level_size: tuple[int, int], x: int, y: int, width: int, height: int
) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """A white ``(height, width, 3)`` region and the part of it inside a level of
    ``level_size`` (``(xs, ys, xe, ye)`` in level pixels; ``None``: none of it), for
    backends that read only inside the level and pad the rest with white."""
    w, h = level_size
    out = np.full((height, width, 3), 255, np.uint8)
    xs, ys = max(x, 0), max(y, 0)
    xe, ye = min(x + width, w), min(y + height, h)
    return out, ((xs, ys, xe, ye) if xe > xs and ye > ys else None)


def read_on_block_grid(
    reader: SlideReader, level: int, x: int, y: int, width: int, height: int
) -> np.ndarray:
    """A level region of a reader that reads at level-0 locations (``reader._read_direct``,
    ``reader.block_size``: OpenSlide, cuCIM), exactly on every level.

    Such a backend resamples the level at location / downsample, a sub-pixel offset that
    depends on the location when the downsample is not an integer (scanners: 2.0005,
    4.001, ...; a pyramid's last level: 7.99). Reading whole blocks on a fixed grid gives
    every level pixel from the same call, whatever the window, so crops equal the same
    window of a whole read. Integer downsamples are read directly."""
    if float(reader.levels[level].downsample).is_integer():
        return reader._read_direct(level, x, y, width, height)
    b = reader.block_size
    out = np.empty((height, width, 3), np.uint8)
    for by in range(y // b * b, y + height, b):
        for bx in range(x // b * b, x + width, b):
            block = reader._read_direct(level, bx, by, b, b)
            xs, ys = max(x, bx), max(y, by)
            xe, ye = min(x + width, bx + b), min(y + height, by + b)
            out[ys - y : ye - y, xs - x : xe - x] = block[ys - by : ye - by, xs - bx : xe - bx]
    return out


class TiffSlideReader(_OpenSlideLike):
    """A TIFF/OME-TIFF slide read with tiffslide."""

    backend = "tiffslide"
    prefix = "tiffslide"

    def __init__(self, path: Path, mpp: float | None = None) -> None:
        import tiffslide

        try:
            handle = tiffslide.TiffSlide(str(path))
            handle.level_dimensions  # noqa: B018  (parses the pyramid now, not at first read)
        except Exception as exc:  # tiffslide/tifffile raise many types
            raise SlideError(f"{path}: tiffslide cannot open it: {exc}") from exc
        super().__init__(path, handle, mpp)
        if self._mpp is None:
            self._mpp = ome_mpp(path)

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        out, inside = white_canvas(self.levels[level].dimensions, x, y, width, height)
        if inside is None:
            return out
        xs, ys, xe, ye = inside
        pixels = self._level_array(level)
        if pixels is not None:  # exact level pixels, whatever the level's downsample
            region = pixels[ys:ye, xs:xe]
        else:  # level-0 location: off by up to a pixel when the downsample is not exact
            region = self._handle.read_region(
                self._location0(level, xs, ys), level, (xe - xs, ye - ys), as_array=True
            )
        out[ys - y : ye - y, xs - x : xe - x] = _composite_on_white(np.asarray(region))[..., :3]
        return out

    def _level_array(self, level: int):
        """The level's ``(H, W, 3|4)`` uint8 zarr array, or None if it is laid out otherwise.

        tiffslide's ``read_region`` takes a level-0 location and floors ``location /
        downsample``, which reads scanners' levels (downsample 2.0005, 4.001, ...) one
        pixel off; the zarr array is indexed in level pixels directly.
        """
        try:
            array = self._handle.zarr_group[str(level)]
        except Exception:  # no zarr view of this file: fall back to read_region
            return None
        w, h = self.levels[level].dimensions
        if array.ndim == 3 and array.shape[:2] == (h, w) and array.shape[2] in (3, 4):
            if array.dtype == np.uint8:
                return array
        return None


_MICRONS_PER_UNIT = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def ome_mpp(path: Path) -> float | None:
    """Microns per pixel from an OME-TIFF's ``Pixels`` ``PhysicalSizeX/Y``, if stated."""
    import xml.etree.ElementTree as ET

    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            xml = tif.ome_metadata if tif.is_ome else None
        if not xml:
            return None
        pixels = next(el for el in ET.fromstring(xml).iter() if el.tag.endswith("}Pixels"))
    except Exception:  # no OME-XML or no Pixels element: mpp stays unknown
        return None
    sizes = []
    for axis in ("X", "Y"):
        size = _positive_float(pixels.get(f"PhysicalSize{axis}"))
        factor = _MICRONS_PER_UNIT.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        if size is None or factor is None:
            return None
        sizes.append(size * factor)
    return sum(sizes) / 2


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF


def has_tiff_header(path: Path) -> bool:
    """Whether the file starts like a (Big)TIFF, whatever its name."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def check_tiff_complete(path: Path, strict: bool = False) -> None:
    """Raise :class:`SlideError` if a TIFF's tiles or strips reach past the end of the file.

    Catches truncated downloads at open time instead of at the first read of a missing
    tile. Files that tifffile cannot parse are an error when ``strict`` or when named like
    a TIFF; otherwise they are left to the backends to judge.
    """
    import tifffile

    size = path.stat().st_size
    problems = _LogCollector()
    tiff_logger = logging.getLogger("tifffile")
    tiff_logger.addHandler(problems)
    try:
        with tifffile.TiffFile(path) as tif:
            for index, page in enumerate(tif.pages):
                ends = [
                    o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False) if n
                ]
                if ends and max(ends) > size:
                    raise SlideError(
                        f"{path}: file is truncated: page {index} needs {max(ends)} bytes, "
                        f"the file has {size}; {READ_ERROR_FIX}"
                    )
        bad_ifd = [m for m in problems.messages if "invalid page offset" in m]
        if bad_ifd:
            raise SlideError(
                f"{path}: file is truncated or corrupt: {bad_ifd[0]}; {READ_ERROR_FIX}"
            )
    except SlideError:
        raise
    except Exception as exc:  # not a TIFF tifffile understands
        if strict or path.suffix.lower() in (".tif", ".tiff", ".svs", ".btf"):
            raise SlideError(
                f"{path}: not a readable TIFF (truncated or corrupt?): {exc}; {READ_ERROR_FIX}"
            ) from exc
        logger.debug("%s: tifffile cannot parse it (%s); leaving it to the backends", path, exc)
    finally:
        tiff_logger.removeHandler(problems)


class _LogCollector(logging.Handler):
    """Keeps the messages of warnings and errors logged while it is attached."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _read_image(path: Path, mpp: float | None) -> ArrayReader:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            image = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise SlideError(f"{path}: cannot read the image: {exc}") from exc
    return ArrayReader(image, mpp=mpp, path=path)


def open_slide(path: Path, mpp: float | None = None, backend: str = "auto") -> SlideReader:
    """Open ``path`` with ``backend`` (see :meth:`SlideReader.open`)."""
    if backend not in BACKENDS:
        raise SlideError(f"{path}: unknown backend {backend!r}; choose one of {BACKENDS}")
    if not path.exists():
        raise SlideError(f"{path}: file not found")
    if path.is_dir():
        raise SlideError(f"{path}: is a directory, not a slide file")
    if path.stat().st_size == 0:
        raise SlideError(f"{path}: file is empty")
    name = path.name.lower()
    if backend == "image" or (backend == "auto" and name.endswith(IMAGE_SUFFIXES)):
        return _read_image(path, mpp)
    tiff_header = has_tiff_header(path)
    is_tiff = name.endswith(TIFF_SUFFIXES) or name.endswith(".ndpi") or tiff_header
    if is_tiff:
        check_tiff_complete(path, strict=tiff_header)
    if backend == "tiffslide":
        return TiffSlideReader(path, mpp)
    if backend == "openslide":
        return OpenSlideReader(path, mpp)
    if backend == "cucim":
        from gigastream.wsi.cucim_backend import CuCIMReader

        return CuCIMReader(path, mpp)
    if name.endswith((".ome.tif", ".ome.tiff")):
        return TiffSlideReader(path, mpp)  # OME-XML (mpp, channels) is read by tiffslide only
    import openslide

    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except (openslide.OpenSlideError, OSError) as exc:
        raise SlideError(f"{path}: cannot inspect the file: {exc}") from exc
    if vendor is not None:
        try:
            return OpenSlideReader(path, mpp)
        except SlideError:
            if vendor != "generic-tiff":
                raise
            # a TIFF OpenSlide names but cannot decode (JPEG 2000 tiles: "Unsupported TIFF
            # compression: 34712"): tiffslide reads those
            logger.debug("%s: OpenSlide cannot open this generic TIFF; using tiffslide", path)
            return TiffSlideReader(path, mpp)
    if is_tiff:
        logger.debug("%s: OpenSlide does not recognise it; using tiffslide", path)
        return TiffSlideReader(path, mpp)
    raise SlideError(
        f"{path}: unsupported format (OpenSlide does not recognise it and it is not a TIFF "
        f"or an image: {', '.join(TIFF_SUFFIXES + IMAGE_SUFFIXES)})"
    )
