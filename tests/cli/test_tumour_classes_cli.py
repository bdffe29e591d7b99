"""``--tumour-classes NAME [NAME ...]`` of ``heatmap`` and ``evaluate`` (issue 18): which
annotation classes are tumour. A QuPath class ``Cancer`` is no tumour by default (no
contours, no tumour instances, one warning naming the files' classes and the flag) and is
with ``--tumour-classes Cancer``; metrics.json records the classes used; misuse (without
``--annotations``, an empty name, a SLIDE swallowed as a name) is one line before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gigastream.wsi.annotation_geojson import mask_to_geojson, write_geojson
from gigastream.wsi.annotations import TUMOUR_CLASSES
from gigastream.wsi.reader import SlideReader
from gigastream.wsi.tissue import TissueMask
from tests.cli.clitools import cli, one_line_error
from tests.cli.test_annotations_cli import _green, _labels, _warnings
from tests.train.conftest import copy_manifest


@pytest.fixture(scope="module")
def cancer(manifest, tmp_path_factory) -> tuple[Path, list[str]]:
    """``(folder, slide ids)``: the synthetic lesions of two positive slides as QuPath
    GeoJSON of class ``Cancer`` (with a ``Stroma`` region beside), and a manifest of only
    those slides (``folder/m.csv``)."""
    folder = tmp_path_factory.mktemp("cancer")
    positive = sorted(s for s, label in _labels(manifest).items() if label == "positive")[:2]
    for slide_id in positive:
        lesion = TissueMask.load(manifest.parent / "lesions" / f"{slide_id}.png")
        with SlideReader.open(manifest.parent / "slides" / f"{slide_id}.tif") as slide:
            data = mask_to_geojson(lesion, "Cancer", slide=slide)
        ring = [[0, 0], [40, 0], [40, 40], [0, 40], [0, 0]]
        data["features"].append(
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
             "properties": {"classification": {"name": "Stroma"}}}
        )  # fmt: skip
        write_geojson(data, folder / f"{slide_id}.geojson")
    copy_manifest(
        manifest, folder / "m.csv", lambda rows: [r for r in rows if r["slide_id"] in positive]
    )
    return folder, positive


def _unmatched(caplog) -> list[str]:
    return _warnings(caplog, "is of the tumour classes")


def test_heatmap_contours_are_of_the_chosen_classes(
    tmp_path, trained_run, manifest, cancer, capsys, caplog
):
    notes, (slide_id, _) = cancer
    slide = manifest.parent / "slides" / f"{slide_id}.tif"
    checkpoint = trained_run / "checkpoints" / "best.ckpt"
    common = ["heatmap", "--checkpoint", checkpoint, "--workers", "0", "--no-progress", slide,
              "--annotations", notes]  # fmt: skip
    code, _, err = cli(capsys, *common, "--out", tmp_path / "default")
    assert code == 0, err
    legend = _green(tmp_path / "default" / f"{slide_id}.png")  # "lesion: none", no outline
    (warning,) = _unmatched(caplog)
    assert "their classes are Cancer, Stroma" in warning and "--tumour-classes" in warning
    caplog.clear()
    code, _, err = cli(capsys, *common, "--out", tmp_path / "cancer", "--tumour-classes", "cancer")
    assert code == 0, err
    assert _green(tmp_path / "cancer" / f"{slide_id}.png") > legend + 50  # its outline too
    assert _unmatched(caplog) == []


def test_evaluate_measures_and_records_the_chosen_classes(
    tmp_path, trained_run, cancer, capsys, caplog
):
    notes, positive = cancer
    checkpoint = trained_run / "checkpoints" / "best.ckpt"
    common = ["evaluate", "--checkpoint", checkpoint, "--manifest", notes / "m.csv", "--split",
              "all", "--no-progress", "--workers", "0", "--annotations", notes]  # fmt: skip
    code, _, err = cli(capsys, *common, "--out", tmp_path / "default")
    assert code == 0, err
    found = json.loads((tmp_path / "default" / "metrics.json").read_text())["annotations"]
    assert found["tumour_classes"] == list(TUMOUR_CLASSES)
    assert found["slides"] == 2 and found["slides_with_tumour"] == 0
    assert all(s["tumour_instances"] == 0 for s in found["per_slide"].values())
    (warning,) = _unmatched(caplog)
    assert "Cancer" in warning and "--tumour-classes" in warning
    caplog.clear()
    code, _, err = cli(capsys, *common, "--out", tmp_path / "cancer", "--tumour-classes",
                       "Cancer", "Tumor*")  # fmt: skip
    assert code == 0, err
    found = json.loads((tmp_path / "cancer" / "metrics.json").read_text())["annotations"]
    assert found["tumour_classes"] == ["Cancer", "Tumor*"]
    assert found["slides_with_tumour"] == 2
    for slide_id in positive:
        s = found["per_slide"][slide_id]
        assert 0 < s["tumour_instances"] < s["instances"]
    assert _unmatched(caplog) == []


@pytest.mark.parametrize("command", ["heatmap", "evaluate"])
def test_misuse_is_one_line_before_any_work(tmp_path, command, capsys):
    """The checkpoint, manifest and folders do not exist: each error comes first."""
    slide = tmp_path / "slide.tif"
    slide.write_bytes(b"")  # a file given after --tumour-classes
    out = tmp_path / "out"
    args = [command, "--checkpoint", tmp_path / "none.ckpt", "--out", out]
    if command == "evaluate":
        args += ["--manifest", tmp_path / "none.csv"]
    else:
        args += ["--label", "positive"]
    code, _, err = cli(capsys, *args, "--tumour-classes", "Cancer")
    one_line_error(code, err, "--tumour-classes", "add --annotations DIR")
    notes = ["--annotations", tmp_path / "notes"]
    code, _, err = cli(capsys, *args, *notes, "--tumour-classes", "Cancer", "")
    one_line_error(code, err, "--tumour-classes: an empty class name", "['Cancer', '']")
    if command == "heatmap":
        code, _, err = cli(capsys, *args, *notes, "--tumour-classes", "Cancer", slide)
        one_line_error(code, err, f"got the file {slide}", "put the SLIDE files before")
    assert not out.exists()
