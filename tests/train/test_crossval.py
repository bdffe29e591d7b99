"""Cross-validation (``gigastream.train.crossval``): refused without splits, every fold
validated before any is trained (the full run over three folds is in
``tests/cli/test_train_cli.py::test_cross_validation_over_all_folds``)."""

from __future__ import annotations

import csv

import pytest

from gigastream.train.config import ConfigError
from gigastream.train.crossval import fit_folds
from tests.train.conftest import tiny_config


def test_folds_need_a_splits_file(tmp_path, manifest):
    with pytest.raises(ConfigError, match="--folds all needs --splits"):
        fit_folds(tiny_config(manifest), tmp_path / "cv")
    assert not (tmp_path / "cv").exists()


def test_a_bad_fold_stops_before_any_training(tmp_path, manifest):
    with open(manifest, newline="") as f:
        ids = [row["slide_id"] for row in csv.DictReader(f)]
    splits = tmp_path / "splits.csv"
    # the splits file lacks the manifest's last slide: every fold is refused, fold 0 first
    rows = [f"{slide_id},{slide_id},x,{0 if i else 1}" for i, slide_id in enumerate(ids)]
    splits.write_text("slide_id,case_id,label,fold\n" + "\n".join(rows[:-1]) + "\n")
    with pytest.raises(ConfigError, match="have no fold"):
        fit_folds(tiny_config(manifest, splits=str(splits), fold=0), tmp_path / "cv")
    assert not (tmp_path / "cv").exists()
