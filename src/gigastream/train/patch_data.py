"""Slides as bags of tissue patches for a patch-bag model (``model.kind: patches``).

As for whole slides (:mod:`gigastream.train.data`), the work happens in the DataLoader
workers: a worker opens the slide, loads or computes its tissue mask (the same mask, cached
in ``data.mask_dir``), lays the patch grid over the tissue at ``data.mpp``
(:func:`~gigastream.wsi.patches.patch_grid`) and, when the bag has at most
``data.preload_pixels`` pixels, reads every patch into a uint8 tensor ``(N, 3, P, P)``.
Larger bags stay lazy: the training step opens a :class:`~gigastream.wsi.patches.PatchBag`
that the encoder reads chunk by chunk (and again in the recompute of the backward pass,
so the slide stays open until then). A slide that cannot be read, has no tissue, no patch
with enough tissue or is smaller than one patch becomes an example with ``error`` set; the
run skips and lists it.

Patches are not masked (the pixels of a patch are the slide's) and are normalised by the
encoder (``patches.encoder.normalize``), not by ``data.normalize``. With ``data.augment``
every patch of a training bag gets the same random flip/rotation by 90 degrees, drawn per
step (``patches.augment: bag``), or each patch its own (``patches.augment: patch``); the
patch grid, hence the attention map, is unchanged. ``patches.color_jitter`` adds random
brightness and contrast factors (per patch, or per bag). Per-patch draws
(:class:`PatchDraws`) are made once per step, for every patch, before anything is read,
and are indexed by patch: a chunk, a ``take`` of some patches, a lazy or a preloaded bag
and the recompute of ``accumulate``'s backward pass all see the same pixels.

Example:
    >>> dataset = PatchExamples(rows, ["negative", "positive"], DataConfig(), PatchConfig())  # doctest: +SKIP
    >>> example = dataset[0]  # doctest: +SKIP
    >>> len(example.grid), example.pixels.shape  # doctest: +SKIP
    (412, torch.Size([412, 3, 224, 224]))
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from gigastream.models.patch_mil import PatchConfig
from gigastream.train.config import DataConfig
from gigastream.train.data import SlideExamples, check_slide_input, slide_tissue_mask
from gigastream.train.files import file_identity
from gigastream.wsi.manifest import ManifestRow
from gigastream.wsi.patches import PatchBag, PatchGrid, patch_grid
from gigastream.wsi.reader import SlideError, SlideReader
from gigastream.wsi.source import draw_orientation, draw_orientations, orient_each, orient_tensor
from gigastream.wsi.tissue import require_tissue


def slide_patch_grid(
    slide: SlideReader,
    slide_id: str,
    data: DataConfig,
    patches: PatchConfig,
    save_mask: bool = True,
) -> PatchGrid:
    """The patch grid of a slide over its tissue mask (that of
    :func:`~gigastream.train.data.slide_tissue_mask`, cached in ``data.mask_dir`` with
    ``save_mask``).

    Raises:
        SlideError: the slide at ``data.mpp`` is under one pixel or over
            ``data.max_input_pixels`` (:func:`~gigastream.train.data.check_slide_input`),
            has no tissue, no patch with ``patches.min_tissue``, or is smaller than a patch
            (each message names the slide and the fix).
    """
    check_slide_input(slide, slide_id, data)  # before reading anything
    mask = slide_tissue_mask(slide, slide_id, data, save=save_mask)
    mask = require_tissue(mask, slide_id, data.tissue.min_tissue_fraction)
    return patch_grid(slide, data.mpp, patches.patch_size, mask, patches.min_tissue)


def jitter_colors(patches: Tensor, factors: Tensor) -> Tensor:
    """Patches ``(n, C, P, P)`` with brightness and contrast ``factors`` ``(n, 2)``: each
    patch ``x`` becomes ``((x - m) * contrast + m) * brightness``, ``m`` its mean over all
    channels and pixels, computed in float32 one operation at a time (so each pixel's value
    does not depend on the batch); uint8 patches are rounded and clamped to ``[0, 255]``
    (their mean is an exact integer sum), other dtypes keep the float result.

    Example:
        >>> x = torch.full((1, 3, 2, 2), 100, dtype=torch.uint8)
        >>> jitter_colors(x, torch.tensor([[1.1, 0.5]])).flatten().tolist()[:2]
        [110, 110]
    """
    n = patches.shape[0]
    flat = patches.reshape(n, -1)  # (n, C*P*P)
    if patches.dtype == torch.uint8:
        total = flat.sum(1, dtype=torch.int64).double()  # exact
    else:
        total = flat.double().sum(1)
    mean = (total / flat.shape[1]).float().view(n, 1, 1, 1).to(patches.device)  # (n, 1, 1, 1)
    factors = factors.to(device=patches.device, dtype=torch.float32)
    brightness = factors[:, 0].view(n, 1, 1, 1)
    contrast = factors[:, 1].view(n, 1, 1, 1)
    out = patches.float().sub(mean).mul(contrast).add(mean).mul(brightness)  # (n, C, P, P)
    if patches.dtype == torch.uint8:
        return out.round().clamp(0, 255).to(torch.uint8)
    return out.to(patches.dtype)


@dataclass(frozen=True)
class PatchDraws:
    """Random augmentation of every patch of a bag, drawn once per training step.

    Attributes:
        orientations: ``(N,)`` int64 codes of
            :func:`~gigastream.wsi.source.draw_orientations` (``None``: not oriented per
            patch).
        colors: ``(N, 2)`` float32 brightness and contrast factors of
            :func:`jitter_colors` (``None``: no colour jitter).

    Example:
        >>> draws = PatchDraws.draw(64, "patch", 0.1, torch.Generator().manual_seed(0))
        >>> draws.orientations.shape, draws.colors.shape
        (torch.Size([64]), torch.Size([64, 2]))
    """

    orientations: Tensor | None = None
    colors: Tensor | None = None

    @classmethod
    def draw(
        cls, n: int, unit: str, color_jitter: float, generator: torch.Generator | None = None
    ) -> PatchDraws:
        """The draws of a bag of ``n`` patches: per patch (``unit`` ``patch``: an
        orientation each, then the colour factors) or, for ``bag``, one colour pair for
        every patch (the bag's orientation is :func:`~gigastream.wsi.source.draw_orientation`,
        drawn before by the caller). All on the CPU, from ``generator`` alone."""
        orientations = draw_orientations(n, generator) if unit == "patch" else None
        colors = None
        if color_jitter:
            rows = n if unit == "patch" else 1
            uniform = torch.rand(rows, 2, generator=generator, dtype=torch.float64)
            colors = (1.0 + color_jitter * (2.0 * uniform - 1.0)).float().expand(n, 2)
        return cls(orientations, colors)

    def apply(self, patches: Tensor, indices: Tensor) -> Tensor:
        """Patches ``(k, C, P, P)`` of the bag's patches ``indices`` ``(k,)``, augmented."""
        indices = indices.reshape(-1).cpu().long()
        if self.orientations is not None:
            patches = orient_each(patches, self.orientations[indices])
        if self.colors is not None:
            patches = jitter_colors(patches, self.colors[indices])
        return patches

    def key(self) -> bytes:
        """The draws as bytes (part of :attr:`PatchSource.cache_key`)."""
        parts = [
            b"o" + self.orientations.numpy().tobytes() if self.orientations is not None else b"-",
            b"c" + self.colors.contiguous().numpy().tobytes() if self.colors is not None else b"-",
        ]
        return b"|".join(parts)


