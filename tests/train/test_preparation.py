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


def _classes_split(rows, garbage, unreadable_class: str | None, val_class: str | None):
    """Three slides of each class in training, one of each in validation (or, with
    ``val_class``, validation holds only that class); ``unreadable_class``'s training files
    are garbage."""
    out, seen = [], {}
    for row in sorted(rows, key=lambda r: r["slide_id"]):
        k = seen[row["label"]] = seen.get(row["label"], -1) + 1
        split = "train" if k < 3 else "val"
        if split == "val" and val_class is not None and row["label"] != val_class:
            split = "train"
        if split == "train" and row["label"] == unreadable_class:
            row = {**row, "path": str(garbage)}
        out.append({**row, "split": split})
    return out


def test_a_class_without_a_readable_training_slide_is_refused(tmp_path, manifest):
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"\x00not a slide" * 100)
    bad = copy_manifest(
        manifest,
        tmp_path / "manifest.csv",
        lambda rows: _classes_split(rows, garbage, "positive", None),
    )
    with pytest.raises(ConfigError) as info:
        prepare(tiny_config(bad))
    text = str(info.value)
    assert text.startswith("class 'positive' has no training slide that can be used (")
    assert "garbage.tif" in text and "\n" not in text
    assert "the run would learn without it" in text
    # every class with a readable training slide: accepted
    ok = copy_manifest(
        manifest, tmp_path / "ok.csv", lambda rows: _classes_split(rows, garbage, None, None)
    )
    prepare(tiny_config(ok))


def test_a_one_class_validation_set_is_refused(tmp_path, manifest):
    one = copy_manifest(
        manifest,
        tmp_path / "manifest.csv",
        lambda rows: _classes_split(rows, None, None, "negative"),
    )
    with pytest.raises(ConfigError) as info:
        prepare(tiny_config(one))
    text = str(info.value)
    assert "the validation slides that can be used are all of class 'negative'" in text
    assert "synth_0" in text and "validation AUC" in text and "\n" not in text
    assert not (tmp_path / "run").exists()


def test_an_unreadable_validation_class_leaves_one_class_and_is_refused(tmp_path, manifest):
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"\x00not a slide" * 100)

    def edit(rows):
        out = _classes_split(rows, None, None, None)
        return [
            {**r, "path": str(garbage)} if r["split"] == "val" and r["label"] == "positive" else r
            for r in out
        ]

    bad = copy_manifest(manifest, tmp_path / "manifest.csv", edit)
    with pytest.raises(
        ConfigError, match=r"all of class 'negative' .*garbage\.tif.* cannot be used"
    ):
        prepare(tiny_config(bad))
