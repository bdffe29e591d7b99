"""``gigastream features --roi DIR`` (issue 18): the patch grid of each slide laid over its
tissue mask cut to its ROI file, so the feature files hold only ROI patches; the ROI file's
content in each file's key (edited: recomputed; unchanged: skipped) and attributes; every
slide's ROI file checked before any file is written; ``train --features`` on the files."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from gigastream.train.features import extract_features
from gigastream.wsi.feature_files import read_features
from tests.cli.clitools import cli, one_line_error
from tests.train.test_features import DATA, PATCHES, _rows, make_slides
from tests.train.test_roi import _roi, _square

#: Level-0 px of a patch of :data:`PATCHES` at ``DATA.mpp`` (32 px at 4 um/px, 2 um/px slides).
EDGE = 64


def _rois(folder: Path, slide_ids, x0: float = 0, x1: float = 128) -> Path:
    """ROI files ``folder/<id>.geojson``: the columns ``[x0, x1)`` of each 256 px slide."""
    folder.mkdir(parents=True, exist_ok=True)
    for slide_id in slide_ids:
        _roi(folder / f"{slide_id}.geojson", (_square(x0, 0, x1, 256), "Region*"))
    return folder


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    """The manifest of 4 tiny slides (the last two validate)."""
    return make_slides(tmp_path_factory.mktemp("features_roi") / "slides", count=4)


def test_the_files_hold_only_the_roi_patches(slides, tmp_path):
    rows = _rows(slides)[:2]
    rois = _rois(tmp_path / "rois", ["s0", "s1"])
    full = extract_features(rows, tmp_path / "full", DATA, PATCHES, "cpu", progress=False)
    data = replace(DATA, roi_dir=str(rois))
    cut = extract_features(rows, tmp_path / "cut", data, PATCHES, "cpu", progress=False)
    assert full.written == cut.written == ["s0", "s1"]
    for slide_id in ("s0", "s1"):
        whole = read_features(tmp_path / "full" / f"{slide_id}.h5")
        inside = read_features(tmp_path / "cut" / f"{slide_id}.h5")
        assert (whole.coords[:, 0] >= 128).any()  # the tissue reaches right of the ROI
        assert 0 < len(inside.coords) < len(whole.coords)
        assert (inside.coords[:, 0] + EDGE <= 128).all()  # every patch inside x < 128
        index = {tuple(c): i for i, c in enumerate(whole.coords.tolist())}
        same = [index[tuple(c)] for c in inside.coords.tolist()]  # a subset of the full grid
        np.testing.assert_allclose(inside.features, whole.features[same], rtol=1e-5, atol=1e-6)
        attrs = inside.attrs
        assert attrs["roi_sha256"] == _sha256(rois / f"{slide_id}.geojson")
        assert attrs["roi_file"] == str((rois / f"{slide_id}.geojson").resolve())
        assert attrs["key"] != whole.attrs["key"]
        assert "roi_sha256" not in whole.attrs and "roi_file" not in whole.attrs


def test_an_edited_roi_recomputes_and_an_unchanged_one_is_skipped(slides, tmp_path):
    rows = _rows(slides)[:2]
    rois = _rois(tmp_path / "rois", ["s0", "s1"])
    data = replace(DATA, roi_dir=str(rois))
    out = tmp_path / "f"
    extract_features(rows, out, data, PATCHES, "cpu", progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    again = extract_features(rows, out, data, PATCHES, "cpu", progress=False)
    assert again.skipped == ["s0", "s1"] and again.written == []
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")} == before
    _rois(rois, ["s1"], x0=128, x1=256)  # same name, the right half now
    edited = extract_features(rows, out, data, PATCHES, "cpu", progress=False)
    assert edited.skipped == ["s0"] and edited.written == ["s1"]
    f = read_features(out / "s1.h5")
    assert len(f.coords) and (f.coords[:, 0] >= 128).all()
    assert f.attrs["roi_sha256"] == _sha256(rois / "s1.geojson")


def test_cli_roi_refuses_a_missing_file_then_writes_files_a_head_trains_on(
    slides, tmp_path, capsys
):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"data": {"tissue": {"mpp": 8.0}}}))
    rois = _rois(tmp_path / "rois", ["s0", "s1", "s2"])  # s3 has none
    out = tmp_path / "feats"
    args = ["features", "--manifest", slides, "--out", out, "--config", config,
            "--encoder", "small_cnn", "--patch-size", "32", "--mpp", "4.0", "--device", "cpu",
            "--no-progress", "--roi", rois]  # fmt: skip
    code, _, err = cli(capsys, *args)
    one_line_error(code, err, f"--roi {rois}: no ROI file", "for 1 of the 4 slides: s3")
    assert not out.exists()  # refused before any file is written
    _rois(rois, ["s3"])
    code, printed, err = cli(capsys, *args)
    assert code == 0, err
    assert "4 written, 0 up to date, 0 failed" in printed
    for path in sorted(out.glob("*.h5")):
        assert (read_features(path).coords[:, 0] + EDGE <= 128).all()
    run = tmp_path / "tiny_run.yaml"
    run.write_text(
        yaml.safe_dump(
            {
                "model": {"head": "abmil", "head_options": {"attn_dim": 8}},
                "data": {"num_workers": 0},
                "train": {"epochs": 1, "threads": 1, "heatmaps": 0, "device": "cpu"},
            }
        )
    )
    code, _, err = cli(capsys, "train", "--manifest", slides, "--out", tmp_path / "run",
                       "--config", run, "--features", out, "--no-progress")  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()