class PatchSource:
    """A slide's bag of patches ``(N, 3, P, P)`` uint8 as the model sees it: preloaded
    pixels or a lazy :class:`~gigastream.wsi.patches.PatchBag`, with its ``grid``, an
    optional orientation applied to every patch read and optional per-patch draws.

    Args:
        bag: the patches as a tensor, or the lazy bag.
        grid: the slide's patch grid.
        orientation: ``(k, flip)`` of :func:`~gigastream.wsi.source.orient_tensor`.
        slide: ``(path, mpp)`` of the slide file the patches are read from (the manifest's
            mpp, or ``None``), or ``None``; with the grid, the orientation and the draws it
            makes :attr:`cache_key`, the key of the ``frozen`` strategy's feature cache.
        augment: what :meth:`augmented` draws for: ``bag`` or ``patch``
            (``patches.augment``).
        color_jitter: :meth:`augmented`'s colour jitter (``patches.color_jitter``).
        draws: augmentation of each patch, applied after ``orientation`` (``None``: none).

    Example:
        >>> from gigastream.wsi.patches import patch_grid
        >>> slide = SlideReader.from_array(np.zeros((32, 128, 3), np.uint8), mpp=1.0)
        >>> grid = patch_grid(slide, mpp=1.0, patch_size=32)
        >>> source = PatchSource(PatchBag(slide, grid).load(), grid, augment="patch")
        >>> turned = source.augmented(torch.Generator().manual_seed(0))
        >>> torch.equal(turned.read((slice(1, 3),)), turned.take(torch.tensor([1, 2])))
        True
    """

    def __init__(
        self,
        bag: Tensor | PatchBag,
        grid: PatchGrid,
        orientation: tuple[int, bool] = (0, False),
        slide: tuple[str, float | None] | None = None,
        *,
        augment: str = "bag",
        color_jitter: float = 0.0,
        draws: PatchDraws | None = None,
    ) -> None:
        self.bag = bag
        self.grid = grid
        self.orientation = orientation
        self.slide = slide
        self.augment = augment
        self.color_jitter = color_jitter
        self.draws = draws
        self.shape = bag.shape
        self.dtype = bag.dtype
        self.device = bag.device
        self.read_ahead = not isinstance(bag, Tensor)  # a slide read: overlap it with compute

    @property
    def cache_key(self) -> str | None:
        """A hash of the slide file (:func:`~gigastream.train.files.file_identity` and the
        manifest's mpp), the patch grid (coordinates, patch size, mpp), the orientation and
        the per-patch draws (if any); ``None`` without a slide or when its file cannot be
        read: equal keys, equal pixels. Computed when asked (only the ``frozen`` strategy
        asks; it trains on unaugmented bags, whose key is that of the slide as read)."""
        if self.slide is None:
            return None
        path, mpp = self.slide
        try:
            identity = file_identity(path)
        except OSError:
            return None
        digest = hashlib.sha256(f"{identity}|{mpp!r}".encode())
        digest.update(np.ascontiguousarray(self.grid.coords, dtype=np.int64).tobytes())
        digest.update(f"{self.grid.patch_size}|{self.grid.mpp!r}|{self.orientation}".encode())
        if self.draws is not None:
            digest.update(self.draws.key())
        return digest.hexdigest()

    def _oriented(self, patches: Tensor, indices: Tensor | slice) -> Tensor:
        """``patches`` (those of the bag's ``indices``: ``(k,)`` or a slice) as the model
        sees them."""
        k, flip = self.orientation
        if k or flip:
            patches = orient_tensor(patches, k, flip).contiguous()
        if self.draws is None:
            return patches
        if isinstance(indices, slice):  # the patch numbers, only when draws need them
            indices = torch.arange(self.shape[0])[indices]
        return self.draws.apply(patches, indices)

    def read(self, index: tuple[slice, ...]) -> Tensor:
        """Patches ``index[0]`` ``(n, 3, P, P)``."""
        first = index[0] if index else slice(None)
        patches = self.bag[first] if isinstance(self.bag, Tensor) else self.bag.read((first,))
        return self._oriented(patches, first)

    def take(self, indices: Tensor) -> Tensor:
        """Patches ``indices`` ``(k,)`` (only those are read)."""
        if isinstance(self.bag, Tensor):
            return self._oriented(self.bag[indices.to(self.bag.device)], indices)
        return self._oriented(self.bag.take(indices), indices)

    def augmented(self, generator: torch.Generator | None = None) -> PatchSource:
        """The bag with new random draws (not composed with this one's): with ``augment``
        ``bag`` one of the 8 flips/rotations for every patch (the draw of
        :func:`~gigastream.wsi.source.draw_orientation`, as before per-patch augmentation),
        with ``patch`` one for each patch; then ``color_jitter``'s factors (see
        :class:`PatchDraws`). Everything is drawn here, from ``generator``, before any read."""
        n = self.shape[0]
        orientation = draw_orientation(generator) if self.augment == "bag" else (0, False)
        draws = None
        if self.augment == "patch" or self.color_jitter:
            draws = PatchDraws.draw(n, self.augment, self.color_jitter, generator)
        return PatchSource(
            self.bag,
            self.grid,
            orientation,
            self.slide,
            augment=self.augment,
            color_jitter=self.color_jitter,
            draws=draws,
        )


