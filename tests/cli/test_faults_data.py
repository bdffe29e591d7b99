"""Faults in a new user's data (issue 15), through the real ``gigastream`` command.

Stale tissue masks are never reused for another slide file; a run without one usable
training or validation slide fails naming them; split typos, a train/val leak, a splits
file without integer folds, a manifest that is not UTF-8 and slide ids that are not safe
file names are refused before anything is written; a slide whose mpp makes its input
absurdly large or smaller than a pixel is skipped and listed, and the run goes on.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli.clitools import cli as _cli
from tests.cli.clitools import one_line_error as _one_line_error
from tests.cli.clitools import train_args as _train
from tests.train.conftest import (
    copy_manifest,
    write_tiny_yaml,
)


def _probabilities(path: Path) -> dict[str, tuple[float, ...]]:
    with open(path, newline="") as f:
        return {
            r["slide_id"]: (float(r["p_negative"]), float(r["p_positive"]))
            for r in csv.DictReader(f)
        }


def _split(rows, train: int = 6):
    """Rows ``0 .. train-1`` training, the others validation (the manifest's split column)."""
    return [{**r, "split": "train" if i < train else "val"} for i, r in enumerate(rows)]


def _glass(folder: Path, slide_id: str) -> str:
    """A tissue-free 512^2 px slide (the manifest's 0.5 um/px applies)."""
    path = folder / f"{slide_id}.png"
    Image.fromarray(np.full((512, 512, 3), 246, np.uint8)).save(path)
    return str(path)


# ----------------------------------------------------------------------------- 1. masks
def test_evaluating_another_cohort_into_a_used_out_recomputes_the_masks(
    tmp_path, trained_run, manifest, capsys
):
    checkpoint = trained_run / "checkpoints" / "best.ckpt"

    def shuffled(rows):  # the same slide ids, other files
        paths = [r["path"] for r in rows]
        return [{**r, "path": paths[(i + 3) % len(rows)]} for i, r in enumerate(rows)]

    other = copy_manifest(manifest, tmp_path / "other.csv", shuffled)
    used, fresh = tmp_path / "used", tmp_path / "fresh"
    for cohort, out in ((manifest, used), (other, used), (other, fresh)):
        code, _, err = _cli(
            capsys, "evaluate", "--checkpoint", checkpoint, "--manifest", cohort, "--out", out,
            "--no-progress",
        )  # fmt: skip
        assert code == 0, err
    again, expected = (
        _probabilities(used / "predictions.csv"),
        _probabilities(fresh / "predictions.csv"),
    )
    assert again.keys() == expected.keys()
    for slide_id, probs in expected.items():
        np.testing.assert_allclose(again[slide_id], probs, rtol=0, atol=1e-6, err_msg=slide_id)


# ----------------------------------------------------------------------------- 2. no usable slides
@pytest.mark.parametrize("bn_calibration", [0, None], ids=["no-calibration", "calibration"])
def test_no_usable_training_slide_fails_naming_them(tmp_path, manifest, capsys, bn_calibration):
    def glass_training(rows):
        rows = _split(rows)
        for row in rows[:6]:
            row["path"] = _glass(tmp_path, row["slide_id"])
        return rows

    bad = copy_manifest(manifest, tmp_path / "manifest.csv", glass_training)
    config = write_tiny_yaml(
        tmp_path / "t.yaml", train={"epochs": 1, "heatmaps": 0, "bn_calibration": bn_calibration}
    )
    out = tmp_path / "run"
    code, _, err = _cli(capsys, *_train(bad, out, config))
    line = _one_line_error(code, err, "no usable training slide", "synth_000: ", "no tissue found")
    assert "synth_005" in line
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        metrics["status"].startswith("failed: ") and "no usable training slide" in metrics["status"]
    )
    assert not (out / "checkpoints" / "best.ckpt").exists()


