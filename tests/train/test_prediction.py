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


# ----------------------------------------------------------------------------- issue 16
def test_validation_threshold_is_youdens_and_is_stored_in_the_checkpoint(tmp_path, trained_run):
    import shutil

    from gigastream.train.prediction import store_threshold, validation_threshold

    # labelled and read: a (p 0.2, negative) and b (p 0.7, positive): the midpoint
    assert validation_threshold(RESULTS, ["negative", "positive"]) == pytest.approx(0.45)
    assert validation_threshold(RESULTS[:1], ["negative", "positive"]) is None  # one class
    assert validation_threshold(RESULTS, ["a", "b", "c"]) is None
    checkpoint = tmp_path / "best.ckpt"
    shutil.copy(trained_run / "checkpoints" / "best.ckpt", checkpoint)
    store_threshold(checkpoint, 0.45)
    state = torch.load(checkpoint, weights_only=True)
    assert state["gigastream"]["threshold"] == 0.45
    module, _ = load_classifier(checkpoint)  # still a checkpoint like any other
    assert module.class_names == ["negative", "positive"]
    store_threshold(checkpoint, None)  # nothing to store: unchanged
    assert torch.load(checkpoint, weights_only=True)["gigastream"]["threshold"] == 0.45


def test_scored_rows_by_split():
    from gigastream.train.evaluation import scored_rows
    from gigastream.wsi.manifest import ManifestRow

    rows = [
        ManifestRow(name, f"{name}.tif", "x", name, split)
        for name, split in (("a", "train"), ("b", "val"), ("c", "Test"), ("d", None))
    ]

    def ids(split):
        chosen, words = scored_rows(rows, split)
        return [r.slide_id for r in chosen], words

    assert ids(None) == (["b", "c", "d"], "not train (val: 1, Test: 1, (none): 1)")
    assert ids("val") == (["b"], "val (val: 1)")
    assert ids("test") == (["c"], "test (Test: 1)")
    assert ids("all")[0] == ["a", "b", "c", "d"]
    no_split = [ManifestRow("a", "a.tif", "x", "a")]
    assert scored_rows(no_split, None)[1] == "all (the manifest has no split column)"
    with pytest.raises(ConfigError, match="--split val: m.csv has no split column"):
        scored_rows(no_split, "val", "m.csv")
    with pytest.raises(ConfigError, match="'vla' .b; did you mean 'val'"):
        scored_rows([rows[0], ManifestRow("b", "b.tif", "x", "b", "vla")], None)


def test_predict_slide_mpp_reads_a_slide_without_metadata(tmp_path, trained_run, manifest):
    from PIL import Image

    from gigastream.wsi.reader import SlideReader

    checkpoint = trained_run / "checkpoints" / "best.ckpt"
    tif = manifest.parent / "slides" / "synth_000.tif"  # metadata: 0.5 um/px
    with SlideReader.open(tif) as slide:
        Image.fromarray(slide.read_at_mpp(1.0)).save(tmp_path / "bare.png")  # none
    kwargs = {"device": "cpu", "progress": False, "num_workers": 0}
    without = predict_slide_files(checkpoint, [tmp_path / "bare.png"], tmp_path / "a", **kwargs)
    assert "no microns-per-pixel metadata" in without["skipped_slides"]["bare"]
    given = predict_slide_files(
        checkpoint, [tmp_path / "bare.png", tif], tmp_path / "b", slide_mpp=1.0, **kwargs
    )
    assert [p["slide_id"] for p in given["predictions"]] == ["bare", "synth_000"]
    alone = predict_slide_files(checkpoint, [tif], tmp_path / "c", **kwargs)
    np.testing.assert_allclose(  # the TIFF keeps its own 0.5 um/px
        given["predictions"][1]["probs"], alone["predictions"][0]["probs"], rtol=0, atol=1e-6
    )
    with pytest.raises(ConfigError, match="data.slide_mpp .--slide-mpp. must be a positive"):
        predict_slide_files(checkpoint, [tif], tmp_path / "d", slide_mpp=-1.0, **kwargs)


def test_evaluation_metrics_of_no_slides_and_of_three_classes():
    from gigastream.train.evaluation import evaluation_metrics

    empty = evaluation_metrics([], np.zeros((0, 2)), 0.4)
    assert math.isnan(empty["brier"]) and math.isnan(empty["ece"])
    assert empty["threshold"] == 0.4 and math.isnan(empty["accuracy_at_threshold"])
    three = evaluation_metrics([2], np.array([[0.1, 0.1, 0.8]]), 0.4)
    assert three["threshold"] is None and three["accuracy_at_threshold"] is None
    assert three["brier"] == pytest.approx(0.2**2)  # of the last class
