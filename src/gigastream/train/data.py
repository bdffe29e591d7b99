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
import difflib
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
from gigastream.train.config import ConfigError, DataConfig, RunConfig
from gigastream.train.files import atomic_write_text, file_identity
from gigastream.wsi.manifest import Manifest, ManifestRow, read_splits, stratified_folds
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

TRAIN_SPLITS = ("train", "training")
VAL_SPLITS = ("val", "valid", "validation")
#: Split names of slides a run leaves out (e.g. a held-out test set).
OTHER_SPLITS = ("test", "testing", "holdout")
SPLITS = TRAIN_SPLITS + VAL_SPLITS + OTHER_SPLITS
#: ``evaluate --split``: the slides of :data:`VAL_SPLITS`, of :data:`OTHER_SPLITS` or all.
EVAL_SPLITS = ("val", "test", "all")
#: What a cached tissue mask's key says about how it was computed (bump when that changes).
MASK_CACHE_VERSION = 1


def _label_key(label: str) -> str:
    return " ".join(label.split()).casefold()


def check_labels(
    labels: Sequence[str], class_names: Sequence[str] | None, positive_class: str | None = None
) -> list[str]:
    """The class names of a run, after checking the labels of its slides.

    Args:
        labels: the label of every slide.
        class_names: the configured classes in index order, or ``None`` (then the sorted
            distinct labels).
        positive_class: the class a binary AUC is of (``RunConfig.positive_class``): moved
            to the end of the class order (a binary AUC is of the last class); ``None``:
            the order stands.

    Returns:
        The class names in index order.

    Raises:
        ConfigError: labels not among ``class_names`` (each with the closest class name),
            labels that differ only in case or spacing, fewer than two classes, or a
            ``positive_class`` that is not a class (with the closest one). One error lists
            every offending label.

    Example:
        >>> check_labels(["cancer", "normal", "cancer"], None)
        ['cancer', 'normal']
        >>> check_labels(["cancer", "normal", "cancer"], None, positive_class="cancer")
        ['normal', 'cancer']
    """
    return positive_last(_class_names(labels, class_names), positive_class)


def positive_last(class_names: Sequence[str], positive_class: str | None) -> list[str]:
    """``class_names`` with ``positive_class`` moved last (``None``: unchanged).

    Raises:
        ConfigError: ``positive_class`` is not one of ``class_names`` (with the closest).
    """
    names = list(class_names)
    if positive_class is None:
        return names
    if positive_class not in names:
        close = [n for n in names if _label_key(n) == _label_key(positive_class)]
        close = close or difflib.get_close_matches(positive_class, names, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"positive_class {positive_class!r} is not one of the labels {names}{hint}; set "
            "--positive-class (positive_class:) to one of them (labels are case- and "
            "space-sensitive)"
        )
    return [n for n in names if n != positive_class] + [positive_class]


def _class_names(labels: Sequence[str], class_names: Sequence[str] | None) -> list[str]:
    """The checked class names of :func:`check_labels`, before the positive class is moved."""
    distinct = sorted(set(labels))
    if class_names is not None:
        names = list(class_names)
        keys = [_label_key(n) for n in names]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"class_names {names} holds names that differ only in case/spacing")
        bad = [lab for lab in distinct if lab not in names]
        if bad:
            parts = []
            for lab in bad:
                close = [n for n in names if _label_key(n) == _label_key(lab)]
                close = close or difflib.get_close_matches(lab, names, n=1, cutoff=0.6)
                parts.append(f"{lab!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(
                f"{len(bad)} label(s) not in the configured classes {names}: {', '.join(parts)}; "
                "fix the manifest's label column (labels are case- and space-sensitive)"
            )
        return names
    groups: dict[str, list[str]] = {}
    for lab in distinct:
        groups.setdefault(_label_key(lab), []).append(lab)
    clashes = [spellings for spellings in groups.values() if len(spellings) > 1]
    if clashes:
        listing = "; ".join(" vs ".join(repr(s) for s in group) for group in clashes)
        raise ConfigError(
            f"labels that differ only in case or spacing: {listing}; make them identical in "
            "the manifest, or set class_names in the config"
        )
    if len(distinct) < 2:
        raise ConfigError(
            f"the slides have {len(distinct)} distinct label(s) {distinct}; a classifier needs "
            "at least two classes"
        )
    return distinct


