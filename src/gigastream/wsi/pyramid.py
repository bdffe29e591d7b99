"""Streaming writer of pyramidal, tiled, JPEG- or JPEG 2000-compressed TIFF slides.

The file holds one TIFF page per level (level 0 first, lower levels marked as reduced
resolution), each tiled and compressed, with ``XResolution``/``YResolution`` in pixels
per centimetre, so OpenSlide (generic-tiff) and tiffslide both see every level and the
right microns per pixel. Pages written by tifffile as SubIFDs would show as one level in
OpenSlide, hence one page per level.

Compression (:attr:`PyramidConfig.compression`): ``"jpeg"`` (the default; tag 7, RGB
encoded as YCbCr with 2x2 chroma subsampling, as scanners write it) or ``"jpeg2000"``
(tag 34712, each tile a J2K codestream from ``imagecodecs.jpeg2k_encode`` at a target
PSNR). tiffslide reads both (tifffile decodes JPEG 2000 with imagecodecs). OpenSlide
(4.0.1, checked) reads only the JPEG files: it decodes JPEG 2000 in Aperio SVS files
(tags 33003/33005) only, and its generic-tiff driver refuses the file when opening it
("Unsupported TIFF compression: 34712"), although ``OpenSlide.detect_format`` names it
``generic-tiff`` - so ``SlideReader.open(path)`` (``backend="auto"``) fails on it too;
open JPEG 2000 files with ``SlideReader.open(path, backend="tiffslide")``.
JPEG 2000 decodes about 10x slower than JPEG on CPU (H&E, 768 px tiles, one thread:
~10 vs ~115 MP/s), at about the same size and error for ``jpeg2000_psnr=40`` as JPEG
quality 90 (mean absolute error 2.1 vs 2.7 grey levels).

The writer never holds a whole level in memory: level 0 arrives as horizontal strips
from an iterator and its tiles go to the file as they are encoded; each tile row is
halved into the next level on the fly, whose encoded tiles are spooled to a temporary
file next to the output until its page is written. Memory is a few tile rows per level,
so 65536 x 65536 slides are fine.

Example:
    >>> import numpy as np
    >>> strips = (np.full((256, 1024, 3), 200, np.uint8) for _ in range(4))
    >>> write_pyramid("slide.tif", strips, width=1024, height=1024, mpp=0.5)  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from gigastream.wsi.resample import downsample2

logger = logging.getLogger(__name__)


@dataclass
class PyramidConfig:
    """How a pyramid TIFF is written.

    Attributes:
        tile_size: tile edge in pixels (a multiple of 16, JPEG with 2x2 chroma subsampling).
        quality: JPEG quality (1-100); used by ``compression="jpeg"``.
        background: value of the pixels that pad partial edge tiles.
        compression: ``"jpeg"`` or ``"jpeg2000"`` (see the module docstring: OpenSlide
            cannot read the JPEG 2000 files, tiffslide can).
        jpeg2000_psnr: target PSNR in dB of each JPEG 2000 tile (higher: larger files,
            smaller error); used by ``compression="jpeg2000"``.
    """

    tile_size: int = 256  # 256 is what most viewers and scanners use
    quality: int = 90  # visually lossless for H&E; ~10x smaller than raw
    background: int = 255  # white, like an empty glass slide
    compression: str = "jpeg"
    jpeg2000_psnr: float = 40.0  # about JPEG quality 90's size and error on H&E


#: The values of :attr:`PyramidConfig.compression`, and tifffile's name of each.
COMPRESSIONS = {"jpeg": "jpeg", "jpeg2000": "jpeg2000"}


def level_dimensions(width: int, height: int, tile_size: int) -> list[tuple[int, int]]:
    """``(width, height)`` of every level: halved until the level fits in one tile.

    Example:
        >>> level_dimensions(1000, 600, 256)
        [(1000, 600), (500, 300), (250, 150)]
    """
    dims = [(width, height)]
    while max(dims[-1]) > tile_size:
        w, h = dims[-1]
        dims.append((math.ceil(w / 2), math.ceil(h / 2)))
    return dims


def _tile_count(width: int, height: int, tile_size: int) -> int:
    return math.ceil(width / tile_size) * math.ceil(height / tile_size)


class _RowBuffer:
    """Collects rows of one level and hands them out a full tile row at a time."""

    def __init__(self, width: int, tile_size: int) -> None:
        self.width = width
        self.tile_size = tile_size
        self.parts: list[np.ndarray] = []
        self.rows = 0

    def push(self, rows: np.ndarray) -> Iterator[np.ndarray]:
        self.parts.append(rows)
        self.rows += rows.shape[0]
        if self.rows < self.tile_size:
            return
        block = np.concatenate(self.parts, axis=0) if len(self.parts) > 1 else self.parts[0]
        full = (block.shape[0] // self.tile_size) * self.tile_size
        for y in range(0, full, self.tile_size):
            yield block[y : y + self.tile_size]
        rest = block[full:]
        self.parts = [rest] if rest.shape[0] else []
        self.rows = rest.shape[0]

    def flush(self) -> np.ndarray | None:
        if not self.rows:
            return None
        block = np.concatenate(self.parts, axis=0)
        self.parts, self.rows = [], 0
        return block


class _Spool:
    """Encoded tiles of one level, kept in a temporary file until its page is written."""

    def __init__(self, directory: str, level: int) -> None:
        self.path = os.path.join(directory, f"level{level}.spool")
        self.file: BinaryIO = open(self.path, "wb")  # noqa: SIM115 (closed in tiles())

    def write(self, tiles: Iterable[bytes]) -> None:
        for tile in tiles:
            self.file.write(struct.pack("<Q", len(tile)))
            self.file.write(tile)

    def tiles(self) -> Iterator[bytes]:
        self.file.close()
        with open(self.path, "rb") as fh:
            while header := fh.read(8):
                (length,) = struct.unpack("<Q", header)
                yield fh.read(length)
        os.remove(self.path)


class _Encoder:
    def __init__(self, config: PyramidConfig) -> None:
        import imagecodecs

        self.config = config
        self._jpeg8_encode = imagecodecs.jpeg8_encode
        self._jpeg2k_encode = imagecodecs.jpeg2k_encode

    def _encode(self, tile: np.ndarray) -> bytes:
        """One ``(tile, tile, 3)`` uint8 tile as the file's compressed bytes."""
        if self.config.compression == "jpeg2000":
            # a bare J2K codestream (not a JP2 file), as tifffile writes tag 34712
            return self._jpeg2k_encode(tile, level=self.config.jpeg2000_psnr, codecformat="j2k")
        # as tifffile encodes RGB JPEG tiles: YCbCr with 2x2 chroma subsampling
        return self._jpeg8_encode(
            tile,
            level=self.config.quality,
            colorspace="RGB",
            outcolorspace="YCBCR",
            subsampling=(2, 2),
        )

    def tile_row(self, rows: np.ndarray) -> Iterator[bytes]:
        """Encode one tile row (``(<= tile, W, 3)`` uint8) as tiles, left to right."""
        t = self.config.tile_size
        height, width = rows.shape[:2]
        for x in range(0, width, t):
            tile = rows[:, x : x + t]
            if tile.shape[:2] != (t, t):
                padded = np.full((t, t, 3), self.config.background, np.uint8)
                padded[:height, : tile.shape[1]] = tile
                tile = padded
            yield self._encode(np.ascontiguousarray(tile))


