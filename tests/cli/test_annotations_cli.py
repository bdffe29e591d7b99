"""Annotation files on the command line (issue 18): ``heatmap --annotations DIR`` draws their
tumour as contours and every heatmap gets its ``<slide_id>.attention.geojson``; ``--lesions
DIR`` no longer falls back to the synthetic masks for a slide missing from DIR; ``evaluate
--annotations DIR`` measures the attention inside annotated tumour; ``train --roi DIR``
trains inside annotated regions, stored in config.yaml and the checkpoint. Malformed files
and missing ROI files refuse in one line before any work."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from gigastream.wsi.annotation_geojson import mask_to_geojson, write_geojson
from gigastream.wsi.annotation_readers import read_geojson
from gigastream.wsi.reader import SlideReader
from gigastream.wsi.tissue import TissueMask
from tests.cli.clitools import cli as _cli
from tests.cli.clitools import one_line_error as _one_line_error
from tests.train.conftest import write_tiny_yaml


@pytest.fixture(scope="session")
def checkpoint(trained_run) -> Path:
    """The best checkpoint of the tiny finished run (read-only)."""
    return trained_run / "checkpoints" / "best.ckpt"


def _labels(manifest: Path) -> dict[str, str]:
    with open(manifest, newline="") as f:
        return {row["slide_id"]: row["label"] for row in csv.DictReader(f)}


def _annotations(manifest: Path, folder: Path, slide_ids) -> Path:
    """QuPath GeoJSON ``folder/<id>.geojson`` of the synthetic lesion masks of ``slide_ids``."""
    folder.mkdir(parents=True, exist_ok=True)
    for slide_id in slide_ids:
        lesion = TissueMask.load(manifest.parent / "lesions" / f"{slide_id}.png")
        with SlideReader.open(manifest.parent / "slides" / f"{slide_id}.tif") as slide:
            write_geojson(
                mask_to_geojson(lesion, "Tumor", slide=slide), folder / f"{slide_id}.geojson"
            )
    return folder


def _green(png: Path) -> int:
    """Pixels of the lesion contours' green (and its legend) in a heatmap PNG."""
    with Image.open(png) as img:
        rgb = np.asarray(img.convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((g > 150) & (r < 120) & (b < 120)).sum())


def _heatmap(capsys, checkpoint, out, *args):
    return _cli(capsys, "heatmap", "--checkpoint", checkpoint, "--out", out, "--workers", "0",
                "--no-progress", *args)  # fmt: skip


def _warnings(caplog, needle: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and needle in r.getMessage()
    ]


def test_heatmap_annotations_draw_contours_and_geojson_tiles(
    tmp_path, checkpoint, manifest, capsys, caplog
):
    labels = _labels(manifest)
    positive = [s for s, label in labels.items() if label == "positive"][:2]
    notes = _annotations(manifest, tmp_path / "notes", positive[:1])  # the second has no file
    slides = [manifest.parent / "slides" / f"{s}.tif" for s in positive]
    out = tmp_path / "maps"
    code, printed, _ = _heatmap(capsys, checkpoint, out, "--annotations", notes, *slides)
    assert code == 0 and printed.split() == [str(out / f"{s}.png") for s in positive]
    assert _green(out / f"{positive[0]}.png") > 50  # the annotated tumour's outline
    assert _green(out / f"{positive[1]}.png") == 0  # no file: no contour, no synthetic mask
    (warning,) = _warnings(caplog, "without lesion contours")
    assert positive[1] in warning and positive[0] not in warning and str(notes) in warning
    for slide_id in positive:  # the attention beside every heatmap, as QuPath tiles
        path = out / f"{slide_id}.attention.geojson"
        data = json.loads(path.read_text())
        tiles = data["features"]
        assert {t["properties"]["objectType"] for t in tiles} == {"tile"}
        total = sum(t["properties"]["measurements"]["attention"] for t in tiles)
        assert total == pytest.approx(1.0, abs=1e-5)  # one tile per instance
        assert len(read_geojson(path)) == len(tiles)
        corners = np.array([t["geometry"]["coordinates"][0][:4] for t in tiles])  # (N, 4, 2)
        edges = corners.max(axis=1) - corners.min(axis=1)
        assert np.allclose(edges, edges[0, 0]) and corners.min() >= 0 and corners.max() <= 512
    assert not list(out.glob(".*.tmp"))