def split_rows(
    manifest: Manifest, config: RunConfig
) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """Training and validation slides of a run.

    In order of preference: a splits file and fold (``gigastream splits``), the manifest's
    ``split`` column (``train``/``training`` vs ``val``/``valid``/``validation``;
    ``test``/``testing``/``holdout`` are left out; case-insensitive), or fold 0 of
    ``round(1 / val_fraction)`` stratified patient-level folds. With ``data.slide_mpp``,
    the rows of slides without an mpp of their own get it (:func:`with_slide_mpp`).

    Raises:
        ConfigError: slides missing from the splits file, split values that are none of
            the above (each with the closest valid one), the same slide file (resolved
            path) in training and validation (a leak), an empty side, or (without splits)
            fewer cases than ``train.val_fraction`` needs (saying how many).
    """
    rows = with_slide_mpp(manifest.rows, config.data.slide_mpp, config.data.backend)
    if config.splits is not None:
        fold_of = read_splits(config.splits)
        missing = [r.slide_id for r in rows if r.slide_id not in fold_of]
        if missing:
            raise ConfigError(
                f"{config.splits}: {len(missing)} slide(s) of the manifest have no fold "
                f"({', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}); "
                "re-create it with gigastream splits"
            )
        folds = sorted(set(fold_of.values()))
        if config.fold not in folds:
            raise ConfigError(f"--fold {config.fold} is not in {config.splits} (folds {folds})")
        train = [r for r in rows if fold_of[r.slide_id] != config.fold]
        val = [r for r in rows if fold_of[r.slide_id] == config.fold]
    elif any(r.split for r in rows):
        check_split_names(rows, config.manifest)
        train = [r for r in rows if (r.split or "").lower() in TRAIN_SPLITS]
        val = [r for r in rows if (r.split or "").lower() in VAL_SPLITS]
    else:
        folds = max(2, round(1 / config.train.val_fraction))
        _check_enough_cases(rows, folds, config)
        fold_of = stratified_folds(
            Manifest(rows, manifest.labels), folds=folds, seed=config.train.seed
        )
        train = [r for r in rows if fold_of[r.slide_id] != 0]
        val = [r for r in rows if fold_of[r.slide_id] == 0]
    if not train or not val:
        raise ConfigError(
            f"need training and validation slides, got {len(train)} and {len(val)} of "
            f"{len(rows)} (check the split column / splits file)"
        )
    _check_no_leak(train, val)
    return train, val


def _check_enough_cases(rows: Sequence[ManifestRow], folds: int, config: RunConfig) -> None:
    """ConfigError saying how many cases a hold-out of ``train.val_fraction`` needs (one per
    fold of ``round(1 / val_fraction)``) and what to change, when the manifest has fewer
    and neither a split column nor a splits file."""
    cases = len({r.case_id for r in rows})
    if cases >= folds:
        return
    if cases >= 2:
        fix = (
            f"set train.val_fraction to {1 / cases:.2g} (1 of the {cases} cases validates; "
            f"train: {{val_fraction: {1 / cases:.2g}}} in --config), give the manifest a split "
            "column (train/val) or pass --splits (gigastream splits), or add cases"
        )
    else:
        fix = "a run needs at least 2 cases (one to train on, one to validate): add slides"
    raise ConfigError(
        f"{config.manifest or 'the manifest'}: {len(rows)} slide(s) of {cases} case(s) and "
        f"no split column or splits file: holding out train.val_fraction "
        f"{config.train.val_fraction:g} of the cases for validation needs at least {folds} "
        f"cases (1 in {folds}; the slides of a case stay together); {fix}"
    )


def with_slide_mpp(
    rows: Sequence[ManifestRow], slide_mpp: float | None, backend: str = "auto"
) -> list[ManifestRow]:
    """``rows`` with ``mpp = slide_mpp`` for each slide that has no mpp of its own: none in
    its row (the manifest's ``mpp`` column) and none in its file's metadata.

    Each row without an mpp is opened once (metadata only) to see; a slide that cannot be
    opened keeps its row (it is reported when it is read). ``slide_mpp=None``: ``rows``.

    Example:
        >>> rows = with_slide_mpp(read_manifest("m.csv").rows, 0.5)  # doctest: +SKIP
    """
    if slide_mpp is None:
        return list(rows)
    resolved = []
    for row in rows:
        if row.mpp is None and not _has_own_mpp(row.path, backend):
            row = dataclasses.replace(row, mpp=float(slide_mpp))
        resolved.append(row)
    return resolved


