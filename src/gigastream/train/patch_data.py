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
step (the patch grid, hence the attention map, is unchanged).

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
from gigastream.wsi.source import draw_orientation, orient_tensor
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


class PatchSource:
    """A slide's bag of patches ``(N, 3, P, P)`` uint8 as the model sees it: preloaded
    pixels or a lazy :class:`~gigastream.wsi.patches.PatchBag`, with its ``grid`` and an
    optional orientation applied to every patch read.

    Args:
        bag: the patches as a tensor, or the lazy bag.
        grid: the slide's patch grid.
        orientation: ``(k, flip)`` of :func:`~gigastream.wsi.source.orient_tensor`.
        slide: ``(path, mpp)`` of the slide file the patches are read from (the manifest's
            mpp, or ``None``), or ``None``; with the grid and the orientation it makes
            :attr:`cache_key`, the key of the ``frozen`` strategy's feature cache.
    """

    def __init__(
        self,
        bag: Tensor | PatchBag,
        grid: PatchGrid,
        orientation: tuple[int, bool] = (0, False),
        slide: tuple[str, float | None] | None = None,
    ) -> None:
        self.bag = bag
        self.grid = grid
        self.orientation = orientation
        self.slide = slide
        self.shape = bag.shape
        self.dtype = bag.dtype
        self.device = bag.device
        self.read_ahead = not isinstance(bag, Tensor)  # a slide read: overlap it with compute

    @property
    def cache_key(self) -> str | None:
        """A hash of the slide file (:func:`~gigastream.train.files.file_identity` and the
        manifest's mpp), the patch grid (coordinates, patch size, mpp) and the orientation;
        ``None`` without a slide or when its file cannot be read: equal keys, equal pixels.
        Computed when asked (only the ``frozen`` strategy asks)."""
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
        return digest.hexdigest()

    def _oriented(self, patches: Tensor) -> Tensor:
        k, flip = self.orientation
        return orient_tensor(patches, k, flip).contiguous() if k or flip else patches

    def read(self, index: tuple[slice, ...]) -> Tensor:
        """Patches ``index[0]`` ``(n, 3, P, P)``."""
        first = index[0] if index else slice(None)
        patches = self.bag[first] if isinstance(self.bag, Tensor) else self.bag.read((first,))
        return self._oriented(patches)

    def take(self, indices: Tensor) -> Tensor:
        """Patches ``indices`` ``(k,)`` (only those are read)."""
        if isinstance(self.bag, Tensor):
            return self._oriented(self.bag[indices.to(self.bag.device)])
        return self._oriented(self.bag.take(indices))

    def augmented(self, generator: torch.Generator | None = None) -> PatchSource:
        """The bag with a random one of the 8 flips/rotations of every patch."""
        return PatchSource(self.bag, self.grid, draw_orientation(generator), self.slide)


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
    """

    slide_id: str
    label: int | None
    path: str
    slide_mpp: float | None = None
    grid: PatchGrid | None = None
    pixels: Tensor | None = None
    error: str | None = None

    def open(self, data: DataConfig, device: torch.device | str = "cpu") -> PatchInput:
        """The bag on ``device``: the preloaded patches or a lazy bag of the open slide."""
        slide = (self.path, self.slide_mpp)
        if self.pixels is not None:
            return PatchInput(PatchSource(self.pixels.to(device), self.grid, slide=slide))
        reader = SlideReader.open(self.path, mpp=self.slide_mpp, backend=data.backend)
        bag = PatchBag(reader, self.grid, device)
        return PatchInput(PatchSource(bag, self.grid, slide=slide), reader)


class PatchExamples(SlideExamples):
    """Manifest rows as :class:`PatchExample` s (see the module docstring); masks, labels
    and the in-memory cache of preloaded bags as :class:`~gigastream.train.data.SlideExamples`.

    Args:
        rows: the slides.
        class_names: class names in index order.
        data: how slides are read (``mpp``, tissue, ``preload_pixels``, ``cache_bytes``).
        patches: the patch settings (``patch_size``, ``min_tissue``).
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
    "PatchExample",
    "PatchExamples",
    "PatchInput",
    "PatchSource",
    "slide_patch_grid",
]