def test_lesions_dir_does_not_fall_back_to_the_synthetic_masks(
    tmp_path, checkpoint, manifest, capsys, caplog
):
    positive = next(s for s, label in _labels(manifest).items() if label == "positive")
    slide = manifest.parent / "slides" / f"{positive}.tif"
    code, _, _ = _heatmap(capsys, checkpoint, tmp_path / "synth", slide)
    assert code == 0 and _green(tmp_path / "synth" / f"{positive}.png") > 50  # next to synth
    empty = tmp_path / "masks"
    empty.mkdir()
    code, _, _ = _heatmap(capsys, checkpoint, tmp_path / "given", "--lesions", empty, slide)
    assert code == 0 and _green(tmp_path / "given" / f"{positive}.png") == 0
    (warning,) = _warnings(caplog, "without lesion contours")
    assert f"mask <slide_id>.png in {empty}" in warning and positive in warning


def test_malformed_or_conflicting_annotations_refuse_before_any_work(
    tmp_path, checkpoint, manifest, capsys
):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "synth_000.geojson").write_text(
        '{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}}]}'
    )
    slide = manifest.parent / "slides" / "synth_000.tif"
    out = tmp_path / "out"
    code, _, err = _heatmap(capsys, checkpoint, out, "--annotations", notes, slide)
    _one_line_error(code, err, "synth_000.geojson: feature 0", "at least 3 points")
    code, _, err = _cli(capsys, "evaluate", "--checkpoint", checkpoint, "--manifest", manifest,
                        "--out", out, "--annotations", notes)  # fmt: skip
    _one_line_error(code, err, "synth_000.geojson: feature 0")
    (notes / "synth_000.geojson").unlink()
    code, _, err = _cli(capsys, "evaluate", "--checkpoint", checkpoint, "--manifest", manifest,
                        "--out", out, "--annotations", notes)  # fmt: skip
    _one_line_error(code, err, "no annotation file for any of the 8 slides", "synth_000.xml")
    code, _, err = _heatmap(capsys, checkpoint, out, "--annotations", tmp_path / "none", slide)
    _one_line_error(code, err, "--annotations", "none: not found")
    assert not out.exists()
    with pytest.raises(SystemExit):  # one source of lesions
        _heatmap(capsys, checkpoint, out, "--annotations", notes, "--lesions", notes, slide)


def test_evaluate_annotations_attention_in_tumour(tmp_path, checkpoint, manifest, capsys):
    labels = _labels(manifest)
    positive = sorted(s for s, label in labels.items() if label == "positive")
    negative = sorted(s for s, label in labels.items() if label == "negative")
    notes = _annotations(manifest, tmp_path / "notes", [*positive, negative[0]])  # empty one
    out = tmp_path / "eval"
    code, printed, _ = _cli(capsys, "evaluate", "--checkpoint", checkpoint, "--manifest", manifest,
                            "--out", out, "--split", "all", "--no-progress", "--workers", "0",
                            "--annotations", notes)  # fmt: skip
    assert code == 0
    found = json.loads((out / "metrics.json").read_text())["annotations"]
    assert found["slides"] == len(positive) + 1 and found["slides_with_tumour"] == len(positive)
    assert sorted(found["without_annotation"]) == negative[1:] and found["skipped"] == {}
    per_slide = found["per_slide"]
    assert per_slide[negative[0]]["tumour_instances"] == 0
    for slide_id in positive:
        s = per_slide[slide_id]
        assert 0 < s["tumour_instances"] < s["instances"]
        assert 0 <= s["attention_in_tumour"] <= 1 and 0 <= s["instance_auc"] <= 1
        assert s["enrichment"] == pytest.approx(
            s["attention_in_tumour"] / s["tumour_instance_fraction"]
        )
    mean = np.mean([per_slide[s]["attention_in_tumour"] for s in positive])
    assert found["mean"]["attention_in_tumour"] == pytest.approx(mean)
    pooled = sum(per_slide[s]["tumour_instances"] for s in positive) / sum(
        per_slide[s]["instances"] for s in positive
    )
    assert found["pooled"]["tumour_instance_fraction"] == pytest.approx(pooled)
    line = printed.strip().splitlines()[-1]
    assert line.startswith(f"annotations: {len(positive)} of {len(positive) + 1} annotated slides")
    assert f"attention in tumour {found['mean']['attention_in_tumour']:.3f}" in line


