"""The resolution sweep (``experiments/resolution/sweep.py``): lesion metrics, splits, a sweep.

The lesion metrics are checked against a brute-force reference; the sweep runs end to end
on the tiny synthetic dataset (two resolutions, one epoch, in this process), then once more
to show that finished runs are reused and that changed settings are refused.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import replace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from gigastream.train.config import ConfigError
from gigastream.train.files import RunError
from gigastream.wsi.manifest import read_manifest
from gigastream.wsi.tissue import TissueMask
from tests.experiments.conftest import experiment_module
from tests.train.conftest import TINY

sweep_module = experiment_module("resolution", "sweep")
RESULT_KEYS = sweep_module.RESULT_KEYS
ResolutionSweep = sweep_module.ResolutionSweep
lesion_attention = sweep_module.lesion_attention
lesion_cells = sweep_module.lesion_cells
run_config = sweep_module.run_config
run_resolution = sweep_module.run_resolution
split_manifest = sweep_module.split_manifest
split_of = sweep_module.split_of


def _reference_cells(mask: np.ndarray, mask_mpp: float, grid, cell_um: float) -> np.ndarray:
    """Cells sharing a positive area with a lesion pixel, pixel by pixel."""
    out = np.zeros(grid, bool)
    for i in range(grid[0]):
        for j in range(grid[1]):
            for y, x in zip(*np.nonzero(mask), strict=True):
                overlap_y = min((i + 1) * cell_um, (y + 1) * mask_mpp) - max(
                    i * cell_um, y * mask_mpp
                )
                overlap_x = min((j + 1) * cell_um, (x + 1) * mask_mpp) - max(
                    j * cell_um, x * mask_mpp
                )
                if overlap_y > 0 and overlap_x > 0:
                    out[i, j] = True
    return out


@pytest.mark.parametrize("cell_um", [16.0, 12.0, 40.0, 5.0, 128.0])
def test_lesion_cells_match_brute_force(cell_um):
    rng = np.random.default_rng(3)
    mask = rng.random((11, 9)) < 0.08  # 8 um pixels: 88 x 72 um
    grid = (math.ceil(88 / cell_um) + 1, math.ceil(72 / cell_um))  # one row past the mask
    got = lesion_cells(TissueMask(mask, 8.0), grid, cell_um)
    np.testing.assert_array_equal(got, _reference_cells(mask, 8.0, grid, cell_um))


def test_lesion_cells_touching_edges_do_not_overlap():
    mask = np.zeros((4, 4), bool)
    mask[2, 2] = True  # microns [16, 24) on both axes
    cells = lesion_cells(TissueMask(mask, 8.0), (4, 4), 8.0)
    assert np.argwhere(cells).tolist() == [[2, 2]]
    cells = lesion_cells(TissueMask(mask, 8.0), (2, 2), 16.0)  # [16, 32) holds it
    assert np.argwhere(cells).tolist() == [[1, 1]]


def test_lesion_attention():
    attention = np.array([[0.1, 0.2, np.nan], [0.3, 0.4, np.nan]])
    lesion = np.array([[True, False, True], [False, True, False]])
    mass, fraction = lesion_attention(attention, lesion)
    assert mass == pytest.approx(0.5) and fraction == pytest.approx(0.5)
    with pytest.raises(ValueError, match="differ"):
        lesion_attention(attention, lesion[:, :2])
    with pytest.raises(ValueError, match="no instances"):
        lesion_attention(np.full((2, 2), np.nan), np.ones((2, 2), bool))


def _manifest(folder, cases=24):
    rows = ["slide_id,path,label"]
    for i in range(cases):
        (folder / f"s{i}.tif").write_bytes(b"")
        rows.append(f"s{i},s{i}.tif,{'positive' if i % 2 else 'negative'}")
    path = folder / "manifest.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_split_manifest_is_stratified_and_keeps_paths(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    _manifest(tmp_path / "data")
    monkeypatch.chdir(tmp_path)  # a manifest given relative to the working directory
    out = split_manifest("data/manifest.csv", tmp_path / "runs" / "manifest.csv", (3, 1, 2))
    parts = split_of(read_manifest(out))  # slide files found: paths survived the move
    sizes = {name: len(rows) for name, rows in parts.items()}
    assert sizes == {"train": 12, "val": 4, "test": 8}
    for rows in parts.values():
        assert sum(r.label == "positive" for r in rows) == len(rows) // 2
    again = split_manifest("data/manifest.csv", tmp_path / "again.csv", (3, 1, 2))  # seeded
    assert [(r.slide_id, r.split) for r in read_manifest(again).rows] == [
        (r.slide_id, r.split) for r in read_manifest(out).rows
    ]


def test_split_of_names_what_is_missing(tmp_path):
    path = _manifest(tmp_path, cases=6)
    with pytest.raises(ConfigError, match="no train, val, test slides.*--split-ratio"):
        split_of(read_manifest(path))
    text = path.read_text().splitlines()
    splits = ["train", "val", "train", "val", "test", "test"]
    labels = ["negative", "positive", "negative", "positive", "positive", "positive"]
    lines = [text[0] + ",split"] + [f"s{i},s{i}.tif,{labels[i]},{splits[i]}" for i in range(6)]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="test split holds only"):
        split_of(read_manifest(path))


def _csv_auc(path) -> float:
    """ROC AUC of p(positive) from a predictions CSV, by sklearn."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return roc_auc_score(
        [r["label"] == "positive" for r in rows], [float(r["p_positive"]) for r in rows]
    )


