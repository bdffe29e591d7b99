"""Slides of a manifest as lazy training inputs, with tissue masks and no-tissue skipping.

:class:`SlideDataset` turns manifest rows into :class:`SlideItem` s: the label index, the
tissue mask (a user's mask file from ``mask_dir`` if there is one, else computed and, with
``mask_dir``, cached there) and a :class:`~gigastream.wsi.source.SlideSource` to stream.
Slides without tissue are never silently used: indexing one raises
:class:`~gigastream.wsi.tissue.NoTissueError`, and iterating skips it with a warning and
records it in :attr:`SlideDataset.skipped`.

Example:
    >>> manifest = read_manifest("synth/manifest.csv")  # doctest: +SKIP
    >>> dataset = SlideDataset(manifest, SlideDatasetConfig(mpp=1.0, mask_dir="masks"))  # doctest: +SKIP
    >>> for item in dataset:  # doctest: +SKIP
    ...     fmap = streamed(item.source)  # (1, C, h, w), never holding the slide
    ...     loss = criterion(head(fmap), item.label)
    ...     item.close()
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gigastream.wsi.manifest import Manifest, ManifestRow
from gigastream.wsi.reader import SlideError, SlideReader
from gigastream.wsi.source import IMAGENET, Normalization, SlideSource
from gigastream.wsi.tissue import (
    TissueMask,
    TissueMaskConfig,
    compute_tissue_mask,
    require_tissue,
)

logger = logging.getLogger(__name__)


@dataclass
class SlideDatasetConfig:
    """How manifest slides become inputs.

    Attributes:
        mpp: resolution the slides are streamed at (microns per pixel).
        tissue: tissue masker settings (also the no-tissue threshold).
        mask_dir: folder of ``<slide_id>.png`` masks: used when present (user masks),
            otherwise computed masks are saved there.
        mask_input: blank non-tissue pixels of the input (and skip reading them).
        normalize: input normalisation (``None``: pixels in [0, 1]).
        backend: slide reader backend (``"auto"``, ``"openslide"``, ``"tiffslide"``).
        dtype: input dtype.
    """

    mpp: float = 1.0
    tissue: TissueMaskConfig = field(default_factory=TissueMaskConfig)
    mask_dir: Path | None = None
    mask_input: bool = True
    normalize: Normalization | None = IMAGENET
    backend: str = "auto"
    dtype: torch.dtype = torch.float32


@dataclass
class SlideItem:
    """One slide ready to stream.

    Attributes:
        row: the manifest row.
        label: class index of the slide's label.
        tissue_mask: the slide's tissue mask.
        source: lazy ``(1, 3, H, W)`` input at the configured mpp.
    """

    row: ManifestRow
    label: int
    tissue_mask: TissueMask
    source: SlideSource

    def close(self) -> None:
        """Release the slide file."""
        self.source.reader.close()


class SlideDataset:
    """The slides of a manifest as :class:`SlideItem` s (see the module docstring)."""

    def __init__(self, manifest: Manifest, config: SlideDatasetConfig | None = None) -> None:
        self.manifest = manifest
        self.config = config or SlideDatasetConfig()
        self.skipped: dict[str, str] = {}
        if self.config.mask_dir is not None:
            Path(self.config.mask_dir).mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self.manifest.rows)

    def _mask(self, row: ManifestRow, slide: SlideReader) -> TissueMask:
        mask_dir = self.config.mask_dir
        path = Path(mask_dir) / f"{row.slide_id}.png" if mask_dir is not None else None
        if path is not None and path.is_file():
            return TissueMask.load(path, slide=slide)
        mask = compute_tissue_mask(slide, self.config.tissue)
        if path is not None:
            mask.save(path)
        return mask

    def __getitem__(self, index: int) -> SlideItem:
        """Open slide ``index``.

        Raises:
            SlideError: the slide cannot be read.
            NoTissueError: the slide has no tissue.
        """
        row = self.manifest.rows[index]
        slide = SlideReader.open(row.path, mpp=row.mpp, backend=self.config.backend)
        try:
            mask = require_tissue(
                self._mask(row, slide), row.slide_id, self.config.tissue.min_tissue_fraction
            )
            source = SlideSource(
                slide,
                mpp=self.config.mpp,
                tissue_mask=mask if self.config.mask_input else None,
                normalize=self.config.normalize,
                dtype=self.config.dtype,
            )
        except BaseException:
            slide.close()
            raise
        return SlideItem(row, self.manifest.label_index(row), mask, source)

    def __iter__(self) -> Iterator[SlideItem]:
        """Every usable slide; unreadable and tissue-free ones are logged and skipped."""
        for index, row in enumerate(self.manifest.rows):
            try:
                yield self[index]
            except SlideError as exc:  # NoTissueError included
                self.skipped[row.slide_id] = str(exc)
                logger.warning("skipping %s: %s", row.slide_id, exc)
