"""Slides as bags of cached patch features for a ``model.kind: features`` run.

A slide's features are the file ``data.features_dir/<slide_id>.h5`` (written by
``gigastream features``, or by CLAM or TRIDENT: :mod:`gigastream.wsi.feature_files` reads
all three layouts). As for slides (:mod:`gigastream.train.data`) the files are read in the
DataLoader workers: a worker reads the ``(N, D)`` features and lays the patch grid from
their ``coords`` (:func:`feature_grid`, for attention heatmaps). A missing or unreadable
file becomes an example with ``error`` set that the run skips and lists; a file of another
feature dimension than the model's is refused by the model
(:class:`~gigastream.models.feature_mil.FeatureMIL`) the same way. Files read are kept in
memory up to ``data.cache_bytes`` per loader process, so later epochs do not read them again.

:func:`with_feature_dim` fills a run's ``features:`` section from the first file,
:func:`check_feature_files` checks every file of a checkpoint's slides before predicting,
and :func:`feature_dry_run` is ``train --dry-run`` of a feature run.

Example:
    >>> dataset = FeatureExamples(rows, ["negative", "positive"], DataConfig(features_dir="f"))  # doctest: +SKIP
    >>> example = dataset[0]  # doctest: +SKIP
    >>> example.features.shape, example.grid.grid_shape  # doctest: +SKIP
    (torch.Size([412, 512]), (31, 40))
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from gigastream.models.feature_mil import FeatureBag
from gigastream.train.config import ConfigError, DataConfig, RunConfig
from gigastream.train.selection import LabelIndex
from gigastream.wsi.feature_files import (
    FeatureFileError,
    read_attrs,
    read_feature_dim,
    read_features,
)
from gigastream.wsi.manifest import ManifestRow
from gigastream.wsi.patches import PatchGrid, coords_spacing, grid_from_coords
from gigastream.wsi.reader import SlideError

logger = logging.getLogger(__name__)

#: The attributes of a feature file that describe its encoder; a run records the first
#: file's in ``features.encoder`` (and so every checkpoint).
ENCODER_ATTRS = (
    "encoder",
    "weights_sha256",
    "mpp",
    "patch_size",
    "patch_size_level0",
    "patch_level",
    "min_tissue",
    "feature_dim",
)


def feature_path(folder: str | Path, slide_id: str) -> Path:
    """The feature file of a slide: ``folder/<slide_id>.h5``."""
    return Path(folder) / f"{slide_id}.h5"


def level0_patch(attrs: dict[str, Any], coords: np.ndarray | None = None) -> float | None:
    """The patch edge in level-0 pixels of a feature file (``None`` when unknown).

    From the attributes: ``patch_size_level0`` (gigastream's and TRIDENT's), else CLAM's
    ``patch_size`` x ``downsample`` of ``patch_level``, else ``patch_size`` at
    ``patch_level`` 0; otherwise the smallest spacing of ``coords``.
    """
    if attrs.get("patch_size_level0"):
        return float(attrs["patch_size_level0"])
    size = attrs.get("patch_size")
    if size:
        downsample = attrs.get("downsample")
        if isinstance(downsample, (list, tuple)) and downsample:
            return float(size) * float(downsample[0])
        if isinstance(downsample, (int, float)) and downsample > 0:
            return float(size) * float(downsample)
        if int(attrs.get("patch_level", attrs.get("level", 0)) or 0) == 0:
            return float(size)
    return coords_spacing(coords) if coords is not None and len(coords) else None


def feature_grid(coords: np.ndarray, attrs: dict[str, Any]) -> PatchGrid | None:
    """The patch grid of a feature file's ``coords`` (``None`` when its patch size is
    unknown: a single patch without patch-size attributes)."""
    step = level0_patch(attrs, coords)
    if step is None or len(coords) == 0:
        return None
    size = int(attrs.get("patch_size") or 0)
    return grid_from_coords(coords, step, size, float(attrs.get("mpp") or float("nan")))


@dataclass
class FeatureInput:
    """An opened bag: ``x`` is the model's input (nothing to close: no slide is open)."""

    x: FeatureBag

    def close(self) -> None:
        """Nothing to release."""