@dataclass
class PatchInput:
    """An opened bag: ``x`` is the model's input; close it when done."""

    x: PatchSource
    reader: SlideReader | None = None

    def close(self) -> None:
        """Release the slide file (lazy bags)."""
        if self.reader is not None:
            self.reader.close()


@dataclass
class PatchExample:
    """One slide's bag as the training step receives it (picklable: crosses workers).

    Attributes:
        slide_id: the slide's id.
        label: class index, or ``None`` when unknown.
        path: the slide file.
        slide_mpp: mpp overriding the file's metadata (from the manifest), or ``None``.
        grid: the patch grid (``None`` when ``error`` is set).
        pixels: ``(N, 3, P, P)`` uint8 patches read by the worker, or ``None`` (lazy).
        error: why the slide cannot be used, or ``None``.
        augment: the unit of training augmentation, ``bag`` or ``patch`` (``patches.augment``).
        color_jitter: ``patches.color_jitter``.
    """

    slide_id: str
    label: int | None
    path: str
    slide_mpp: float | None = None
    grid: PatchGrid | None = None
    pixels: Tensor | None = None
    error: str | None = None
    augment: str = "bag"
    color_jitter: float = 0.0

    def open(self, data: DataConfig, device: torch.device | str = "cpu") -> PatchInput:
        """The bag on ``device``: the preloaded patches or a lazy bag of the open slide."""
        slide = (self.path, self.slide_mpp)
        how = {"augment": self.augment, "color_jitter": self.color_jitter}
        if self.pixels is not None:
            return PatchInput(PatchSource(self.pixels.to(device), self.grid, slide=slide, **how))
        reader = SlideReader.open(self.path, mpp=self.slide_mpp, backend=data.backend)
        bag = PatchBag(reader, self.grid, device)
        return PatchInput(PatchSource(bag, self.grid, slide=slide, **how), reader)


