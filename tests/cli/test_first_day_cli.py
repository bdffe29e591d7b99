"""A first day with one's own slides (issue 16), through the real ``gigastream`` command:
slides without mpp metadata (``--slide-mpp``, only for them), slides scanned coarser than
the run (refused beyond ``data.max_upsample``), the positive class (``--positive-class``)
and a manifest too small for the default validation hold-out."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gigastream.wsi.pyramid import write_pyramid
from gigastream.wsi.reader import SlideReader
from tests.cli.clitools import cli as _cli
from tests.cli.clitools import one_line_error as _one_line_error
from tests.cli.clitools import train_args as _train
from tests.train.conftest import copy_manifest, write_tiny_yaml


def _bare_png(slide: Path, dest: Path, mpp: float) -> str:
    """``slide`` read at ``mpp`` and saved as a PNG, which has no mpp metadata."""
    with SlideReader.open(slide) as reader:
        Image.fromarray(reader.read_at_mpp(mpp)).save(dest)
    return str(dest)


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _evaluate(capsys, checkpoint, manifest, out, *flags):
    return _cli(
        capsys, "evaluate", "--checkpoint", checkpoint, "--manifest", manifest, "--out", out,
        "--no-progress", *flags,
    )  # fmt: skip


def _probabilities(out: Path) -> dict[str, list[float]]:
    metrics = json.loads((out / "metrics.json").read_text())
    return {p["slide_id"]: p["probs"] for p in metrics["predictions"]}


# ----------------------------------------------------------------------------- 1. --slide-mpp
def test_tissue_slide_mpp_does_not_override_a_slides_own_mpp(tmp_path, capsys):
    image = np.full((512, 512, 3), 245, np.uint8)
    image[64:448, 96:416] = (190, 100, 170)
    write_pyramid(tmp_path / "own.tif", [image], 512, 512, mpp=0.5)  # metadata: 0.5 um/px
    Image.fromarray(image).save(tmp_path / "bare.png")  # none
    out = tmp_path / "masks"
    code, printed, err = _cli(
        capsys, "tissue", tmp_path / "own.tif", tmp_path / "bare.png", "--out", out,
        "--slide-mpp", "2", "--mpp", "8",
    )  # fmt: skip
    assert code == 0, err
    with Image.open(out / "own.tissue.png") as own, Image.open(out / "bare.tissue.png") as bare:
        assert own.size == (32, 32)  # 512 px at its own 0.5 um/px, at 8 um/px (was 128: 2.0)
        assert bare.size == (128, 128)  # 512 px at --slide-mpp 2, at 8 um/px
    assert "own.tif: tissue" in printed and "(slide at 0.5 um/px)" in printed
    assert "(slide at 2 um/px)" in printed
    code, _, err = _cli(capsys, "tissue", tmp_path / "bare.png", "--out", out, "--slide-mpp", "-1")
    _one_line_error(code, err, "--slide-mpp must be a positive number")


def test_evaluate_slide_mpp_applies_only_to_slides_without_metadata(
    tmp_path, trained_run, manifest, capsys
):
    checkpoint = trained_run / "checkpoints" / "best.ckpt"
    slides = manifest.parent / "slides"
    own = str(slides / "synth_000.tif")  # metadata: 0.5 um/px
    bare = _bare_png(slides / "synth_001.tif", tmp_path / "bare.png", 1.0)  # 256 px, no mpp
    rows = [
        {"slide_id": "own", "path": own, "label": "negative", "mpp": ""},
        {"slide_id": "bare", "path": bare, "label": "positive", "mpp": "1.0"},
    ]
    given = _write_manifest(tmp_path / "given.csv", rows)  # the manifest's mpp column
    code, _, err = _evaluate(capsys, checkpoint, given, tmp_path / "given")
    assert code == 0, err
    expected = _probabilities(tmp_path / "given")
    assert set(expected) == {"own", "bare"}

    without = _write_manifest(tmp_path / "without.csv", [{**r, "mpp": ""} for r in rows])
    code, printed, err = _evaluate(
        capsys, checkpoint, without, tmp_path / "flag", "--slide-mpp", "1"
    )
    assert code == 0, err
    got = _probabilities(tmp_path / "flag")
    assert set(got) == {"own", "bare"}  # the PNG is read at --slide-mpp 1 ...
    np.testing.assert_allclose(got["bare"], expected["bare"], rtol=0, atol=1e-6)
    # ... and synth_000 at its own 0.5 um/px: --slide-mpp 1 would make its input 512^2 px
    np.testing.assert_allclose(got["own"], expected["own"], rtol=0, atol=1e-6)

    code, printed, err = _evaluate(capsys, checkpoint, without, tmp_path / "none")
    assert code == 0, err
    assert "skipped 1 slide(s): bare:" in printed and "--slide-mpp" in printed
    code, _, err = _evaluate(capsys, checkpoint, without, tmp_path / "bad", "--slide-mpp", "0")
    _one_line_error(code, err, "--slide-mpp must be a positive number")


def test_train_slide_mpp_reads_slides_without_metadata(tmp_path, manifest, capsys):
    slides = manifest.parent / "slides"

    def bare_two(rows):  # two slides as PNGs at 1 um/px without mpp; the rest keep 0.5 um/px
        for i in (0, 5):
            rows[i] = {**rows[i], "path": _bare_png(slides / f"synth_00{i}.tif", tmp_path / f"b{i}.png", 1.0), "mpp": ""}  # fmt: skip
        return [{**r, "mpp": ""} for r in rows]

    edited = copy_manifest(manifest, tmp_path / "manifest.csv", bare_two)
    config = write_tiny_yaml(tmp_path / "t.yaml")
    code, printed, err = _cli(
        capsys, *_train(edited, tmp_path / "run", config), "--dry-run", "--slide-mpp", "1"
    )
    assert code == 0, err
    assert "unreadable" not in printed and "8 slides:" in printed
    # every input is 256^2 px: the TIFFs kept their own 0.5 um/px (at 1 um/px, 512^2 px)
    assert "largest slide: " in printed and " 256x256 px at 1.0 um/px" in printed
    assert "512x512" not in printed
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- 2. upsampling
def test_a_slide_scanned_coarser_than_the_run_is_refused_naming_the_setting(
    tmp_path, trained_run, manifest, capsys
):
    checkpoint = trained_run / "checkpoints" / "best.ckpt"  # the run streams at 1 um/px
    slides = manifest.parent / "slides"
    coarse = _bare_png(slides / "synth_002.tif", tmp_path / "coarse.png", 2.0)
    rows = [
        {"slide_id": "fine", "path": str(slides / "synth_000.tif"), "label": "negative", "mpp": ""},
        {"slide_id": "coarse", "path": coarse, "label": "positive", "mpp": "2.0"},
    ]
    code, printed, err = _evaluate(
        capsys, checkpoint, _write_manifest(tmp_path / "m.csv", rows), tmp_path / "eval"
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert [p["slide_id"] for p in metrics["predictions"]] == ["fine"]  # was both
    reason = metrics["skipped_slides"]["coarse"]
    for needle in ("coarse (", "scanned at 2 um/px", "the run's 1 um/px", "upsampled 2x"):
        assert needle in reason, reason
    assert "data.max_upsample" in reason and "skipped 1 slide(s): coarse:" in printed


# ----------------------------------------------------------------------------- 3. positive class
def test_evaluate_uses_and_prints_the_checkpoints_class_order(
    tmp_path, trained_run, manifest, capsys
):
    import torch

    code, printed, err = _evaluate(
        capsys, trained_run / "checkpoints" / "best.ckpt", manifest, tmp_path / "as_trained"
    )
    assert code == 0, err
    assert "classes ['negative', 'positive'] (the checkpoint's order), positive class 'positive'" in printed  # fmt: skip
    trained = json.loads((tmp_path / "as_trained" / "metrics.json").read_text())
    # the same weights with the class order reversed: index 1 now means "negative"
    state = torch.load(trained_run / "checkpoints" / "best.ckpt", weights_only=True)
    state["gigastream"]["class_names"] = ["positive", "negative"]
    torch.save(state, tmp_path / "reversed.ckpt")
    code, printed, err = _evaluate(capsys, tmp_path / "reversed.ckpt", manifest, tmp_path / "rev")
    assert code == 0, err
    assert "classes ['positive', 'negative'] (the checkpoint's order), positive class 'negative'" in printed  # fmt: skip
    metrics = json.loads((tmp_path / "rev" / "metrics.json").read_text())
    assert metrics["positive_class"] == "negative" and trained["positive_class"] == "positive"
    assert metrics["auc"] == pytest.approx(1 - trained["auc"])  # the AUC of the last class
    header = (tmp_path / "rev" / "predictions.csv").read_text().splitlines()[0]
    assert header == "slide_id,label,p_positive,p_negative"


def test_train_positive_class_goes_last_and_a_typo_is_one_error(tmp_path, manifest, capsys):
    config = write_tiny_yaml(tmp_path / "t.yaml")
    out = tmp_path / "run"
    code, _, err = _cli(capsys, *_train(manifest, out, config), "--dry-run", "--positive-class", "postive")  # fmt: skip
    _one_line_error(code, err, "positive_class 'postive' is not one of the labels", "did you mean 'positive'?")  # fmt: skip
    code, printed, err = _cli(capsys, *_train(manifest, out, config), "--dry-run", "--positive-class", "negative")  # fmt: skip
    assert code == 0, err
    assert "classes ['positive', 'negative']" in printed and "positive class 'negative'" in printed
    assert not out.exists()


# ----------------------------------------------------------------------------- 5. tiny manifest
def test_a_manifest_too_small_for_the_hold_out_says_how_many_cases_and_the_setting(
    tmp_path, manifest, capsys
):
    def one_of_each(rows):
        return [next(r for r in rows if r["label"] == label) for label in ("negative", "positive")]

    small = copy_manifest(manifest, tmp_path / "manifest.csv", one_of_each)
    out = tmp_path / "run"
    code, _, err = _cli(capsys, *_train(small, out, write_tiny_yaml(tmp_path / "t.yaml")))
    line = _one_line_error(
        code, err, "2 slide(s) of 2 case(s) and no split column or splits file",
        "train.val_fraction 0.25", "needs at least 4 cases", "set train.val_fraction to 0.5",
    )  # fmt: skip
    assert "cannot fill" not in line  # no folds were asked for
    assert not out.exists()
