"""Feature files: gigastream's own, and files written the way CLAM and TRIDENT write them."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from gigastream.wsi.feature_files import (
    FeatureFileError,
    read_attrs,
    read_features,
    write_features,
)


def test_round_trip_keeps_values_and_attributes(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.standard_normal((5, 8)).astype(np.float32)
    coords = rng.integers(0, 10_000, (5, 2))
    path = write_features(
        tmp_path / "a.h5", features, coords, {"encoder": "timm:vit", "mpp": 0.5, "key": "abc"}
    )
    f = read_features(path, feature_dim=8)
    np.testing.assert_array_equal(f.features, features)
    np.testing.assert_array_equal(f.coords, coords)
    assert f.attrs["encoder"] == "timm:vit" and f.attrs["mpp"] == 0.5
    assert read_attrs(path)["key"] == "abc"
    assert not list(tmp_path.glob(".*.tmp"))


def test_reads_a_clam_style_file(tmp_path):
    """CLAM's create_patches/extract_features: features and coords datasets, the patch
    settings as attributes of coords, strings as bytes."""
    path = tmp_path / "clam.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.ones((4, 1024), np.float32))
        coords = f.create_dataset("coords", data=np.arange(8, dtype=np.int64).reshape(4, 2))
        coords.attrs["patch_size"] = 256
        coords.attrs["patch_level"] = 0
        coords.attrs["name"] = np.bytes_(b"slide_1")
    f = read_features(path)
    assert f.features.shape == (4, 1024) and f.coords[3].tolist() == [6, 7]
    assert f.attrs["patch_size"] == 256 and f.attrs["name"] == "slide_1"


def test_wrong_dimension_names_both(tmp_path):
    path = write_features(tmp_path / "b.h5", np.ones((2, 16)), np.zeros((2, 2)), {"encoder": "r18"})
    with pytest.raises(FeatureFileError, match="dimension 16 \\(from r18\\).*expects 512"):
        read_features(path, feature_dim=512)


@pytest.mark.parametrize("problem", ["missing", "truncated", "no_features", "lengths"])
def test_bad_files_are_named(tmp_path, problem):
    path = tmp_path / "bad.h5"
    if problem == "truncated":
        write_features(path, np.ones((50, 64)), np.zeros((50, 2)), {})
        path.write_bytes(path.read_bytes()[:200])
    elif problem == "no_features":
        with h5py.File(path, "w") as f:
            f.create_dataset("feats", data=np.ones((2, 2)))
    elif problem == "lengths":
        with h5py.File(path, "w") as f:
            f.create_dataset("features", data=np.ones((3, 2)))
            f.create_dataset("coords", data=np.ones((2, 2)))
    with pytest.raises(FeatureFileError, match="bad.h5"):
        read_features(path)