def _has_own_mpp(path: str | Path, backend: str) -> bool:
    """Whether the slide file states its mpp (an unreadable one counts as stating it)."""
    try:
        with SlideReader.open(path, backend=backend) as slide:
            return slide.mpp is not None
    except SlideError:
        return True  # reported, with its reason, when the slide is read


def _some(names: Sequence[str], shown: int = 3) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def check_split_names(rows: Sequence[ManifestRow], manifest: str | Path | None) -> None:
    """ConfigError listing every split value that is not in :data:`SPLITS` (with its slides
    and the closest valid value): a typo would drop its slides silently."""
    unknown: dict[str, list[str]] = {}
    for row in rows:
        if row.split and row.split.lower() not in SPLITS:
            unknown.setdefault(row.split, []).append(row.slide_id)
    if not unknown:
        return
    parts = []
    for value, slide_ids in unknown.items():
        close = difflib.get_close_matches(value.lower(), SPLITS, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        parts.append(f"{value!r} ({_some(slide_ids)}{hint})")
    raise ConfigError(
        f"{manifest or 'the manifest'}: unknown split value(s) {', '.join(parts)}; the split "
        f"column takes {'/'.join(TRAIN_SPLITS)}, {'/'.join(VAL_SPLITS)} or "
        f"{'/'.join(OTHER_SPLITS)} (left out): fix the manifest"
    )


def _check_no_leak(train: Sequence[ManifestRow], val: Sequence[ManifestRow]) -> None:
    """ConfigError naming both slide ids when one slide file (resolved path) is both a
    training and a validation slide."""
    training: dict[Path, str] = {}
    for row in train:
        training.setdefault(Path(row.path).resolve(), row.slide_id)
    leaks = []
    for row in val:
        path = Path(row.path).resolve()
        if path in training:
            leaks.append(
                f"{training[path]!r} (training) and {row.slide_id!r} (validation) are both {path}"
            )
    if leaks:
        raise ConfigError(
            f"the same slide file is a training and a validation slide (a train/val leak): "
            f"{_some(leaks)}; remove the duplicate row (or give it its own file)"
        )


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
        label: class index, or ``None`` when unknown (prediction).
        path: the slide file.
        slide_mpp: mpp overriding the file's metadata (from the manifest), or ``None``.
        tissue_mask: the slide's tissue mask, or ``None`` (masking off).
        pixels: ``(1, 3, H, W)`` input read whole by the worker, or ``None`` (lazy).
        input_mpp: the exact microns per pixel of the input (preloaded slides).
        error: why the slide cannot be used (unreadable, no tissue), or ``None``.
    """

    slide_id: str
    label: int | None
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


def mask_key(slide: SlideReader, data: DataConfig) -> str | None:
    """What a slide's computed tissue mask depends on, as JSON: the slide file's identity
    (:func:`~gigastream.train.files.file_identity`: resolved path, size, mtime), its mpp
    (the manifest's or the file's), the backend and every tissue setting; ``None`` for a
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
    or corrupt one is computed again and replaced.

    Raises:
        SlideError: the slide cannot be read, or a given mask cannot be read.
    """
    mask_dir = data.mask_dir
    path = Path(mask_dir) / f"{slide_id}.png" if mask_dir is not None else None
    key = mask_key(slide, data) if path is not None else None
    if path is not None and path.is_file():
        mask = _stored_mask(path, slide, key)
        if mask is not None:
            return mask
    width, height = slide.dimensions
    mpp = slide.require_mpp()
    mask = compute_tissue_mask(slide, data.tissue.scaled_to(width * mpp, height * mpp))
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
            label is not a class gets ``label=None``).
        data: how slides are read.
    """

    def __init__(self, rows: Sequence[ManifestRow], class_names: Sequence[str], data: DataConfig):
        self.rows = list(rows)
        self.index = {name: i for i, name in enumerate(class_names)}
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
) -> DataLoader:
    """A DataLoader of single examples (no batching: one slide or bag per step).

    ``balanced`` interleaves the classes (needs ``dataset.labels``, see :class:`EpochSampler`).
    """
    labels = getattr(dataset, "labels", None) if balanced else None
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
    "check_labels",
    "check_slide_input",
    "check_split_names",
    "describe_skipped",
    "example_loader",
    "make_source",
    "mask_key",
    "normalization",
    "positive_last",
    "run_patches",
    "slide_tissue_mask",
    "split_rows",
    "with_slide_mpp",
]
