"""``gigastream evaluate`` (issue 16): which slides are scored (``--split``, said in the
output), the calibration of p(positive) (Brier score, ECE over 10 equal-width bins, checked
by hand) and the accuracy at the checkpoint's stored decision threshold."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from gigastream.train.prediction import store_threshold
from tests.cli.clitools import cli as _cli
from tests.cli.clitools import one_line_error as _one_line_error
from tests.train.conftest import copy_manifest

#: The split of each slide of the tiny dataset (val: one of each class; test: the same).
SPLIT = {
    "synth_000": "train",
    "synth_001": "val",
    "synth_002": "val",
    "synth_003": "test",
    "synth_004": "test",
    "synth_005": "train",
    "synth_006": "train",
    "synth_007": "train",
}


def _evaluate(capsys, checkpoint, manifest, out, *flags):
    return _cli(
        capsys, "evaluate", "--checkpoint", checkpoint, "--manifest", manifest, "--out", out,
        "--no-progress", *flags,
    )  # fmt: skip


@pytest.fixture
def split_manifest(tmp_path, manifest):
    return copy_manifest(
        manifest,
        tmp_path / "split.csv",
        lambda rows: [{**r, "split": SPLIT[r["slide_id"]]} for r in rows],
    )


def _by_hand(predictions, threshold):
    """Brier, ECE (10 equal-width bins) and the accuracy at ``threshold`` of p(positive)."""
    p = np.array([row["probs"][1] for row in predictions])
    y = np.array([row["label"] == "positive" for row in predictions], float)
    brier = sum((pi - yi) ** 2 for pi, yi in zip(p, y, strict=True)) / len(p)
    ece = 0.0
    for k in range(10):
        low, high = k / 10, (k + 1) / 10
        members = [i for i in range(len(p)) if low <= p[i] < high or (k == 9 and p[i] == 1.0)]
        if members:
            gap = abs(np.mean(y[members]) - np.mean(p[members]))
            ece += len(members) / len(p) * gap
    accuracy = float(np.mean((p >= threshold) == (y == 1)))
    return brier, ece, accuracy


def test_evaluate_scores_the_slides_not_trained_on_and_says_which(
    tmp_path, trained_run, split_manifest, capsys
):
    checkpoint = tmp_path / "model.ckpt"
    shutil.copy(trained_run / "checkpoints" / "best.ckpt", checkpoint)
    store_threshold(checkpoint, 1e-6)  # as training stores it: nearly every slide positive
    code, printed, err = _evaluate(capsys, checkpoint, split_manifest, tmp_path / "default")
    assert code == 0, err
    assert "scored 4 slide(s)" in printed and "split not train (val: 2, test: 2)" in printed
    metrics = json.loads((tmp_path / "default" / "metrics.json").read_text())
    scored = sorted(p["slide_id"] for p in metrics["predictions"])
    assert scored == ["synth_001", "synth_002", "synth_003", "synth_004"]  # was all 8
    assert metrics["split"] == "not train (val: 2, test: 2)" and metrics["scored_slides"] == 4
    brier, ece, accuracy = _by_hand(metrics["predictions"], 1e-6)
    assert metrics["brier"] == pytest.approx(brier, abs=1e-12)
    assert metrics["ece"] == pytest.approx(ece, abs=1e-12)
    assert metrics["threshold"] == 1e-6
    assert metrics["accuracy_at_threshold"] == pytest.approx(accuracy, abs=1e-12)
    assert f"Brier {brier:.3f}, ECE {ece:.3f}" in printed
    assert f"{accuracy:.3f} at the checkpoint's threshold 1e-06" in printed
    assert "accuracy" in printed and " at 0.5" in printed

    code, printed, err = _evaluate(
        capsys, trained_run / "checkpoints" / "best.ckpt", split_manifest, tmp_path / "val",
        "--split", "val",
    )  # fmt: skip
    assert code == 0, err
    assert "scored 2 slide(s)" in printed and "split val (val: 2)" in printed
    metrics = json.loads((tmp_path / "val" / "metrics.json").read_text())
    assert sorted(p["slide_id"] for p in metrics["predictions"]) == ["synth_001", "synth_002"]
    # training stored the threshold it chose on its validation slides (Youden's J)
    run = json.loads((trained_run / "metrics.json").read_text())
    assert 0 < metrics["threshold"] < 1 and metrics["threshold"] == run["final"]["val_threshold"]
    assert metrics["accuracy_at_threshold"] is not None
    assert "at the checkpoint's threshold" in printed


def test_evaluate_split_flags_are_checked(tmp_path, trained_run, manifest, capsys):
    checkpoint = trained_run / "checkpoints" / "best.ckpt"
    code, _, err = _evaluate(capsys, checkpoint, manifest, tmp_path / "e", "--split", "val")
    _one_line_error(code, err, "--split val:", "has no split column", "--split all")
    assert not (tmp_path / "e").exists()
    only_train = copy_manifest(
        manifest, tmp_path / "train.csv", lambda rows: [{**r, "split": "train"} for r in rows]
    )
    code, _, err = _evaluate(capsys, checkpoint, only_train, tmp_path / "e")
    _one_line_error(code, err, "no slide has split not train (splits: train: 8)")


def test_evaluate_says_when_it_scores_the_checkpoints_training_slides(
    tmp_path, trained_run, manifest, capsys
):
    code, printed, err = _evaluate(
        capsys, trained_run / "checkpoints" / "best.ckpt", manifest, tmp_path / "all"
    )
    assert code == 0, err
    assert "split all (the manifest has no split column)" in printed
    assert "warning: 6 of the 8 scored slides are slides the checkpoint was trained on" in printed
    metrics = json.loads((tmp_path / "all" / "metrics.json").read_text())
    validation = {line.split(",")[0] for line in (trained_run / "predictions.csv").read_text().splitlines()[1:]}  # fmt: skip
    assert len(metrics["training_slides_scored"]) == 6
    assert not validation & set(metrics["training_slides_scored"])
