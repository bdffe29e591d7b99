"""More than two classes (issue 18): ``gigastream synth --target subtype`` writes a
three-class dataset whose lesion subtypes differ in their nuclear pattern's scale; a
``clam_mb`` run trains on it, and its ``metrics.json`` (training and ``evaluate``) holds the
macro one-vs-rest AUC and the confusion matrix."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from skimage.measure import label as connected

from gigastream.wsi.synth import Lesion, SynthConfig, lesion_modulation
from gigastream.wsi.synth_targets import slide_label, slide_subtypes
from tests.cli.clitools import cli
from tests.train.conftest import synth_manifest, tiny_config


def test_subtypes_are_dealt_in_turn_and_named():
    config = SynthConfig(target="subtype", subtypes=3, seed=4)
    subtypes = slide_subtypes(config, list(range(10, 19)))
    assert sorted(subtypes) == list(range(10, 19))
    assert sorted(subtypes.values()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert slide_subtypes(SynthConfig(), [1, 2]) == {}  # target class: every lesion subtype 0
    lesion = Lesion(50, 50, 40.0, subtype=2)
    assert slide_label(config, [lesion], 0.5) == "subtype_c"
    assert slide_label(config, [], 0.5) == "negative"
    area = slide_label(SynthConfig(target="lesion_area", size=1000), [lesion], 0.5)
    assert float(area) == pytest.approx(100 * math.pi * 40.0**2 / (0.5 * 1000**2), abs=1e-4)
    with pytest.raises(ValueError, match="target must be one of"):
        SynthConfig(target="grade").validate()


def test_a_subtype_scales_the_nuclear_pattern_and_keeps_its_mean_colour():
    config = SynthConfig()
    counts = []
    for subtype in (0, 1):
        rng = np.random.default_rng(0)
        pattern = lesion_modulation(Lesion(0, 0, 60.0, subtype), config, rng)
        inside = np.hypot(*np.mgrid[-60:61, -60:61]) < 54  # inside the soft rim
        assert abs(pattern[inside].mean()) < 0.02  # zero mean: the lesion's colour is its tissue's
        counts.append(connected(pattern > 0.3).max())  # the nuclei
    ratio = counts[0] / counts[1]
    assert 1.6**2 * 0.6 < ratio < 1.6**2 * 1.5, counts  # 1.6x the spacing: ~2.6x fewer nuclei


@pytest.fixture(scope="module")
def subtype_manifest(tmp_path_factory) -> Path:
    """Nine tiny synthetic slides: three of each of negative, subtype_a, subtype_b."""
    root = tmp_path_factory.mktemp("subtypes")
    return synth_manifest(root, slides=9, target="subtype", positive_fraction=2 / 3)


def test_a_three_class_run_reports_macro_auc_and_a_confusion_matrix(
    subtype_manifest, tmp_path, capsys
):
    from gigastream.train.fitting import fit

    labels = [r["label"] for r in csv.DictReader(open(subtype_manifest))]
    assert sorted(set(labels)) == ["negative", "subtype_a", "subtype_b"]
    assert all(labels.count(name) == 3 for name in set(labels))
    config = tiny_config(
        subtype_manifest,
        model={"head": "clam_mb"},
        train={"epochs": 1, "heatmaps": 0, "val_fraction": 1 / 3},
    )
    metrics = fit(config, tmp_path / "run")
    final = metrics["final"]
    matrix = np.array(final["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == final["slides"] == 3
    assert matrix.sum(axis=1).tolist() == [1, 1, 1]  # stratified: one slide of each class
    assert math.isfinite(final["val_auc"])  # macro one-vs-rest over the three classes
    header = (tmp_path / "run" / "predictions.csv").read_text().splitlines()[0]
    assert header == "slide_id,label,p_negative,p_subtype_a,p_subtype_b"

    code, out, err = cli(
        capsys, "evaluate", "--checkpoint", tmp_path / "run" / "checkpoints" / "best.ckpt",
        "--manifest", subtype_manifest, "--out", tmp_path / "ev", "--split", "all",
        "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    matrix = np.array(evaluated["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum(axis=1).tolist() == [3, 3, 3]
    probs = np.array([p["probs"] for p in evaluated["predictions"]])
    truth = [evaluated["class_names"].index(p["label"]) for p in evaluated["predictions"]]
    assert np.trace(matrix) / 9 == pytest.approx(evaluated["accuracy"])
    assert (probs.argmax(axis=1) == truth).mean() == pytest.approx(evaluated["accuracy"])
    assert math.isfinite(evaluated["auc"]) and evaluated["threshold"] is None