def _check_lesion_attention(run, detail) -> None:
    """Predict the positive test slide again from the best checkpoint; its attention on the
    lesion cells, found pixel by pixel (:func:`_reference_cells`), is the reported one."""
    from gigastream.train.heatmaps import instance_cell_um, lesion_mask_for
    from gigastream.train.prediction import load_classifier, run_predictions
    from gigastream.wsi.reader import SlideReader

    (slide,) = detail["lesion_slides"]  # the one positive test slide
    module, config = load_classifier(run / "checkpoints" / "best.ckpt")
    (row,) = [
        r
        for r in read_manifest(run.parent / "manifest.csv").rows
        if r.slide_id == slide["slide_id"]
    ]
    data = replace(config.data, mask_dir=str(run / "masks"))  # the masks the run used
    (result,) = run_predictions(module, [row], config, data, device="cpu")
    attention = result["attention_map"]  # (rows, cols), NaN off tissue
    with SlideReader.open(row.path, mpp=row.mpp) as reader:
        cell_um = instance_cell_um(reader, config.data.mpp, module.model.output_stride)
    mask = lesion_mask_for(row.path, row.slide_id)
    cells = _reference_cells(np.asarray(mask.mask, bool), mask.mpp, attention.shape, cell_um)
    tissue = np.isfinite(attention)
    mass = attention[tissue & cells].sum() / attention[tissue].sum()
    assert 0.0 < mass < 1.0
    assert slide["attention_in_lesion"] == pytest.approx(mass, abs=1e-9)
    assert slide["lesion_fraction"] == pytest.approx((tissue & cells).sum() / tissue.sum())
    assert detail["attention_in_lesion"] == pytest.approx(mass, abs=1e-9)


def test_sweep_end_to_end_and_reuse(tmp_path, manifest):
    run = {**TINY, "train": {**TINY["train"], "epochs": 1, "accumulate_grad_batches": 2}}
    sweep = ResolutionSweep(
        manifest=str(manifest),
        out=str(tmp_path / "runs"),
        results=str(tmp_path / "results"),
        mpps=[1.0, 2.0],
        seeds=[0],
        run=run,
        split_ratio=(2, 1, 1),
        isolate=False,
    )
    rows = run_resolution(sweep, progress=False)
    results = tmp_path / "results"
    stored = json.loads((results / "results.json").read_text())
    assert stored == rows and [r["mpp"] for r in rows] == [1.0, 2.0]
    details = json.loads((results / "runs.json").read_text())
    for row in rows:
        assert tuple(row) == RESULT_KEYS and row["seed"] == 0
        folder = tmp_path / "runs" / f"mpp{row['mpp']:g}_seed0"
        assert math.isfinite(row["test_auc"])
        auc = _csv_auc(folder / "test_predictions.csv")
        assert row["test_auc"] == pytest.approx(auc, abs=1e-12)
        assert 0.0 < row["lesion_fraction"] < 1.0
        assert row["seconds_per_slide"] > 0 and row["peak_mib"] > 0
    _check_lesion_attention(tmp_path / "runs" / "mpp1_seed0", details[0])
    assert [d["training_steps"] for d in details] == [4, 4]  # same steps at every resolution
    assert details[0]["instances_per_test_slide"] > 2 * details[1]["instances_per_test_slide"]
    assert {d["heatmap_slide"] for d in details} == {details[0]["heatmap_slide"]}
    for name in ("summary.md", "resolution.png", "heatmaps/mpp1.png", "heatmaps/mpp2.png"):
        assert (results / name).is_file(), name
    assert "| 1 | 1 |" in (results / "summary.md").read_text()
    with open(tmp_path / "runs" / "manifest.csv", newline="") as f:
        assert (
            sorted(r["split"] for r in csv.DictReader(f))
            == ["test"] * 2 + ["train"] * 4 + ["val"] * 2
        )

    first = tmp_path / "runs" / "mpp1_seed0" / "result.json"
    stamp = first.stat().st_mtime_ns
    assert run_resolution(sweep, progress=False) == rows  # finished runs are reused
    assert first.stat().st_mtime_ns == stamp
    sweep.run = {**run, "train": {**run["train"], "accumulate_grad_batches": 1}}
    with pytest.raises(RunError, match="other settings.*--overwrite"):
        run_resolution(sweep, progress=False)


def test_sweep_validates_before_writing(tmp_path, manifest):
    sweep = ResolutionSweep(manifest=str(manifest), out=str(tmp_path / "o"), mpps=[1.0, -2.0])
    with pytest.raises(ConfigError, match="positive"):
        run_resolution(sweep)
    sweep = ResolutionSweep(manifest=str(manifest), out=str(tmp_path / "o"), seeds=[1, 1])
    with pytest.raises(ConfigError, match="twice"):
        run_resolution(sweep)
    sweep = ResolutionSweep(manifest=str(manifest), out=str(tmp_path / "o"))  # no split column
    with pytest.raises(ConfigError, match="split-ratio"):
        run_resolution(sweep)
    sweep = ResolutionSweep(
        manifest=str(manifest), out=str(tmp_path / "o"), split_ratio=(2, 1, 1),
        run={"train": {"epocs": 1}},
    )  # fmt: skip
    with pytest.raises(ConfigError, match="did you mean 'train.epochs'"):
        run_resolution(sweep)
    assert not os.path.exists(tmp_path / "o")


def test_run_config_sets_resolution_and_seed_and_keeps_every_step(manifest):
    run = {"data": {"mpp": 0.25}, "train": {"early_stopping_patience": 3, "epochs": 5}}
    sweep = ResolutionSweep(manifest=str(manifest), out="unused", run=run)
    config = run_config(sweep, manifest, 4.0, 7)
    assert (config.data.mpp, config.train.seed, config.train.epochs) == (4.0, 7, 5)
    assert config.train.early_stopping_patience is None
    assert config.data.num_workers == 1 and config.train.heatmaps == 0  # EXPERIMENT_RUN
    assert config.model.arch == "vgg_small"  # the recipe