@dataclass
class FeatureExample:
    """One slide's features as the training step receives them (picklable: crosses workers).

    Attributes:
        slide_id: the slide's id.
        label: class index, or ``None`` when unknown.
        path: the slide file (for heatmaps; it need not exist).
        features_path: the feature file.
        features: ``(N, D)`` float32 features (``None`` when ``error`` is set).
        grid: the patch grid of their ``coords`` (``None``: unknown).
        error: why the slide cannot be used, or ``None``.
    """

    slide_id: str
    label: int | None
    path: str
    features_path: str
    features: Tensor | None = None
    grid: PatchGrid | None = None
    error: str | None = None

    def open(self, data: DataConfig, device: torch.device | str = "cpu") -> FeatureInput:
        """The bag on ``device``."""
        return FeatureInput(FeatureBag(self.features.to(device), self.grid, self.features_path))


class FeatureExamples(Dataset):
    """Manifest rows as :class:`FeatureExample` s read from ``data.features_dir`` (module
    docstring).

    Args:
        rows: the slides.
        class_names: class names in index order (a row whose label is not a class gets
            ``label=None``).
        data: ``features_dir`` and ``cache_bytes``.
        feature_dim: the ``D`` every file must have (``None``: not checked here; the model
            checks it).
    """

    def __init__(
        self,
        rows: Sequence[ManifestRow],
        class_names: Sequence[str],
        data: DataConfig,
        feature_dim: int | None = None,
    ) -> None:
        if data.features_dir is None:
            raise ConfigError("FeatureExamples needs data.features_dir (--features DIR)")
        self.rows = list(rows)
        self.index = LabelIndex(class_names)
        self.data = data
        self.feature_dim = feature_dim
        self._cache: dict[int, FeatureExample] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> list[int | None]:
        """The class index of every slide (``None`` when its label is not a class)."""
        return [self.index.get(row.label) for row in self.rows]

    def __getitem__(self, i: int) -> FeatureExample:
        cached = self._cache.get(i)
        if cached is not None:
            return dataclasses.replace(cached)
        example = self._load(i)
        size = 0 if example.features is None else example.features.nbytes
        if example.error is None and self._cached_bytes + size <= self.data.cache_bytes:
            self._cache[i] = example
            self._cached_bytes += size
        return dataclasses.replace(example)

    def _load(self, i: int) -> FeatureExample:
        row = self.rows[i]
        path = feature_path(self.data.features_dir, row.slide_id)
        example = FeatureExample(row.slide_id, self.index.get(row.label), str(row.path), str(path))
        try:
            f = read_features(path, self.feature_dim)
            example.features = torch.from_numpy(f.features)  # (N, D) float32
            example.grid = feature_grid(f.coords, f.attrs)
        except SlideError as exc:  # missing, corrupt, another dimension, bad coords
            example.error = str(exc)
        return example


def _first_feature_file(folder: Path, rows: Sequence[ManifestRow]) -> tuple[Path, int, dict]:
    """``(path, feature_dim, attrs)`` of the first readable feature file of ``rows``.

    Raises:
        ConfigError: no folder, or no readable file of any of the slides.
    """
    if not folder.is_dir():
        raise ConfigError(
            f"{folder}: features folder not found; write it with gigastream features "
            f"--manifest M.csv --out {folder}"
        )
    problems = []
    for row in rows:
        path = feature_path(folder, row.slide_id)
        if not path.is_file():
            continue
        try:
            return path, read_feature_dim(path), read_attrs(path)
        except FeatureFileError as exc:
            problems.append(str(exc))
    detail = f" ({problems[0]})" if problems else ""
    raise ConfigError(
        f"{folder}: no readable feature file of the manifest's {len(rows)} slides (looked for "
        f"<slide_id>.h5){detail}; write them with gigastream features --out {folder}"
    )


