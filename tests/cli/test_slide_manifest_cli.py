"""``predict``, ``heatmap`` and ``tissue`` take ``--manifest`` as their slide list (issue 16):
without SLIDE files the manifest's slides are read, with its mpp column and labels; with
SLIDE files it only labels them; neither is one clear line."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.cli.clitools import cli, one_line_error
from tests.train.conftest import copy_manifest


def _three(rows):
    """Three slides; the second's mpp is stated in the manifest (its file's: 0.5 um/px)."""
    rows = rows[:3]
    for row in rows:
        row["mpp"] = ""
    rows[1]["mpp"] = "0.25"
    return rows


@pytest.fixture
def small_manifest(tmp_path, manifest):
    return copy_manifest(manifest, tmp_path / "three.csv", _three)


def test_predict_reads_the_manifests_slides_with_their_labels(
    tmp_path, trained_run, small_manifest, capsys
):
    checkpoint = trained_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "pred"
    code, printed, err = cli(
        capsys, "predict", "--checkpoint", checkpoint, "--out", out, "--manifest", small_manifest,
        "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["slide_id"] for r in rows] == ["synth_000", "synth_001", "synth_002"]
    with open(small_manifest, newline="") as f:
        labels = {r["slide_id"]: r["label"] for r in csv.DictReader(f)}
    assert all(r["label"] == labels[r["slide_id"]] for r in rows)
    assert "-> " in printed


def test_tissue_reads_the_manifests_slides_at_their_mpp(tmp_path, small_manifest, capsys):
    out = tmp_path / "masks"
    code, printed, err = cli(capsys, "tissue", "--manifest", small_manifest, "--out", out)
    # the 512 px slides are below the default masker's smallest tissue object, so every
    # mask is empty (exit 1); what is tested is which slides are read, and at which mpp
    assert code in (0, 1) and err == "", err
    assert printed.count("[NO TISSUE]") + printed.count("[ok]") == 3, printed
    for slide_id in ("synth_000", "synth_001", "synth_002"):
        assert (out / f"{slide_id}.tissue.png").is_file()
    line = next(ln for ln in printed.splitlines() if "synth_001" in ln)
    assert "0.25" in line  # the manifest's mpp, not the file's 0.5


def test_heatmap_draws_the_manifests_slides(tmp_path, trained_run, small_manifest, capsys):
    checkpoint = trained_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "maps"
    code, printed, err = cli(
        capsys, "heatmap", "--checkpoint", checkpoint, "--out", out, "--manifest", small_manifest,
        "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    drawn = [ln for ln in printed.splitlines() if ln.endswith(".png")]
    assert len(drawn) == 3 and all(Path(p).is_file() for p in drawn)


@pytest.mark.parametrize("command", ["predict", "heatmap", "tissue"])
def test_no_slides_and_no_manifest_is_one_line(tmp_path, trained_run, command, capsys):
    args = [command, "--out", tmp_path / "o"]
    if command != "tissue":
        args += ["--checkpoint", trained_run / "checkpoints" / "best.ckpt"]
    code, _, err = cli(capsys, *args)
    one_line_error(code, err, "no slides: give SLIDE files or --manifest CSV")