class PatchExamples(SlideExamples):
    """Manifest rows as :class:`PatchExample` s (see the module docstring); masks, labels
    and the in-memory cache of preloaded bags as :class:`~gigastream.train.data.SlideExamples`.

    Args:
        rows: the slides.
        class_names: class names in index order.
        data: how slides are read (``mpp``, tissue, ``preload_pixels``, ``cache_bytes``).
        patches: the patch settings (``patch_size``, ``min_tissue``, ``augment``,
            ``color_jitter``).
    """

    def __init__(
        self,
        rows: Sequence[ManifestRow],
        class_names: Sequence[str],
        data: DataConfig,
        patches: PatchConfig,
    ) -> None:
        super().__init__(rows, class_names, data)
        self.patches = patches

    def _load(self, i: int) -> PatchExample:
        row = self.rows[i]
        example = PatchExample(row.slide_id, self.index.get(row.label), str(row.path), row.mpp)
        example.augment, example.color_jitter = self.patches.augment, self.patches.color_jitter
        try:
            with SlideReader.open(row.path, mpp=row.mpp, backend=self.data.backend) as slide:
                example.grid = slide_patch_grid(slide, row.slide_id, self.data, self.patches)
                size = self.patches.patch_size
                if len(example.grid) * size * size <= self.data.preload_pixels:
                    example.pixels = PatchBag(slide, example.grid).load()  # (N, 3, P, P)
        except SlideError as exc:  # unreadable, absurd size, no tissue, no patch, patch > slide
            example.error = str(exc)
        return example


__all__ = [
    "PatchDraws",
    "PatchExample",
    "PatchExamples",
    "PatchInput",
    "PatchSource",
    "jitter_colors",
    "slide_patch_grid",
]