def with_feature_dim(config: RunConfig, rows: Sequence[ManifestRow]) -> RunConfig:
    """``config`` with ``features.feature_dim`` and ``features.encoder`` taken from the first
    readable feature file of ``rows`` (in ``data.features_dir``).

    Raises:
        ConfigError: no readable file, or a configured ``features.feature_dim`` that the
            first file does not have (naming both and the file).
    """
    folder = Path(config.data.features_dir)
    path, dim, attrs = _first_feature_file(folder, rows)
    expected = config.features.feature_dim
    if expected is not None and expected != dim:
        raise ConfigError(
            f"{path}: features of dimension {dim}, but features.feature_dim is {expected}; "
            "drop features.feature_dim (it is taken from the files) or use the features of "
            "that encoder"
        )
    encoder = {k: attrs[k] for k in ENCODER_ATTRS if k in attrs}
    logger.info("%s: features of dimension %d (%s)", folder, dim, encoder.get("encoder", "?"))
    return replace(config, features=replace(config.features, feature_dim=dim, encoder=encoder))


def check_feature_files(
    folder: str | Path, rows: Sequence[ManifestRow], feature_dim: int, encoder: dict | None = None
) -> list[str]:
    """Check the feature files of ``rows`` before predicting with a model of ``feature_dim``.

    Only headers are read. A missing file is not an error here (the slide is skipped and
    listed); files of another encoder than ``encoder`` (by ``encoder``/``weights_sha256``)
    of the same dimension are logged as a warning.

    Returns:
        The slide ids whose feature file is missing.

    Raises:
        ConfigError: the folder does not exist.
        FeatureFileError: a file of another dimension (naming the file and both dimensions).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(
            f"{folder}: features folder not found; pass --features DIR, a folder written by "
            "gigastream features with the checkpoint's encoder"
        )
    missing = []
    for row in rows:
        path = feature_path(folder, row.slide_id)
        if not path.is_file():
            missing.append(row.slide_id)
            continue
        read_feature_dim(path, feature_dim)
        attrs = read_attrs(path)
        for key in ("encoder", "weights_sha256"):
            if encoder and key in encoder and key in attrs and attrs[key] != encoder[key]:
                logger.warning(
                    "%s: %s %s, but the model was trained on features of %s",
                    path,
                    key,
                    attrs[key],
                    encoder[key],
                )
    return missing


@dataclass
class FeatureDryRunReport:
    """``train --dry-run`` of a feature run: which slides have a usable feature file.

    Attributes:
        folder: ``data.features_dir``.
        feature_dim: the run's ``D``.
        encoder: the first file's encoder attributes.
        slides: slides of the run.
        problems: slide id -> why its file cannot be used (missing, corrupt, another ``D``).
    """

    folder: str
    feature_dim: int | None
    encoder: dict[str, Any]
    slides: int
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every slide has a usable feature file."""
        return not self.problems

    def __str__(self) -> str:
        name = self.encoder.get("encoder", "an unknown encoder")
        lines = [
            f"feature model: {self.slides - len(self.problems)} of {self.slides} slides have "
            f"features of dimension {self.feature_dim} (from {name}) in {self.folder}"
        ]
        for slide_id, problem in list(self.problems.items())[:10]:
            lines.append(f"  {slide_id}: {problem}")
        if len(self.problems) > 10:
            lines.append(f"  ... and {len(self.problems) - 10} more")
        return "\n".join(lines)


def feature_dry_run(config: RunConfig, rows: Sequence[ManifestRow]) -> FeatureDryRunReport:
    """The feature files of ``rows`` checked by their headers (nothing is trained)."""
    folder = Path(config.data.features_dir)
    dim = config.features.feature_dim
    report = FeatureDryRunReport(str(folder), dim, dict(config.features.encoder), len(rows))
    for row in rows:
        try:
            read_feature_dim(feature_path(folder, row.slide_id), dim)
        except FeatureFileError as exc:
            report.problems[row.slide_id] = str(exc)
    return report


__all__ = [
    "ENCODER_ATTRS",
    "FeatureDryRunReport",
    "FeatureExample",
    "FeatureExamples",
    "FeatureInput",
    "check_feature_files",
    "feature_dry_run",
    "feature_grid",
    "feature_path",
    "level0_patch",
    "with_feature_dim",
]
