"""Predictions of a trained classifier (``gigastream.train.prediction``): neutral metric
names, ``predictions.csv``, a model rebuilt from its checkpoint alone, bad inputs refused
before any output."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gigastream.train.config import ConfigError
from gigastream.train.files import RunError
from gigastream.train.prediction import (
    load_classifier,
    predict_slide_files,
    prefixed,
    summarize,
    write_predictions,
)

RESULTS = [
    {"slide_id": "a", "label": 0, "probs": np.array([0.8, 0.2]), "loss": 0.2},
    {"slide_id": "b", "label": 1, "probs": np.array([0.3, 0.7]), "loss": 0.4},
    {"slide_id": "c", "label": None, "probs": np.array([0.5, 0.5]), "loss": math.nan},
    {"slide_id": "d", "label": 1, "error": "d.tif: unreadable"},
]


def test_summarize_names_metrics_neutrally_and_prefixed_names_them():
    summary = summarize(RESULTS, ["negative", "positive"])
    assert summary["auc"] == 1.0 and summary["accuracy"] == 1.0
    assert summary["loss"] == pytest.approx(0.3)
    assert summary["slides"] == 2 and summary["prob_range"] == [0.2, 0.7]
    assert [p["label"] for p in summary["predictions"]] == ["negative", "positive", None]
    assert summary["skipped"] == {"d": "d.tif: unreadable"}
    named = prefixed(summary, "test_")
    assert list(named)[:4] == ["test_auc", "test_accuracy", "test_loss", "slides"]
    assert named["test_auc"] == summary["auc"] and named["predictions"] == summary["predictions"]


def test_summarize_without_labels_has_nan_metrics():
    summary = summarize(RESULTS[2:], ["negative", "positive"])
    assert math.isnan(summary["auc"]) and math.isnan(summary["loss"]) and summary["slides"] == 0


def test_write_predictions(tmp_path):
    path = write_predictions(tmp_path / "p.csv", RESULTS, ["negative", "positive"])
    assert path.read_text().splitlines() == [
        "slide_id,label,p_negative,p_positive",
        "a,negative,0.800000,0.200000",
        "b,positive,0.300000,0.700000",
        "c,,0.500000,0.500000",
    ]


def test_a_foreign_checkpoint_is_refused(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(RunError, match="not a gigastream checkpoint"):
        load_classifier(path)


def test_checkpoint_alone_predicts_with_heatmaps(tmp_path, trained_run, manifest):
    module, config = load_classifier(trained_run / "checkpoints" / "best.ckpt")
    assert module.class_names == ["negative", "positive"] and not module.training
    assert config.model.weights is None  # the weights come from the checkpoint
    slide = manifest.parent / "slides" / "synth_000.tif"
    result = predict_slide_files(
        trained_run / "checkpoints" / "best.ckpt",
        [slide],
        tmp_path / "out",
        device="cpu",
        progress=False,
        heatmaps=True,
        num_workers=0,
    )
    assert [p["slide_id"] for p in result["predictions"]] == ["synth_000"]
    assert result["heatmaps"] == [str(tmp_path / "out" / "synth_000.png")]
    assert (tmp_path / "out" / "predictions.csv").is_file()


def test_bad_slides_are_refused_before_any_output(tmp_path, trained_run):
    checkpoint = trained_run / "checkpoints" / "best.ckpt"
    with pytest.raises(ConfigError, match="slide not found"):
        predict_slide_files(checkpoint, [tmp_path / "none.tif"], tmp_path / "out")
    slide = tmp_path / "a" / "s.tif"
    slide.parent.mkdir()
    slide.write_bytes(b"x")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "s.tif").write_bytes(b"x")
    with pytest.raises(ConfigError, match="two slides are named 's'"):
        predict_slide_files(checkpoint, [slide, tmp_path / "b" / "s.tif"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
