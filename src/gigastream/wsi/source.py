"""A slide as a lazy streaming input: pixels are read only when a tile needs them.

:class:`SlideSource` implements :class:`gigastream.streaming.recompute.InputSource`: it
describes the whole slide at a target mpp as a ``(1, 3, H, W)`` float tensor that is
never materialised; ``read(index)`` returns ``full_input[index]`` by reading that region
from the slide (resized on the global grid of :mod:`gigastream.wsi.resample`, so tiles
agree exactly with the whole image). With a tissue mask, the virtual image is the slide
with every pixel outside tissue set to the background colour, and regions without tissue
are returned without touching the file. Memory is one tile's pixels, whatever the slide
size.

:func:`check_input_size` refuses, before any pixel is read, a slide whose input at the
target mpp is smaller than one pixel or larger than the machine can hold (a wrong mpp in
the manifest or the slide's metadata, or a target mpp far finer than the slide):
resampling such an input would need terabytes. :func:`check_upsample` refuses a slide
scanned coarser than the target mpp by more than a given factor (``data.max_upsample``).

Example:
    >>> import numpy as np
    >>> from gigastream import SlideReader
    >>> slide = SlideReader.from_array(np.full((1024, 2048, 3), 200, np.uint8), mpp=0.5)
    >>> source = SlideSource(slide, mpp=1.0, normalize=IMAGENET)
    >>> source.shape
    torch.Size([1, 3, 512, 1024])
    >>> source.read((slice(None), slice(None), slice(0, 64), slice(100, 164))).shape
    torch.Size([1, 3, 64, 64])

    Streamed through a trunk without holding the slide:
    ``StreamingModule(trunk, tile_size=2048)(source)``.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gigastream.read_order import current_ticket
from gigastream.wsi.bands import band_threads, read_in_bands, region_bands
from gigastream.wsi.reader import SlideError, SlideReader, SlideReadError
from gigastream.wsi.tissue import TissueMask

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(x / 255 - mean) / std`` of RGB pixels."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


#: The ImageNet statistics torchvision's pretrained models expect.
IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

#: Bytes per pixel of an input held as 8-bit RGB: what :func:`check_input_size` counts.
RGB_BYTES = 3


class InputSizeError(SlideError):
    """A slide's input at the target mpp is under one pixel or over the size limit (a wrong
    mpp?); the message names the slide, its mpp, the planned size and the fix."""


def machine_memory() -> int | None:
    """This machine's memory in bytes (physical, or the cgroup's limit when lower), or
    ``None`` where it cannot be known."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        total = None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and (total is None or int(limit) < total):
            total = int(limit)
        break
    return total


def default_max_input_pixels() -> int | None:
    """The input-size limit when none is configured: as many 8-bit RGB pixels as this
    machine's memory holds (``None``: unknown, no limit)."""
    memory = machine_memory()
    return None if memory is None else memory // RGB_BYTES


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"  # pragma: no cover


def check_input_size(
    reader: SlideReader, mpp: float, max_pixels: int | None = None, name: str | None = None
) -> tuple[int, int]:
    """The ``(width, height)`` of a slide's input at ``mpp``, after checking that it is
    at least one pixel and at most ``max_pixels`` pixels; nothing is read.

    Args:
        reader: the slide.
        mpp: the target microns per pixel (the run's).
        max_pixels: the most input pixels allowed (``None``:
            :func:`default_max_input_pixels`, what this machine's memory holds as 8-bit RGB).
        name: how the message names the slide (default: its file).

    Raises:
        InputSizeError: the input would be under one pixel or over ``max_pixels``; the
            message names the slide, its mpp, the planned size and the fix.

    Example:
        >>> import numpy as np
        >>> slide = SlideReader.from_array(np.zeros((512, 512, 3), np.uint8), mpp=0.5)
        >>> check_input_size(slide, 1.0)
        (256, 256)
    """
    name = name or reader.name
    slide_mpp = reader.require_mpp()
    width0, height0 = reader.dimensions
    fix = "check the mpp column of the manifest (or the slide's metadata) and the run's --mpp"
    exact = (width0 * slide_mpp / mpp, height0 * slide_mpp / mpp)  # unrounded target pixels
    if min(exact) < 1:
        raise InputSizeError(
            f"{name}: at the run's {mpp:g} um/px its input would be {exact[0]:.3g} x "
            f"{exact[1]:.3g} px, under one pixel: at its {slide_mpp:g} um/px the slide is only "
            f"{width0 * slide_mpp:.3g} x {height0 * slide_mpp:.3g} um; {fix}"
        )
    width, height = reader.resolution(mpp).dimensions
    limit = default_max_input_pixels() if max_pixels is None else max_pixels
    pixels = width * height
    if limit is not None and pixels > limit:
        why = (
            "data.max_input_pixels"
            if max_pixels is not None
            else f"what this machine's {_bytes(limit * RGB_BYTES)} of memory holds as 8-bit RGB; "
            "data.max_input_pixels sets it"
        )
        raise InputSizeError(
            f"{name}: at the run's {mpp:g} um/px its input would be {width:,} x {height:,} px "
            f"({pixels:.3g} pixels, {_bytes(pixels * RGB_BYTES)} as 8-bit RGB) from its "
            f"{slide_mpp:g} um/px, over the limit of {limit:,} pixels ({why}); {fix}"
        )
    return width, height


