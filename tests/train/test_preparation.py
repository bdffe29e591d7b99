"""Validating a run before anything is written (``gigastream.train.preparation``)."""

from __future__ import annotations

import os

import pytest

from gigastream.train.config import ConfigError
from gigastream.train.config_files import load_config
from gigastream.train.fitting import fit
from gigastream.train.preparation import build_model, prepare, resolved_config
from tests.train.conftest import copy_manifest, tiny_config


def test_prepare_splits_and_resolves(manifest):
    prepared = prepare(tiny_config(manifest), check_plan=False)
    assert prepared.class_names == ["negative", "positive"]
    assert len(prepared.train_rows) == 6 and len(prepared.val_rows) == 2
    assert not {r.slide_id for r in prepared.train_rows} & {r.slide_id for r in prepared.val_rows}
    assert prepared.accelerator in ("cpu", "gpu")
    resolved = resolved_config(prepared)
    assert resolved.class_names == ["negative", "positive"] and resolved.model.num_classes == 2
    assert os.path.isabs(resolved.manifest)


def test_build_model_names_missing_weights(tmp_path, manifest):
    from dataclasses import replace

    config = tiny_config(manifest)
    model = build_model(config, 2)
    assert model.config.num_classes == 2 and not model.config.progress
    bad = replace(config, model=replace(config.model, weights=str(tmp_path / "none.pth")))
    with pytest.raises(ConfigError, match="model.weights: .*none.pth"):
        build_model(bad, 2)


def test_no_manifest_is_refused():
    with pytest.raises(ConfigError, match="no manifest: pass --manifest"):
        prepare(load_config({}))


def test_one_class_is_refused(tmp_path, manifest):
    from gigastream.models.streaming_mil import StreamingMILConfig
    from gigastream.train.selection import check_labels

    with pytest.raises(ValueError, match="num_classes"):
        StreamingMILConfig(num_classes=0).validate()
    StreamingMILConfig(num_classes=1).validate()  # a regression's one output
    with pytest.raises(ConfigError, match="at least 2 classes"):
        load_config({"class_names": ["positive"]})
    with pytest.raises(ConfigError, match="at least two classes"):
        check_labels(["positive", "positive"], None)
    with pytest.raises(ConfigError, match="num_classes"):
        load_config({"model": {"num_classes": 1}})

    def all_positive(rows):
        return [{**r, "label": "positive"} for r in rows]

    one = copy_manifest(manifest, tmp_path / "manifest.csv", all_positive)
    with pytest.raises(ConfigError, match="at least two classes"):
        fit(tiny_config(one), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert os.listdir(tmp_path) == ["manifest.csv"]


def _with_split(rows, garbage, unreadable: str):
    """Rows 0-5 training and 6-7 validation; the ``unreadable`` side's files are garbage."""
    out = []
    for i, row in enumerate(rows):
        split = "train" if i < 6 else "val"
        if split == unreadable:
            row = {**row, "path": str(garbage)}
        out.append({**row, "split": split})
    return out


@pytest.mark.parametrize(("unreadable", "count"), [("train", 6), ("val", 2)])
def test_no_readable_training_or_validation_slide_is_refused(tmp_path, manifest, unreadable, count):
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"\x00not a slide" * 100)
    bad = copy_manifest(
        manifest, tmp_path / "manifest.csv", lambda rows: _with_split(rows, garbage, unreadable)
    )
    with pytest.raises(ConfigError) as info:
        prepare(tiny_config(bad))
    text = str(info.value)
    side = "training" if unreadable == "train" else "validation"
    assert f"none of the {count} {side} slides can be used" in text and "\n" not in text
    assert "synth_00" in text and "garbage.tif" in text
