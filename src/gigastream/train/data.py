"""Slides as training examples: label checks, train/validation splits, Dataset and DataLoader.

Slides are opened in DataLoader worker processes: a worker opens the slide, checks the
size of its input at the run's mpp (:func:`check_slide_input`), loads or computes its
tissue mask (cached per slide file and tissue settings, :func:`slide_tissue_mask`), checks
that it has tissue and, when the slide's input is small (``DataConfig.preload_pixels``),
reads it whole, all off the training thread. Larger slides stay lazy: the training step
gets a picklable :class:`SlideExample` and opens a
:class:`~gigastream.wsi.source.SlideSource` that the streamed trunk reads tile by tile.
An unreadable or tissue-free slide, or one whose input would be under a pixel or larger
than the machine holds (a wrong mpp), becomes an example with ``error`` set; the training
step skips it and the run lists it in ``metrics.json``.

Example:
    >>> manifest = read_manifest("data/manifest.csv")  # doctest: +SKIP
    >>> train_rows, val_rows = split_rows(manifest, RunConfig())  # doctest: +SKIP
    >>> loader = example_loader(SlideExamples(train_rows, manifest.labels, DataConfig()), 2)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from gigastream.models.patch_mil import PatchConfig
from gigastream.train.config import DataConfig, RunConfig
from gigastream.train.files import atomic_write_text, file_identity
from gigastream.train.selection import LabelIndex
from gigastream.wsi.manifest import ManifestRow
from gigastream.wsi.reader import SlideError, SlideReader
from gigastream.wsi.source import (
    IMAGENET,
    Normalization,
    SlideSource,
    check_input_size,
    check_upsample,
    draw_orientation,
    orient_mask,
    orient_tensor,
)
from gigastream.wsi.tissue import (
    CACHE_KEY,
    TissueMask,
    compute_tissue_mask,
    require_tissue,
    stored_text,
)

logger = logging.getLogger(__name__)

#: What a cached tissue mask's key says about how it was computed (bump when that changes).
MASK_CACHE_VERSION = 1


def describe_skipped(skipped: Mapping[str, str], shown: int = 10) -> str:
    """``id: reason; ...`` of skipped slides (the first ``shown``), on one line."""
    parts = []
    for slide_id, reason in list(skipped.items())[:shown]:
        reason = " ".join(str(reason).split()).removeprefix(f"{slide_id}: ")
        parts.append(f"{slide_id}: {reason}")
    more = len(skipped) - shown
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def normalization(name: str) -> Normalization | None:
    """The input normalisation called ``name`` (``imagenet`` or ``none``)."""
    return IMAGENET if name == "imagenet" else None


@dataclass
class SlideExample:
    """One slide as the training step receives it (picklable: crosses worker processes).

    Attributes:
        slide_id: the slide's id.
        label: class index (a regression run: the slide's value), or ``None`` when unknown
            (prediction).
        path: the slide file.
        slide_mpp: mpp overriding the file's metadata (from the manifest), or ``None``.
        tissue_mask: the slide's tissue mask, or ``None`` (masking off).
        pixels: ``(1, 3, H, W)`` input read whole by the worker, or ``None`` (lazy).
        input_mpp: the exact microns per pixel of the input (preloaded slides).
        error: why the slide cannot be used (unreadable, no tissue), or ``None``.
    """

    slide_id: str
    label: int | float | None
    path: str
    slide_mpp: float | None = None
    tissue_mask: TissueMask | None = None
    pixels: Tensor | None = None
    input_mpp: float | None = None
    error: str | None = None

    def open(self, data: DataConfig, device: torch.device | str = "cpu") -> SlideInput:
        """The slide's input on ``device``: the preloaded tensor or a lazy source."""
        if self.pixels is not None:
            mask = self.tissue_mask if data.mask_input else None
            source = TensorSource(self.pixels.to(device), mask, self.input_mpp)
            return SlideInput(source, None, self.tissue_mask, self.input_mpp)
        reader = SlideReader.open(self.path, mpp=self.slide_mpp, backend=data.backend)
        try:
            source = make_source(reader, self.tissue_mask, data)
        except BaseException:
            reader.close()
            raise
        source.device = torch.device(device)
        return SlideInput(source, reader, self.tissue_mask, source.mpp)


class TensorSource:
    """A slide input read whole (by a worker), seen exactly like its lazy :class:`SlideSource`.

    It carries the slide's tissue mask and mpp, so the model picks the same instances
    (feature positions on tissue) as from the lazy source; ``read(index)`` slices the tensor.

    Args:
        pixels: ``(1, 3, H, W)`` input.
        tissue_mask: the slide's tissue mask, or ``None``.
        mpp: microns per input pixel.
    """

    def __init__(self, pixels: Tensor, tissue_mask: TissueMask | None, mpp: float | None):
        self.pixels = pixels
        self.shape = pixels.shape
        self.dtype = pixels.dtype
        self.device = pixels.device
        self.tissue_mask = tissue_mask
        self.mpp = mpp
        self.read_ahead = False  # reads are views of a tensor: no reading thread

    def read(self, index: tuple[slice, ...]) -> Tensor:
        """``pixels[index]``."""
        return self.pixels[index]

    def augmented(self, generator: torch.Generator | None = None) -> TensorSource:
        """A random one of the 8 flips/rotations by 90 degrees, of the pixels and the mask
        (the same draw as :meth:`SlideSource.augmented` for lazily read slides)."""
        k, flip = draw_orientation(generator)
        pixels = orient_tensor(self.pixels, k, flip)
        mask = orient_mask(self.tissue_mask, k, flip)
        return TensorSource(pixels.contiguous(), mask, self.mpp)


@dataclass
class SlideInput:
    """An opened slide input: ``x`` is a tensor or a lazy source; close it when done."""

    x: TensorSource | SlideSource
    reader: SlideReader | None
    tissue_mask: TissueMask | None
    mpp: float | None

    def close(self) -> None:
        """Release the slide file."""
        if self.reader is not None:
            self.reader.close()


def make_source(reader: SlideReader, mask: TissueMask | None, data: DataConfig) -> SlideSource:
    """The lazy input of a slide at ``data.mpp`` with the run's normalisation and masking."""
    return SlideSource(
        reader,
        mpp=data.mpp,
        tissue_mask=mask if data.mask_input else None,
        normalize=normalization(data.normalize),
        read_workers=data.read_workers,
    )


#: The slides (name, slide mpp, target mpp) this process has warned about upsampling.
_WARNED_UPSAMPLE: set[tuple[str, float, float]] = set()


def check_slide_input(slide: SlideReader, slide_id: str, data: DataConfig) -> tuple[int, int]:
    """``(width, height)`` of a slide's input at ``data.mpp``, checked to be at least one
    pixel and at most ``data.max_input_pixels``
    (:func:`~gigastream.wsi.source.check_input_size`) and to need at most
    ``data.max_upsample`` upsampling (:func:`~gigastream.wsi.source.check_upsample`); a
    slide that is upsampled at all is warned about (once per process). Nothing is read.

    Raises:
        InputSizeError: (a SlideError: the slide is skipped) naming the slide, its mpp and
            the planned size, or the target mpp, the upsampling and ``data.max_upsample``.
    """
    name = f"{slide_id} ({slide.name})"
    size = check_input_size(slide, data.mpp, data.max_input_pixels, name=name)
    factor = check_upsample(slide, data.mpp, data.max_upsample, name=name)
    key = (name, slide.require_mpp(), data.mpp)
    if factor > 1 and key not in _WARNED_UPSAMPLE:
        _WARNED_UPSAMPLE.add(key)
        logger.warning(
            "%s: scanned at %g um/px, coarser than the run's %g um/px: upsampled %.3gx "
            "(data.max_upsample %g); the model sees no more detail than the scan has",
            name,
            key[1],
            data.mpp,
            factor,
            data.max_upsample,
        )
    return size


def mask_key(slide: SlideReader, data: DataConfig, slide_id: str | None = None) -> str | None:
    """What a slide's computed tissue mask depends on, as JSON: the slide file's identity
    (:func:`~gigastream.train.files.file_identity`: resolved path, size, mtime), its mpp
    (the manifest's or the file's), the backend and every tissue setting, and with
    ``data.roi_dir`` the identity of the slide's ROI file ``slide_id`` (its path and the
    SHA-256 of its content, :func:`~gigastream.train.roi.roi_identity`); ``None`` for a
    slide without a file."""
    if slide.path is None:
        return None
    try:
        identity = file_identity(slide.path)
    except OSError:
        return None
    key = {
        "version": MASK_CACHE_VERSION,
        "slide": identity,
        "slide_mpp": slide.mpp,
        "backend": slide.backend,
        "tissue": asdict(data.tissue),
    }
    if getattr(data, "roi_dir", None) is not None:  # the mask is cut to the ROI
        from gigastream.train.roi import roi_identity

        key["roi"] = None if slide_id is None else roi_identity(data.roi_dir, slide_id)
    return json.dumps(key, sort_keys=True)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _sidecar(path: Path) -> Path:
    """``<slide_id>.png.json``: the key of the cached mask ``path`` (and the mark that the
    PNG is a cache, not a given mask)."""
    return path.with_name(f"{path.name}.json")


def _stored_mask(path: Path, slide: SlideReader, key: str | None) -> TissueMask | None:
    """The mask in ``path``: a given mask, or a cached one computed for ``key``; ``None``
    when it must be computed again (cached for another file or other settings, or damaged).

    A cached mask carries the digest of its key in the PNG itself (written atomically with
    the pixels) and has a sidecar ``<slide_id>.png.json``; a PNG with neither is a given
    mask, used as it is and never replaced.

    Raises:
        SlideError: a given mask that cannot be read.
    """
    text = stored_text(path)
    stored = None if text is None else text.get(CACHE_KEY)
    sidecar = _sidecar(path)
    if stored is not None and (key is None or stored != _digest(key)):
        logger.info("%s: cached for another slide file or tissue settings: recomputing", path)
        return None
    try:
        mask = TissueMask.load(path, slide=slide)
    except SlideError as exc:
        if stored is None and not sidecar.is_file():  # the user's own mask
            raise SlideError(f"{exc}; fix the given mask or delete it") from None
        logger.warning("%s: damaged (%s): computing the mask again", path, exc)
        return None
    if stored is None and sidecar.is_file():  # a given mask put in place of a cached one
        with contextlib.suppress(OSError):
            sidecar.unlink()
    return mask


def slide_tissue_mask(
    slide: SlideReader, slide_id: str, data: DataConfig, save: bool = True
) -> TissueMask:
    """The tissue mask of a slide.

    A given mask ``data.mask_dir/<slide_id>.png`` (the user's own image) is used as it is.
    Otherwise the mask is computed with ``data.tissue`` (scaled to the slide) and, with
    ``save``, cached at that path with its :func:`mask_key` (the key in a sidecar
    ``<slide_id>.png.json``, its digest in the PNG; both written atomically): a cached
    mask is used only for the same slide file, mpp and tissue settings; a stale, truncated
    or corrupt one is computed again and replaced. With ``data.roi_dir`` the mask (given or
    computed) is intersected with the slide's ROI (:func:`~gigastream.train.roi.restrict_to_roi`)
    and cached so, keyed by the ROI file's content too.

    Raises:
        SlideError: the slide cannot be read, or a given mask cannot be read; with
            ``data.roi_dir``, no or a malformed ROI file, or no tissue inside the ROI.
    """
    mask_dir = data.mask_dir
    roi_dir = getattr(data, "roi_dir", None)
    path = Path(mask_dir) / f"{slide_id}.png" if mask_dir is not None else None
    key = mask_key(slide, data, slide_id) if path is not None else None
    if path is not None and path.is_file():
        mask = _stored_mask(path, slide, key)
        if mask is not None:
            if roi_dir is not None and (stored_text(path) or {}).get(CACHE_KEY) is None:
                from gigastream.train.roi import restrict_to_roi  # a given mask, not yet cut

                mask = restrict_to_roi(mask, slide, slide_id, roi_dir)
            return mask
    width, height = slide.dimensions
    mpp = slide.require_mpp()
    mask = compute_tissue_mask(slide, data.tissue.scaled_to(width * mpp, height * mpp))
    if roi_dir is not None:
        from gigastream.train.roi import restrict_to_roi

        mask = restrict_to_roi(mask, slide, slide_id, roi_dir)
    if path is not None and save and key is not None:
        # the sidecar first: a crash between the two writes leaves a PNG whose own digest
        # says what it was computed from
        atomic_write_text(_sidecar(path), json.dumps(json.loads(key), indent=1) + "\n")
        mask.save(path, key=_digest(key))
    return mask


class SlideExamples(Dataset):
    """Manifest rows as :class:`SlideExample` s (see the module docstring).

    Args:
        rows: the slides.
        class_names: class names in index order (labels map to their index; a row whose
            label is not a class gets ``label=None``); a regression run's
            ``["value"]``: labels are numbers (:class:`~gigastream.train.selection.LabelIndex`).
        data: how slides are read.
    """

    def __init__(self, rows: Sequence[ManifestRow], class_names: Sequence[str], data: DataConfig):
        self.rows = list(rows)
        self.index = LabelIndex(class_names)
        self._cache: dict[int, SlideExample] = {}  # slides read whole, per process
        self._cached_bytes = 0
        self.data = data
        if data.mask_dir is not None:
            Path(data.mask_dir).mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> list[int | None]:
        """The class index of every slide (``None`` when its label is not a class)."""
        return [self.index.get(row.label) for row in self.rows]

    def _mask(self, row: ManifestRow, slide: SlideReader) -> TissueMask:
        return slide_tissue_mask(slide, row.slide_id, self.data)

    def __getitem__(self, i: int) -> SlideExample:
        cached = self._cache.get(i)
        if cached is not None:
            return dataclasses.replace(cached)  # a fresh example around the same tensor
        example = self._load(i)
        size = 0 if example.pixels is None else example.pixels.nbytes
        if example.error is None and size and self._cached_bytes + size <= self.data.cache_bytes:
            self._cache[i] = example
            self._cached_bytes += size
        return dataclasses.replace(example)

    def _load(self, i: int) -> SlideExample:
        row = self.rows[i]
        example = SlideExample(row.slide_id, self.index.get(row.label), str(row.path), row.mpp)
        try:
            with SlideReader.open(row.path, mpp=row.mpp, backend=self.data.backend) as slide:
                check_slide_input(slide, row.slide_id, self.data)  # before reading anything
                mask = require_tissue(
                    self._mask(row, slide), row.slide_id, self.data.tissue.min_tissue_fraction
                )
                example.tissue_mask = mask
                source = make_source(slide, mask, self.data)
                if source.shape[-2] * source.shape[-1] <= self.data.preload_pixels:
                    example.pixels = source.read((slice(None),) * 4)  # (1, 3, H, W)
                    example.input_mpp = source.mpp
        except SlideError as exc:  # unreadable, corrupt tile, no tissue, absurd size
            example.error = str(exc)
        return example


class EpochSampler(Sampler[int]):
    """A permutation of ``range(n)`` per epoch, seeded by ``(seed, epoch)`` (resumable).

    Args:
        n: number of examples.
        seed: the run's seed.
        shuffle: ``False`` gives ``0 .. n-1`` every epoch.
        labels: with ``balanced``, the class index of every example.
        balanced: interleave the classes (each shuffled) so that every window of a few
            consecutive examples - a gradient-accumulation step - holds every class.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        shuffle: bool = True,
        labels: Sequence[int | None] | None = None,
        balanced: bool = False,
    ) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0
        self.labels = list(labels) if labels is not None else None
        self.balanced = balanced and self.labels is not None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order :meth:`__iter__` gives (Lightning calls this)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.n).tolist()
        if not self.balanced:
            return iter(order)
        groups: dict[int | None, list[int]] = {}
        for index in order:
            groups.setdefault(self.labels[index], []).append(index)
        queues = [groups[k] for k in sorted(groups, key=lambda k: (k is None, k or 0))]
        # each class's examples spread evenly over the epoch, then merged by position
        keyed = [
            ((i + rng.random()) / len(queue), c, index)
            for c, queue in enumerate(queues)
            for i, index in enumerate(queue)
        ]
        return iter(index for _, _, index in sorted(keyed))

    def __len__(self) -> int:
        return self.n


def _identity(example):
    return example


def example_loader(
    dataset: Dataset,
    num_workers: int,
    seed: int = 0,
    shuffle: bool = False,
    balanced: bool = False,
    strata: Sequence[int | None] | None = None,
) -> DataLoader:
    """A DataLoader of single examples (no batching: one slide or bag per step).

    ``balanced`` interleaves the classes (needs ``dataset.labels``, see :class:`EpochSampler`),
    or the groups of ``strata`` (one per example) where given.
    """
    labels = (
        (strata if strata is not None else getattr(dataset, "labels", None)) if balanced else None
    )
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=EpochSampler(len(dataset), seed, shuffle, labels, balanced),
        num_workers=num_workers,
        collate_fn=_identity,
        persistent_workers=num_workers > 0,
        multiprocessing_context="fork" if num_workers > 0 else None,
    )


def run_patches(config: RunConfig) -> PatchConfig | None:
    """The patch settings of a run whose model is a patch-bag model, else ``None``."""
    return config.patches if config.model.kind == "patches" else None


__all__ = [
    "EpochSampler",
    "SlideExample",
    "SlideExamples",
    "SlideInput",
    "TensorSource",
    "check_slide_input",
    "describe_skipped",
    "example_loader",
    "make_source",
    "mask_key",
    "normalization",
    "run_patches",
    "slide_tissue_mask",
]
