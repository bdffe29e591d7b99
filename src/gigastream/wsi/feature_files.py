"""Patch-feature files in the layout CLAM and TRIDENT write: one HDF5 file per slide.

A file holds the datasets ``features`` ``(N, D)`` float and ``coords`` ``(N, 2)`` int
(level-0 pixel ``(x, y)`` of each patch's top-left corner), with the patching settings as
attributes (CLAM keeps ``patch_size``/``patch_level`` on ``coords``; TRIDENT keeps them on
the file or on ``coords``; both are read). gigastream adds ``encoder``, ``weights_sha256``,
``mpp``, ``patch_size`` and ``key`` — a hash of everything the features depend on (slide file
identity, encoder, weights, mpp, patch size, tissue settings; :func:`feature_key` of them), so
a cached file is reused only for the same job, never by its slide id alone.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "slide.h5"
    >>> _ = write_features(path, np.ones((3, 4), np.float32), np.zeros((3, 2), np.int64),
    ...                    {"encoder": "resnet18", "patch_size": 224})
    >>> f = read_features(path, feature_dim=4)
    >>> f.features.shape, f.coords.shape, f.attrs["encoder"]
    ((3, 4), (3, 2), 'resnet18')
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gigastream.atomic import atomic_write
from gigastream.wsi.reader import SlideError


class FeatureFileError(SlideError):
    """A feature file is missing, unreadable or not of the expected layout or dimension."""


@dataclass
class FeatureFile:
    """The contents of one feature file.

    Attributes:
        features: ``(N, D)`` float32 patch features.
        coords: ``(N, 2)`` int64 level-0 ``(x, y)`` of each patch's top-left corner.
        attrs: the file's and ``coords``' attributes (strings and numbers).
        path: where it was read from.
    """

    features: np.ndarray
    coords: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def feature_dim(self) -> int:
        """``D``."""
        return int(self.features.shape[1])


def _h5py():
    try:
        import h5py
    except ModuleNotFoundError:
        raise FeatureFileError("feature files need the h5py package: pip install h5py") from None
    return h5py


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def write_features(
    path: str | Path, features: np.ndarray, coords: np.ndarray, attrs: dict[str, Any]
) -> Path:
    """Write one slide's features atomically (temporary file, then rename).

    Raises:
        FeatureFileError: ``features`` and ``coords`` do not describe the same patches.
    """
    h5py = _h5py()
    features = np.asarray(features, dtype=np.float32)
    coords = np.asarray(coords, dtype=np.int64)
    if features.ndim != 2 or coords.shape != (features.shape[0], 2):
        raise FeatureFileError(
            f"{path}: features must be (N, D) and coords (N, 2), got {features.shape} and "
            f"{coords.shape}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=features)
            dset = f.create_dataset("coords", data=coords)
            for key, value in attrs.items():
                if value is None:
                    continue
                f.attrs[key] = value
                if key in ("patch_size", "patch_level", "level", "mpp", "patch_size_level0"):
                    dset.attrs[key] = value

    return atomic_write(path, write)


def _attrs(f: Any) -> dict[str, Any]:
    """An open file's attributes, then those of its ``coords`` not already there (CLAM keeps
    ``patch_size``/``patch_level`` on ``coords``)."""
    attrs = {k: _plain(v) for k, v in f.attrs.items()}
    if "coords" in f:
        for k, v in f["coords"].attrs.items():
            attrs.setdefault(k, _plain(v))
    return attrs


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The attributes of a feature file without reading its arrays (``{}`` if unreadable)."""
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            return _attrs(f)
    except (OSError, KeyError):
        return {}


def feature_key(settings: dict[str, Any]) -> str:
    """The ``key`` attribute of a feature file: sha256 of ``settings`` (everything its
    features depend on) as canonical JSON (sorted keys), so equal settings give equal keys.

    Example:
        >>> feature_key({"mpp": 0.5, "patch_size": 224}) == feature_key({"patch_size": 224, "mpp": 0.5})
        True
    """
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _dimension_error(
    path: Path, got: int, attrs: dict[str, Any], expected: int
) -> FeatureFileError:
    encoder = attrs.get("encoder", "an unknown encoder")
    return FeatureFileError(
        f"{path}: features of dimension {got} (from {encoder}), but the model expects "
        f"{expected}; use feature files of the encoder the model was trained on"
    )


@contextlib.contextmanager
def _open_features(path: Path) -> Iterator[Any]:
    """The open HDF5 file of a feature file that has a ``features`` dataset; a missing,
    unreadable or foreign file is a :class:`FeatureFileError` naming it."""
    h5py = _h5py()
    if not path.is_file():
        raise FeatureFileError(f"{path}: feature file not found")
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f:
                raise FeatureFileError(
                    f"{path}: no 'features' dataset (has {sorted(f.keys())}); expected the "
                    "CLAM/TRIDENT layout: features (N, D) and coords (N, 2)"
                )
            yield f
    except OSError as exc:
        raise FeatureFileError(
            f"{path}: not a readable HDF5 file (corrupt or truncated?): {exc}"
        ) from None


def _feature_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, int]:
    """``(N, D)`` of a ``features`` dataset of ``shape`` (some tools keep a batch axis of 1)."""
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 2:
        raise FeatureFileError(f"{path}: 'features' must be (N, D), got shape {shape}")
    return int(shape[0]), int(shape[1])


def read_feature_dim(path: str | Path, feature_dim: int | None = None) -> int:
    """The feature dimension ``D`` of a feature file, reading only its header.

    Args:
        path: the ``.h5`` file.
        feature_dim: the ``D`` a model expects (checked as by :func:`read_features`).

    Raises:
        FeatureFileError: a missing or unreadable file, no 2-D ``features`` dataset, or
            another dimension than ``feature_dim`` (the message names both and the file).
    """
    path = Path(path)
    with _open_features(path) as f:
        shape = tuple(f["features"].shape)
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
    _, dim = _feature_shape(path, shape)
    if feature_dim is not None and dim != feature_dim:
        raise _dimension_error(path, dim, attrs, feature_dim)
    return dim


def read_features(path: str | Path, feature_dim: int | None = None) -> FeatureFile:
    """Read one slide's feature file (gigastream's, CLAM's or TRIDENT's layout).

    Args:
        path: the ``.h5`` file.
        feature_dim: the ``D`` a model expects; a file of another dimension is an error
            naming both (features of another encoder).

    Raises:
        FeatureFileError: a missing or corrupt file, no ``features`` dataset, features and
            coords of different lengths, or the wrong feature dimension.
    """
    path = Path(path)
    with _open_features(path) as f:
        features = np.asarray(f["features"][()], dtype=np.float32)
        coords = np.asarray(f["coords"][()]) if "coords" in f else None
        attrs = _attrs(f)
    features = features.reshape(_feature_shape(path, features.shape))
    if coords is None:
        coords = np.zeros((features.shape[0], 2), dtype=np.int64)
    coords = coords.reshape(-1, 2).astype(np.int64)
    if coords.shape[0] != features.shape[0]:
        raise FeatureFileError(f"{path}: {features.shape[0]} features but {coords.shape[0]} coords")
    if feature_dim is not None and features.shape[1] != feature_dim:
        raise _dimension_error(path, int(features.shape[1]), attrs, feature_dim)
    return FeatureFile(features, coords, attrs, path)


__all__ = [
    "FeatureFile",
    "FeatureFileError",
    "feature_key",
    "read_attrs",
    "read_feature_dim",
    "read_features",
    "write_features",
]