def upsample_factor(reader: SlideReader, mpp: float) -> float:
    """How much a slide is enlarged to be read at ``mpp``: its level-0 mpp / ``mpp`` when
    that is more than 1 (beyond :data:`~gigastream.wsi.reader.MPP_TOLERANCE`), else 1.0.

    Example:
        >>> import numpy as np
        >>> slide = SlideReader.from_array(np.zeros((64, 64, 3), np.uint8), mpp=2.0)
        >>> upsample_factor(slide, 0.5), upsample_factor(slide, 4.0)
        (4.0, 1.0)
    """
    scale = reader.resolution(mpp).scale  # level pixels per target pixel; < 1: enlarged
    return 1.0 / scale if scale < 1 else 1.0


def check_upsample(
    reader: SlideReader, mpp: float, max_upsample: float, name: str | None = None
) -> float:
    """The :func:`upsample_factor` of a slide at ``mpp``, checked to be at most
    ``max_upsample``; nothing is read.

    Raises:
        InputSizeError: the slide is scanned so much coarser than ``mpp`` that it would be
            upsampled more than ``max_upsample``; the message names the slide, its mpp, the
            target mpp, the factor and the setting.

    Example:
        >>> import numpy as np
        >>> slide = SlideReader.from_array(np.zeros((64, 64, 3), np.uint8), mpp=2.0)
        >>> check_upsample(slide, 1.0, max_upsample=2.0)
        2.0
    """
    factor = upsample_factor(reader, mpp)
    if factor > max_upsample:
        slide_mpp = reader.require_mpp()
        raise InputSizeError(
            f"{name or reader.name}: scanned at {slide_mpp:g} um/px, coarser than the run's "
            f"{mpp:g} um/px: it would be upsampled {factor:.3g}x, more than data.max_upsample "
            f"{max_upsample:g} allows (an upsampled slide has no detail at the run's "
            f"resolution); check its mpp (the slide's metadata, the manifest's mpp column, "
            f"--slide-mpp), train at a coarser --mpp, or set data.max_upsample: {factor:.3g} "
            "to use it anyway"
        )
    return factor


@dataclass
class RegionPixels:
    """One region as :meth:`SlideSource.read_compact` decoded it, before conversion.

    Attributes:
        shape: ``(b, c, h, w)`` of the tensor :meth:`SlideSource.expand` makes of it.
        channels: the channels asked for.
        rgb: ``(h, w, 3)`` uint8 pixels; ``None`` for a region without tissue (background).
        tissue: ``(h, w)`` bool, the positions on tissue, where the region is only partly
            tissue; ``None``: all of it.
        empty: a region of zero size.
    """

    shape: tuple[int, int, int, int]
    channels: slice
    rgb: Tensor | None
    tissue: Tensor | None
    empty: bool = False

    @property
    def nbytes(self) -> int:
        """Bytes held (the uint8 pixels and the mask)."""
        return sum(t.numel() * t.element_size() for t in (self.rgb, self.tissue) if t is not None)