def _rois(manifest: Path, folder: Path, slide_ids) -> Path:
    """ROI files: the top half of each 512 px slide (``Region*``), minus an ``Ignore*`` square."""
    folder.mkdir(parents=True, exist_ok=True)
    ring = [[0, 0], [512, 0], [512, 256], [0, 256], [0, 0]]
    ignore = [[0, 0], [128, 0], [128, 128], [0, 128], [0, 0]]
    for slide_id in slide_ids:
        features = [
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [r]},
             "properties": {"classification": {"name": name}}}
            for r, name in ((ring, "Region*"), (ignore, "Ignore*"))
        ]  # fmt: skip
        (folder / f"{slide_id}.geojson").write_text(
            json.dumps({"type": "FeatureCollection", "features": features})
        )
    return folder


def test_train_roi_refuses_missing_files_and_feature_heads(tmp_path, manifest, capsys):
    config = write_tiny_yaml(tmp_path / "t.yaml")
    rois = _rois(manifest, tmp_path / "rois", [f"synth_00{i}" for i in range(6)])
    out = tmp_path / "run"
    args = ["train", "--manifest", manifest, "--out", out, "--config", config]
    code, _, err = _cli(capsys, *args, "--roi", rois)
    _one_line_error(code, err, "no ROI file", "for 2 of the 8 slides: synth_006, synth_007")
    code, _, err = _cli(capsys, *args, "--roi", tmp_path / "nowhere")
    _one_line_error(code, err, "data.roi_dir (--roi)", "nowhere: not found")
    features = tmp_path / "features"
    features.mkdir()
    code, _, err = _cli(capsys, *args, "--roi", rois, "--features", features)
    _one_line_error(code, err, "--roi restricts the slides' instances", "drop --roi")
    assert not out.exists()


def test_train_roi_cuts_the_masks_and_is_stored(tmp_path, manifest, capsys):
    config = write_tiny_yaml(tmp_path / "t.yaml", train={"epochs": 1, "heatmaps": 0})
    rois = _rois(manifest, tmp_path / "rois", [f"synth_00{i}" for i in range(8)])
    out = tmp_path / "run"
    code, _, err = _cli(capsys, "train", "--manifest", manifest, "--out", out, "--config", config,
                        "--roi", rois, "--no-progress")  # fmt: skip
    assert code == 0, err
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["roi_dir"] == str(rois)
    state = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert state["gigastream"]["config"]["data"]["roi_dir"] == str(rois)
    for slide_id in ("synth_000", "synth_005"):
        mask = TissueMask.load(out / "masks" / f"{slide_id}.png")
        rows, cols = mask.mask.shape  # 256 um of slide: the ROI is y < 128 um, not x, y < 64 um
        assert mask.mask.any() and not mask.mask[rows // 2 :].any()
        assert not mask.mask[: rows // 4, : cols // 4].any()
        sidecar = json.loads((out / "masks" / f"{slide_id}.png.json").read_text())
        assert len(sidecar["roi"]["sha256"]) == 64  # keyed by the ROI file's content
    shutil.rmtree(rois)  # prediction reads the whole tissue: the ROI files are not needed
    slide = manifest.parent / "slides" / "synth_000.tif"
    code, _, err = _cli(capsys, "predict", "--checkpoint", out / "checkpoints" / "best.ckpt",
                        "--out", tmp_path / "pred", "--no-progress", "--workers", "0", slide)  # fmt: skip
    assert code == 0, err
    mask = TissueMask.load(tmp_path / "pred" / "masks" / "synth_000.png")
    assert mask.mask[mask.mask.shape[0] // 2 :].any()
