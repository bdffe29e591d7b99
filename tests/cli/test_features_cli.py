"""``gigastream features`` then ``gigastream train --features``: the files and where they
went, exit 1 listing the slides that failed (the others written), a rerun that skips
finished slides, and evaluate/predict of the feature-trained checkpoint with ``--features``;
flags of the wrong model kind are one line before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from gigastream.cli.main import main
from gigastream.wsi.feature_files import write_features
from tests.cli.clitools import cli as _cli
from tests.train.test_features import make_slides

FEATURE_FLAGS = ["--encoder", "small_cnn", "--patch-size", "32", "--mpp", "4.0"]
TINY = {
    "model": {"head": "abmil", "head_options": {"attn_dim": 8}},
    "data": {"num_workers": 0, "tissue": {"mpp": 8.0}},
    "train": {"epochs": 2, "threads": 1, "heatmaps": 0, "progress": False, "device": "cpu"},
}


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    """The manifest of 8 tiny slides, a bare-glass one, a missing and a corrupt one, and the
    run settings ``tiny.yaml`` next to it."""
    manifest = make_slides(tmp_path_factory.mktemp("cli_features") / "slides", extra=True)
    (manifest.parent / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return manifest


@pytest.fixture(scope="module")
def features(slides, tmp_path_factory):
    """``(folder, exit code, stdout, stderr)`` of one extraction (capsys is per test)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("cli_feats") / "feats"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        config = slides.parent / "tiny.yaml"
        code = main(
            ["features", "--manifest", str(slides), "--out", str(out), "--config", str(config)]
            + FEATURE_FLAGS
            + ["--device", "cpu", "--no-progress"]
        )
    return out, code, stdout.getvalue(), stderr.getvalue()


def test_failed_slides_exit_1_with_one_line_while_the_others_are_written(features):
    out, code, printed, err = features
    assert code == 1
    assert sorted(p.stem for p in out.glob("*.h5")) == [f"s{i}" for i in range(8)]
    assert "8 written, 0 up to date, 3 failed (64 features per patch" in printed
    assert str(out / "features.json") in printed
    lines = [line for line in err.splitlines() if line.startswith("gigastream features: error:")]
    assert len(lines) == 1
    assert "3 of 11 slides failed: glass, missing, corrupt" in lines[0]
    assert str(out / "failures.csv") in lines[0]
    report = json.loads((out / "features.json").read_text())
    assert report["settings"]["encoder"]["name"] == "small_cnn"
    assert report["settings"]["tissue"]["mpp"] == 8.0  # from --config


def test_a_rerun_skips_the_finished_slides(features, slides, tmp_path, capsys):
    out = features[0]
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    code, printed, _ = _cli(
        capsys,
        "features",
        "--manifest",
        slides,
        "--out",
        out,
        "--config",
        slides.parent / "tiny.yaml",
        *FEATURE_FLAGS,
        "--device",
        "cpu",
        "--no-progress",
    )
    assert code == 1 and printed.startswith("0 written, 8 up to date, 3 failed")
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")} == before


@pytest.fixture(scope="module")
def feature_run(features, slides, tmp_path_factory):
    """``gigastream train --features`` on the files: the run folder."""
    out = tmp_path_factory.mktemp("cli_feature_run") / "run"
    code = main(
        ["train", "--manifest", str(slides), "--out", str(out), "--features", str(features[0])]
        + ["--config", str(slides.parent / "tiny.yaml"), "--head", "gated_abmil", "--no-progress"]
    )
    assert code == 0
    return out


def test_train_on_features_writes_metrics_and_the_feature_settings(feature_run):
    metrics = json.loads((feature_run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and len(metrics["epochs"]) == 2
    assert sorted(metrics["skipped_slides"]) == ["corrupt", "glass", "missing"]
    resolved = yaml.safe_load((feature_run / "config.yaml").read_text())
    assert resolved["model"]["kind"] == "features" and resolved["model"]["head"] == "gated_abmil"
    assert resolved["features"]["feature_dim"] == 64
    assert resolved["features"]["encoder"]["encoder"] == "small_cnn"


def test_evaluate_and_predict_with_features(feature_run, features, slides, tmp_path, capsys):
    checkpoint = feature_run / "checkpoints" / "best.ckpt"
    folder = features[0]
    code, printed, err = _cli(
        capsys,
        "evaluate",
        "--checkpoint",
        checkpoint,
        "--manifest",
        slides,
        "--out",
        tmp_path / "eval",
        "--features",
        folder,
        "--device",
        "cpu",
        "--no-progress",
        "--split",
        "all",  # training slides too: every feature file, and the three without one
    )
    assert code == 0, err
    assert "8 slides: AUC" in printed and "skipped 3" in printed
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["slides"] == 8 and sorted(metrics["skipped_slides"]) == [
        "corrupt",
        "glass",
        "missing",
    ]
    code, printed, err = _cli(
        capsys,
        "predict",
        "--checkpoint",
        checkpoint,
        "--out",
        tmp_path / "pred",
        "--features",
        folder,
        "--device",
        "cpu",
        "--no-progress",
        folder / "s0.h5",
        folder / "s1.h5",
    )
    assert code == 0, err
    assert "s0" in printed and "p_tumor" in printed
    assert (tmp_path / "pred" / "predictions.csv").read_text().count("\n") == 3


def test_evaluate_names_a_file_of_another_dimension(feature_run, slides, tmp_path, capsys):
    bad = tmp_path / "bad"
    write_features(bad / "s1.h5", np.ones((3, 32)), np.zeros((3, 2)), {"encoder": "resnet18"})
    code, _, err = _cli(
        capsys,
        "evaluate",
        "--checkpoint",
        feature_run / "checkpoints" / "best.ckpt",
        "--manifest",
        slides,
        "--out",
        tmp_path / "eval",
        "--features",
        bad,
        "--device",
        "cpu",
        "--split",
        "all",  # s1 is a training slide
    )
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, err
    assert f"{bad / 's1.h5'}: features of dimension 32 (from resnet18)" in lines[0]
    assert "the model expects 64" in lines[0]
    assert not (tmp_path / "eval").exists()


def test_dry_run_of_a_feature_run(features, slides, tmp_path, capsys):
    code, printed, _ = _cli(
        capsys,
        "train",
        "--manifest",
        slides,
        "--out",
        tmp_path / "run",
        "--features",
        features[0],
        "--config",
        slides.parent / "tiny.yaml",
        "--dry-run",
    )
    assert code == 1  # three slides have no file
    assert "feature model: 8 of 11 slides have features of dimension 64 (from small_cnn)" in printed
    assert "glass: " in printed and "feature file not found" in printed
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model-kind", "patches"], "--features DIR trains a head on cached features: drop"),
        (["--encoder", "small_cnn"], "--encoder is a setting of a model that reads slides"),
        (["--tile-size", "64"], "--tile-size is a setting of a model that reads slides"),
        (["--weights", "w.pt"], "--weights is a setting of a model that reads slides"),
    ],
    ids=["kind", "encoder", "tile", "weights"],
)
def test_flags_of_other_models_are_one_line(features, slides, tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    code, _, err = _cli(
        capsys, "train", "--manifest", slides, "--out", out, "--features", features[0], *flags
    )
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and message in lines[0], err
    assert not out.exists()


def test_features_of_a_streaming_checkpoint_is_refused(tmp_path, capsys):
    from gigastream.train.config_files import load_config
    from gigastream.train.prediction import prediction_config

    with pytest.raises(ValueError, match="--features f: this checkpoint is a model.kind streaming"):
        prediction_config(load_config({}), "cpu", None, "f")