class SlideSource:
    """A slide at a target mpp as a lazily read ``(1, 3, H, W)`` input.

    Args:
        reader: the slide.
        mpp: target microns per pixel.
        tissue_mask: if given, pixels outside tissue are ``background`` and tissue-free
            regions are not read.
        normalize: per-channel normalisation; ``None`` gives pixels in [0, 1].
        dtype: floating dtype of the tensors returned.
        device: device of the tensors returned.
        background: RGB colour of non-tissue pixels (0-255).
        read_workers: threads that streaming may read regions on at once, ahead of the
            compute (:func:`~gigastream.streaming.input.read_workers`). OpenSlide and cuCIM
            read one handle from many threads in parallel; a backend whose reads hold the
            GIL (tiffslide) decodes in ``read_workers`` processes instead
            (:mod:`gigastream.wsi.read_pool`).
        bands: with ``read_workers > 1``, cut a region of a megapixel or more into bands on
            the file's tile rows, decoded by all readers at once (:mod:`gigastream.wsi.bands`);
            ``False``: each region by one reader (for comparison).

    Attributes:
        shape: ``(1, 3, H, W)`` of the whole virtual image.
        reads: number of regions read from the file so far.
        skipped: number of regions answered from the mask without reading.
        band_reads: bands decoded by several readers at once (threads, or read processes)
            for those regions (:mod:`gigastream.wsi.bands`; a region of at least a megapixel with
            ``read_workers > 1`` is cut into bands on the file's tile rows).
    """

    #: backends whose one handle may be read from several threads at once (OpenSlide
    #: parallelises concurrent ``read_region`` calls since 3.3.1, cuCIM's reader is
    #: thread-safe; arrays are read-only)
    SHARED_HANDLE_BACKENDS = ("openslide", "cucim", "array")

    def __init__(
        self,
        reader: SlideReader,
        mpp: float,
        tissue_mask: TissueMask | None = None,
        normalize: Normalization | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        background: tuple[int, int, int] = (255, 255, 255),
        read_workers: int = 1,
        bands: bool = True,
    ) -> None:
        if not dtype.is_floating_point:
            raise SlideError(
                f"{reader.name}: SlideSource dtype must be floating point, got {dtype}"
            )
        self.reader = reader
        self.resolution = reader.resolution(mpp)
        self.mpp = self.resolution.mpp  # exact
        width, height = self.resolution.dimensions
        self.shape = torch.Size((1, 3, height, width))
        self.dtype = dtype
        self.device = torch.device(device)
        # decoding runs on the CPU whatever the device: streaming reads tiles ahead on a
        # background thread (gigastream.streaming.recompute)
        self.read_ahead = True
        self.tissue_mask = tissue_mask
        mean = torch.tensor(normalize.mean if normalize else (0.0, 0.0, 0.0), dtype=torch.float64)
        std = torch.tensor(normalize.std if normalize else (1.0, 1.0, 1.0), dtype=torch.float64)
        # x -> x * scale + shift, from uint8: (x / 255 - mean) / std
        self._scale = (1.0 / (255.0 * std)).to(dtype).view(3, 1, 1)
        self._shift = (-mean / std).to(dtype).view(3, 1, 1)
        background_pixels = torch.tensor(background, dtype=torch.float64).to(dtype).view(3, 1, 1)
        # the same float operations as on read pixels, so blank regions match exactly
        self._background_normalized = background_pixels * self._scale + self._shift
        self.reads = 0
        self.skipped = 0
        self.band_reads = 0  # bands decoded in parallel (regions cut by :meth:`bands`)
        if read_workers < 1:
            raise SlideError(f"{reader.name}: read_workers must be >= 1, got {read_workers}")
        self.read_workers = int(read_workers)
        self.use_bands = bool(bands)
        self._lock = threading.Lock()  # the counters, updated by the reading threads
        #: regions are decoded in read processes (several readers, a backend holding the GIL)
        self.reads_in_processes = (
            self.read_workers > 1
            and reader.path is not None
            and reader.backend not in self.SHARED_HANDLE_BACKENDS
        )

    def _bounds(self, index: tuple[slice, ...]) -> list[tuple[int, int]]:
        if len(index) > 4:
            raise IndexError(f"index has {len(index)} entries for a 4-d input")
        index = tuple(index) + (slice(None),) * (4 - len(index))
        bounds = []
        for dim, (s, size) in enumerate(zip(index, self.shape, strict=True)):
            if not isinstance(s, slice):
                raise IndexError(f"SlideSource supports slices only, got {s!r} for dim {dim}")
            start, stop, step = s.indices(size)
            if step != 1:
                raise IndexError(f"SlideSource supports step 1 only, got {step} for dim {dim}")
            bounds.append((start, max(start, stop)))
        return bounds

    def _tissue(self, x0: int, y0: int, width: int, height: int) -> np.ndarray | None:
        """``(height, width)`` bool tissue of a region, or None if the region has none."""
        mask = self.tissue_mask
        assert mask is not None
        um = self.mpp
        if not mask.any_in(x0 * um, y0 * um, (x0 + width) * um, (y0 + height) * um):
            return None
        h, w = mask.mask.shape
        # nearest mask pixel of every target pixel centre, on the global grid
        rows = np.minimum(
            ((np.arange(y0, y0 + height) + 0.5) * um / mask.mpp).astype(np.int64), h - 1
        )
        cols = np.minimum(
            ((np.arange(x0, x0 + width) + 0.5) * um / mask.mpp).astype(np.int64), w - 1
        )
        return mask.mask[rows[:, None], cols[None, :]]

    def bands(self, y0: int, width: int, height: int) -> list[tuple[int, int]]:
        """``(top, rows)`` of the bands a region is decoded in by :attr:`read_workers`
        readers at once (:func:`~gigastream.wsi.bands.region_bands`: edges on the file's
        tile rows; one band with one reader or for a small region)."""
        if self.read_workers <= 1 or not self.use_bands:
            return [(y0, height)]
        tile = self.reader.levels[self.resolution.level].tile_size
        rows = tile[1] / self.resolution.scale if tile else None
        return region_bands(y0, height, width, self.read_workers, rows)

    def _read_rgb(self, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """Target-pixel region of the slide, in bands by several readers where
        :meth:`bands` cuts it; any failure of the reader is a SlideError."""
        bands = self.bands(y0, width, height)
        if len(bands) > 1:
            with self._lock:
                self.band_reads += len(bands)
        try:
            if self.reads_in_processes:
                from gigastream.wsi.read_pool import read_bands_in_pool

                return read_bands_in_pool(
                    self.reader, self.read_workers, self.resolution, x0, width, bands
                )
            if len(bands) > 1:
                pool = band_threads(self.read_workers)
                ticket = current_ticket()  # the stream's order of this region
                return read_in_bands(
                    bands,
                    width,
                    lambda top, rows: pool.submit(
                        ticket, self.reader.read_scaled, self.resolution, x0, top, width, rows
                    ),
                )
            return self.reader.read_scaled(self.resolution, x0, y0, width, height)
        except (SlideError, MemoryError):
            raise  # readers' own errors already name the file, region and fix
        except Exception as exc:  # a reader that lets a backend error through
            raise SlideReadError(
                self.reader.path,
                self.resolution.level,
                (x0, y0, width, height),
                exc,
                units=f"pixels at {self.mpp:.4g} mpp",
            ) from exc

    def read(self, index: tuple[slice, ...]) -> Tensor:
        """``full_input[index]`` for a tuple of slices over ``(B, C, H, W)``.

        Returns:
            ``(b, c, h, w)`` tensor of :attr:`dtype` on :attr:`device`.

        Raises:
            SlideReadError: the region cannot be read from the file (a corrupt or truncated
                tile); the message names the file, the region and the fix. Streaming
                passes it on unchanged, so a trainer can skip the slide.
        """
        return self.expand(self.read_compact(index))

    def read_compact(self, index: tuple[slice, ...]) -> RegionPixels:
        """The decoded region of ``index`` as uint8 pixels (3 bytes per position, plus a
        tissue mask where the region is partly background): what streaming keeps from the
        forward pass for the backward recompute, so a slide is decoded once per step.
        :meth:`expand` turns it into :meth:`read`'s tensor, bit for bit.

        Raises:
            SlideReadError: as :meth:`read`.
        """
        (b0, b1), (c0, c1), (y0, y1), (x0, x1) = self._bounds(index)
        height, width = y1 - y0, x1 - x0
        shape = (b1 - b0, c1 - c0, height, width)
        if height == 0 or width == 0 or b1 == b0 or c1 == c0:
            return RegionPixels(shape, slice(c0, c1), None, None, empty=True)
        tissue = self._tissue(x0, y0, width, height) if self.tissue_mask is not None else True
        if tissue is None:
            with self._lock:
                self.skipped += 1
            return RegionPixels(shape, slice(c0, c1), None, None)
        with self._lock:
            self.reads += 1
        rgb = self._read_rgb(x0, y0, width, height)  # (h, w, 3) uint8
        if not rgb.flags.writeable:  # backends may hand out read-only buffers
            rgb = rgb.copy()
        mask = None if tissue is True else torch.from_numpy(tissue)
        return RegionPixels(shape, slice(c0, c1), torch.from_numpy(rgb), mask)

    def expand(self, region: RegionPixels) -> Tensor:
        """:meth:`read`'s tensor of a region from :meth:`read_compact`: normalised, the
        background outside tissue filled, on :attr:`device`."""
        b, c, height, width = region.shape
        if region.empty:
            return torch.zeros(region.shape, dtype=self.dtype, device=self.device)
        channels = region.channels
        out = torch.empty((c, height, width), dtype=self.dtype)  # (c, h, w)
        if region.rgb is None:  # no tissue: the background value
            out.copy_(self._background_normalized[channels].expand_as(out))
        else:
            out.copy_(region.rgb.permute(2, 0, 1)[channels])  # to dtype, contiguous
            out.mul_(self._scale[channels]).add_(self._shift[channels])
            if region.tissue is not None:
                background = self._background_normalized[channels]
                out = torch.where(region.tissue, out, background)
        batch = out.unsqueeze(0)
        if b != 1:
            batch = batch.expand(b, -1, -1, -1)
        return batch.to(self.device)

    def augmented(self, generator: torch.Generator | None = None) -> OrientedSource:
        """A random one of the 8 flips/rotations by 90 degrees, still read lazily (training
        augmentation of slides too large to preload; the same draw as for preloaded ones)."""
        k, flip = draw_orientation(generator)
        return OrientedSource(self, k, flip)

    def __repr__(self) -> str:
        return f"SlideSource({self.reader.name!r}, mpp={self.mpp:.4g}, shape={tuple(self.shape)})"


def draw_orientation(generator: torch.Generator | None = None) -> tuple[int, bool]:
    """A random one of the 8 flips/rotations: ``(k, flip)`` = ``rot90`` by ``k`` quarter
    turns over (H, W), then (if ``flip``) a flip of W. One draw order for every input kind,
    so a slide gets the same orientation whether it is preloaded or read lazily."""
    k = int(torch.randint(4, (), generator=generator))
    flip = bool(torch.randint(2, (), generator=generator))
    return k, flip


def orient_tensor(x: Tensor, k: int, flip: bool) -> Tensor:
    """``(..., H, W)`` -> ``rot90(x, k, (-2, -1))``, then flipped along W if ``flip``."""
    x = torch.rot90(x, k, (-2, -1))
    return x.flip(-1) if flip else x


def draw_orientations(n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` independent random orientations ``(n,)`` int64 codes in ``0..7``, one draw of
    ``generator``: code ``k + 4 * flip`` is ``(k, flip)`` of :func:`orient_tensor`.

    Example:
        >>> codes = draw_orientations(64, torch.Generator().manual_seed(0))
        >>> codes.shape, bool(((codes >= 0) & (codes < 8)).all())
        (torch.Size([64]), True)
    """
    return torch.randint(8, (n,), generator=generator)


def orient_each(x: Tensor, codes: Tensor) -> Tensor:
    """Square images ``(n, ..., S, S)`` each oriented by its own code ``(n,)`` of
    :func:`draw_orientations`; ``x[i]`` is ``orient_tensor(x[i], codes[i] % 4,
    codes[i] >= 4)``. Pixels are only moved, so the result is exact whatever the batch.

    Example:
        >>> x = torch.arange(8).view(2, 1, 2, 2)
        >>> torch.equal(orient_each(x, torch.tensor([0, 1]))[1], orient_tensor(x[1], 1, False))
        True
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"orient_each orients square images, got shape {tuple(x.shape)}")
    codes = codes.reshape(-1).cpu()
    out = torch.empty_like(x)
    for code in torch.unique(codes).tolist():
        where = (codes == code).nonzero().reshape(-1).to(x.device)  # (m,)
        out[where] = orient_tensor(x[where], code % 4, code >= 4)
    return out


def orient_mask(mask: TissueMask | None, k: int, flip: bool) -> TissueMask | None:
    """The tissue mask oriented like :func:`orient_tensor` orients the pixels."""
    if mask is None:
        return None
    array = np.rot90(mask.mask, k)
    return TissueMask(np.ascontiguousarray(array[:, ::-1] if flip else array), mask.mpp)


def _axis_map(k: int, flip: bool) -> tuple[bool, bool, bool]:
    """``(swapped, reverse_rows, reverse_cols)`` of the orientation: output rows run along
    the input's columns when ``swapped``; ``reverse_*`` when an output axis runs backwards
    along its input axis. Derived from a 2x3 probe, so it follows torch's own convention."""
    probe = torch.arange(6).view(2, 3)
    out = orient_tensor(probe, k, flip)
    swapped = tuple(out.shape) == (3, 2)
    a, down, right = (divmod(int(v), 3) for v in (out[0, 0], out[1, 0], out[0, 1]))
    axis_rows, axis_cols = (1, 0) if swapped else (0, 1)
    return swapped, down[axis_rows] < a[axis_rows], right[axis_cols] < a[axis_cols]


class OrientedSource:
    """A lazy input seen flipped/rotated by 90 degrees, read window by window.

    ``read(index)`` of the oriented input reads the corresponding window of ``source`` and
    orients it, so the whole oriented input is never in memory and every window equals
    the same window of ``orient_tensor(whole, k, flip)`` (tested). The tissue mask is
    oriented alike, so the model keeps the same instances.

    Args:
        source: the lazy input (``shape``, ``dtype``, ``device``, ``read``), e.g. a
            :class:`SlideSource`.
        k: quarter turns (``torch.rot90`` over H, W).
        flip: then flip W.
    """

    def __init__(self, source: Any, k: int, flip: bool) -> None:
        self.source = source
        self.k, self.flip = k % 4, bool(flip)
        self._swapped, self._rev_rows, self._rev_cols = _axis_map(self.k, self.flip)
        b, c, h, w = source.shape
        self.shape = torch.Size((b, c, w, h) if self._swapped else (b, c, h, w))
        self.dtype = source.dtype
        self.tissue_mask = orient_mask(getattr(source, "tissue_mask", None), self.k, self.flip)
        self.mpp = getattr(source, "mpp", None)
        self.read_ahead = getattr(source, "read_ahead", None)
        if self.read_ahead is None:
            del self.read_ahead  # no opinion: streaming decides by the device
        self.read_workers = getattr(source, "read_workers", 1)
        if callable(getattr(source, "read_compact", None)):  # decoded once per step too
            self.read_compact, self.expand = self._read_compact, self._expand

    @property
    def device(self) -> torch.device:
        return self.source.device

    @device.setter
    def device(self, value: torch.device | str) -> None:
        self.source.device = torch.device(value)

    def read(self, index: tuple[slice, ...]) -> Tensor:
        """The window ``index`` of the oriented input."""
        return orient_tensor(self.source.read(self._window(index)), self.k, self.flip).contiguous()

    def _read_compact(self, index: tuple[slice, ...]) -> Any:
        """The source's compact form of the window (when it has one); see :meth:`_expand`."""
        return self.source.read_compact(self._window(index))

    def _expand(self, compact: Any) -> Tensor:
        """:meth:`read`'s tensor of a window read with :meth:`_read_compact`."""
        return orient_tensor(self.source.expand(compact), self.k, self.flip).contiguous()

    def _window(self, index: tuple[slice, ...]) -> tuple[slice, ...]:
        """The window of the underlying source that the oriented ``index`` shows."""
        index = tuple(index) + (slice(None),) * (4 - len(index))
        (b, c, rows, cols) = index
        h, w = self.shape[2], self.shape[3]
        r0, r1, _ = rows.indices(h)
        c0, c1, _ = cols.indices(w)
        r1, c1 = max(r0, r1), max(c0, c1)
        if self._rev_rows:
            r0, r1 = h - r1, h - r0
        if self._rev_cols:
            c0, c1 = w - c1, w - c0
        rows_in, cols_in = slice(r0, r1), slice(c0, c1)
        return (b, c, cols_in, rows_in) if self._swapped else (b, c, rows_in, cols_in)

    def augmented(self, generator: torch.Generator | None = None) -> OrientedSource:
        """Another random orientation of the underlying source (not composed)."""
        k, flip = draw_orientation(generator)
        return OrientedSource(self.source, k, flip)

    def __repr__(self) -> str:
        return f"OrientedSource({self.source!r}, k={self.k}, flip={self.flip})"