def write_pyramid(
    path: str | Path,
    strips: Iterable[np.ndarray],
    width: int,
    height: int,
    mpp: float,
    config: PyramidConfig | None = None,
    description: str | None = None,
) -> list[tuple[int, int]]:
    """Write a pyramidal tiled JPEG (or JPEG 2000) TIFF from level-0 strips, streaming.

    Args:
        path: output file (written to ``path + ".partial"`` and renamed when complete).
        strips: ``(rows, width, 3)`` uint8 RGB strips of level 0, top to bottom, any
            number of rows each, ``height`` rows in total.
        width: level-0 width in pixels.
        height: level-0 height in pixels.
        mpp: microns per level-0 pixel (stored as resolution tags of every level).
        config: tiling and compression.
        description: ImageDescription of the level-0 page.

    Returns:
        ``(width, height)`` of every level written.

    Raises:
        ValueError: strips of the wrong width or total height, a bad tile size or an
            unknown compression.
    """
    import tifffile

    config = config or PyramidConfig()
    tile = config.tile_size
    if tile <= 0 or tile % 16:
        raise ValueError(f"tile_size must be a positive multiple of 16, got {tile}")
    if config.compression not in COMPRESSIONS:
        raise ValueError(
            f"compression must be one of {', '.join(COMPRESSIONS)}, got {config.compression!r}"
        )
    path = Path(path)
    dims = level_dimensions(width, height, tile)
    encoder = _Encoder(config)
    buffers = [_RowBuffer(w, tile) for w, _ in dims]
    partial = path.with_name(path.name + ".partial")

    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".spool-") as spool_dir:
        spools = {k: _Spool(spool_dir, k) for k in range(1, len(dims))}

        def cascade(level: int, rows: np.ndarray) -> None:
            if level >= len(dims):
                return
            for tile_row in buffers[level].push(rows):
                spools[level].write(encoder.tile_row(tile_row))
                cascade(level + 1, downsample2(tile_row))

        def level0_tiles() -> Iterator[bytes]:
            seen = 0
            for strip in strips:
                if strip.ndim != 3 or strip.shape[1:] != (width, 3) or strip.dtype != np.uint8:
                    raise ValueError(
                        f"strips must be (rows, {width}, 3) uint8, got {strip.shape} {strip.dtype}"
                    )
                seen += strip.shape[0]
                if seen > height:
                    raise ValueError(f"strips hold more than height={height} rows")
                for tile_row in buffers[0].push(strip):
                    yield from encoder.tile_row(tile_row)
                    cascade(1, downsample2(tile_row))
            if seen != height:
                raise ValueError(f"strips hold {seen} rows, expected height={height}")
            for level in range(len(dims)):
                rest = buffers[level].flush()
                if rest is None:
                    continue
                if level == 0:
                    yield from encoder.tile_row(rest)
                else:
                    spools[level].write(encoder.tile_row(rest))
                cascade(level + 1, downsample2(rest))

        try:
            with tifffile.TiffWriter(partial, bigtiff=True) as tw:
                first = level0_tiles()
                for level, (w, h) in enumerate(dims):
                    per_cm = (1e4 / (mpp * width / w), 1e4 / (mpp * height / h))
                    tw.write(
                        # islice: tifffile closes what it was given when done, which
                        # must not close our generator before it flushes the lower levels
                        itertools.islice(first, _tile_count(w, h, tile))
                        if level == 0
                        else spools[level].tiles(),
                        shape=(h, w, 3),
                        dtype=np.uint8,
                        tile=(tile, tile),
                        compression=COMPRESSIONS[config.compression],
                        photometric="rgb",
                        subfiletype=0 if level == 0 else 1,
                        resolution=per_cm,
                        resolutionunit="CENTIMETER",
                        description=description if level == 0 else None,
                        metadata=None,
                        software="gigastream",
                    )
                    if level == 0:
                        # tifffile stops after the last tile; run the generator to its end,
                        # which checks the height and flushes the lower levels' last rows
                        for _ in first:
                            raise ValueError("strips hold more tiles than the level-0 page")
            os.replace(partial, path)
        finally:
            for spool in spools.values():
                spool.file.close()
            if partial.exists():
                partial.unlink()
    logger.info("wrote %s: %d levels, level 0 %dx%d", path, len(dims), width, height)
    return dims