def test_no_usable_validation_slide_fails_naming_them(tmp_path, manifest, capsys):
    def glass_validation(rows):
        rows = _split(rows)
        for row in rows[6:]:
            row["path"] = _glass(tmp_path, row["slide_id"])
        return rows

    bad = copy_manifest(manifest, tmp_path / "manifest.csv", glass_validation)
    config = write_tiny_yaml(tmp_path / "t.yaml", train={"epochs": 1, "heatmaps": 0})
    out = tmp_path / "run"
    code, _, err = _cli(capsys, *_train(bad, out, config))
    _one_line_error(
        code, err, "no usable validation slide", "synth_006: ", "synth_007: ", "no tissue found"
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"].startswith("failed: ")
    assert sorted(metrics["skipped_slides"]) == ["synth_006", "synth_007"]
    assert not (out / "checkpoints" / "best.ckpt").exists()


# ----------------------------------------------------------------------------- 3, 4. manifests
def _typo(rows):
    rows = _split(rows)
    rows[1]["split"], rows[6]["split"] = "trian", "validaton"
    return rows


def _leak(rows):
    rows = _split(rows)
    rows[7]["path"] = rows[2]["path"]
    return rows


def _unsafe_id(rows):
    rows[0]["slide_id"] = "../../x"
    return rows


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (_typo, ["'trian' (synth_001; did you mean 'train'?)", "'validaton' (synth_006; did"]),
        (_leak, ["train/val leak", "'synth_002' (training) and 'synth_007' (validation)"]),
    ],
    ids=["split-typo", "leak"],
)
def test_split_faults_are_one_line_before_writing(tmp_path, manifest, capsys, edit, needles):
    bad = copy_manifest(manifest, tmp_path / "manifest.csv", edit)
    out = tmp_path / "run"
    code, _, err = _cli(capsys, *_train(bad, out, write_tiny_yaml(tmp_path / "t.yaml")))
    _one_line_error(code, err, *needles)
    assert not out.exists()


def test_a_splits_file_without_fold_is_one_line(tmp_path, manifest, capsys):
    splits = tmp_path / "splits.csv"
    splits.write_text("slide_id,case_id,label\nsynth_000,synth_000,negative\n")
    out = tmp_path / "run"
    args = _train(manifest, out, write_tiny_yaml(tmp_path / "t.yaml"), "--splits", splits)
    code, _, err = _cli(capsys, *args, "--fold", 0)
    _one_line_error(code, err, str(splits), "'fold'")
    assert not out.exists()


def test_unsafe_slide_id_and_latin1_manifest_are_refused_before_writing(tmp_path, manifest, capsys):
    bad = copy_manifest(manifest, tmp_path / "manifest.csv", _unsafe_id)
    out = tmp_path / "deep" / "run"
    code, _, err = _cli(capsys, *_train(bad, out, write_tiny_yaml(tmp_path / "t.yaml")))
    assert code == 1 and "slide_id '../../x'" in err and "letters, digits" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv", "t.yaml"]

    latin = tmp_path / "latin.csv"
    latin.write_bytes(bad.read_text().replace("../../x", "lésion").encode("latin-1"))
    code, _, err = _cli(capsys, *_train(latin, out, tmp_path / "t.yaml"))
    assert code == 1 and str(latin) in err and "save it as UTF-8" in err, err
    assert not (tmp_path / "deep").exists()


# ----------------------------------------------------------------------------- 5. extreme mpp
def test_slides_at_absurd_mpps_are_skipped_and_listed(tmp_path, manifest, capsys):
    def absurd(rows):
        # two training slides (the validation ones are synth_000 and synth_005):
        rows[2]["mpp"], rows[3]["mpp"] = "5000", "1e-09"  # 2.56e6^2 px; a millionth of a pixel
        return rows

    bad = copy_manifest(manifest, tmp_path / "manifest.csv", absurd)
    config = write_tiny_yaml(tmp_path / "t.yaml", train={"epochs": 1, "heatmaps": 0})
    out = tmp_path / "run"
    code, printed, err = _cli(capsys, *_train(bad, out, config))
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    skipped = metrics["skipped_slides"]
    assert sorted(skipped) == ["synth_002", "synth_003"], skipped
    assert (
        "5000 um/px" in skipped["synth_002"] and "2,560,000 x 2,560,000 px" in skipped["synth_002"]
    )
    assert "1e-09 um/px" in skipped["synth_003"] and "under one pixel" in skipped["synth_003"]
    assert "skipped 2 slide(s)" in printed
