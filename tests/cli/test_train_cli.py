"""``gigastream train/predict/evaluate`` on a tiny dataset: outputs agree, bad input fails early.

Every refused command exits 1 with one line (no traceback) that names the problem, and
writes nothing: ``--out`` is not even created.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gigastream.train.files import run_lock
from tests.cli.clitools import cli as _cli
from tests.cli.clitools import one_line_error as _one_line_error
from tests.cli.clitools import train_args as _train
from tests.train.conftest import (
    copy_manifest,
    write_tiny_yaml,
)


def _probabilities(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["slide_id"]: np.array([float(r["p_negative"]), float(r["p_positive"])]) for r in rows}


# ----------------------------------------------------------------------------- 1, 2. outputs
def test_config_yaml_of_a_run_re_runs(tmp_path, trained_run, capsys):
    out = tmp_path / "again"
    config = trained_run / "config.yaml"
    code, printed, _ = _cli(capsys, "train", "--config", config, "--out", out, "--dry-run")
    assert code == 0 and "6 training and 2 validation slides" in printed
    assert not out.exists()


def test_predict_evaluate_and_validation_agree(tmp_path, trained_run, manifest, capsys):
    alone = tmp_path / "elsewhere" / "model.ckpt"  # the checkpoint alone, no run folder
    alone.parent.mkdir()
    shutil.copy(trained_run / "checkpoints" / "best.ckpt", alone)
    validation = _probabilities(trained_run / "predictions.csv")
    slides = [manifest.parent / "slides" / f"{slide_id}.tif" for slide_id in validation]

    code, printed, _ = _cli(
        capsys,
        "predict",
        "--checkpoint",
        alone,
        "--out",
        tmp_path / "pred",
        "--no-progress",
        *slides,
    )
    assert code == 0 and "p_positive" in printed
    code, _, _ = _cli(
        capsys,
        "evaluate",
        "--checkpoint",
        alone,
        "--manifest",
        manifest,
        "--out",
        tmp_path / "eval",
        "--no-progress",
    )
    assert code == 0
    predicted = _probabilities(tmp_path / "pred" / "predictions.csv")
    evaluated = _probabilities(tmp_path / "eval" / "predictions.csv")
    assert set(predicted) == set(validation) and len(evaluated) == 8
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    exact = {p["slide_id"]: np.array(p["probs"]) for p in metrics["predictions"]}
    for slide_id, probs in validation.items():
        np.testing.assert_allclose(predicted[slide_id], probs, rtol=0, atol=1.5e-6)
        np.testing.assert_allclose(evaluated[slide_id], probs, rtol=0, atol=1.5e-6)
        np.testing.assert_allclose(exact[slide_id], probs, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- 3. labels
def test_labels_differing_in_case_or_spacing_are_one_error(tmp_path, manifest, capsys):
    def relabel(rows):
        names = {"negative": "no tumour", "positive": "tumour"}
        rows = [{**r, "label": names[r["label"]]} for r in rows]
        rows[2]["label"], rows[4]["label"] = "No Tumour", "no  tumour"  # both negatives
        return rows

    bad = copy_manifest(manifest, tmp_path / "manifest.csv", relabel)
    out = tmp_path / "run"
    code, _, err = _cli(capsys, *_train(bad, out, write_tiny_yaml(tmp_path / "t.yaml")))
    _one_line_error(code, err, "'No Tumour' vs 'no  tumour' vs 'no tumour'")
    assert not out.exists()


def test_labels_outside_class_names_are_one_error(tmp_path, manifest, capsys):
    def relabel(rows):
        rows[0]["label"], rows[2]["label"] = "Positive", "tumour"
        return rows

    bad = copy_manifest(manifest, tmp_path / "manifest.csv", relabel)
    config = write_tiny_yaml(tmp_path / "t.yaml", class_names=["negative", "positive"])
    out = tmp_path / "run"
    code, _, err = _cli(capsys, *_train(bad, out, config))
    line = _one_line_error(code, err, "2 label(s) not in the configured classes")
    assert "'Positive' (did you mean 'positive'?)" in line and "'tumour'" in line
    assert not out.exists()


# ----------------------------------------------------------------------------- 4, 5. arguments
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "-1"], "train.epochs must be >= 1, got -1"),
        (["--device", "cuda"], "CUDA is not available on this machine"),
        (["--tile-size", "2"], "tile_size=2 px is too small"),  # < the first conv's 3 px
        (["--device", "cpu", "--precision", "16-mixed"], "16-mixed needs a CUDA device"),
    ],
    ids=["epochs", "cuda", "tile", "precision"],
)
def test_bad_arguments_fail_before_writing(tmp_path, manifest, capsys, flags, message):
    if flags[:2] == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "run"
    code, _, err = _cli(
        capsys, *_train(manifest, out, write_tiny_yaml(tmp_path / "t.yaml")), *flags
    )
    line = _one_line_error(code, err, message)
    if "tile_size" in message:  # names the smallest tile that works
        smallest = int(line.split("Use tile_size >= ")[1].split()[0])
        code, _, _ = _cli(
            capsys,
            *_train(manifest, out, tmp_path / "t.yaml"),
            "--tile-size",
            smallest,
            "--dry-run",
        )
        assert code == 0
    assert not out.exists()


@pytest.mark.parametrize(
    ("settings", "key", "closest"),
    [
        ("train: {epocs: 3}", "train.epocs", "train.epochs"),
        ("data: {tissue: {mppp: 2}}", "data.tissue.mppp", "data.tissue.mpp"),
        ("model: {head_option: {}}", "model.head_option", "model.head_options"),
    ],
)
def test_config_typo_names_the_closest_key(tmp_path, manifest, capsys, settings, key, closest):
    config = tmp_path / "typo.yaml"
    config.write_text(settings + "\n")
    out = tmp_path / "run"
    code, _, err = _cli(capsys, *_train(manifest, out, config))
    _one_line_error(code, err, f"unknown key '{key}'; did you mean '{closest}'?", str(config))
    assert not out.exists()


# ----------------------------------------------------------------------------- 9. one run per folder
def test_second_run_into_the_same_folder(tmp_path, trained_run, manifest, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    before = (out / "metrics.json").read_bytes()
    config = write_tiny_yaml(tmp_path / "t.yaml", train={"epochs": 1, "heatmaps": 0})

    code, _, err = _cli(capsys, *_train(manifest, out, config))
    _one_line_error(code, err, "already holds a run", "--overwrite")
    assert (out / "metrics.json").read_bytes() == before

    with run_lock(out):  # a run in progress holds the lock
        code, _, err = _cli(capsys, *_train(manifest, out, config), "--overwrite")
    _one_line_error(code, err, "another gigastream process", "is training into this folder")
    assert (out / "metrics.json").read_bytes() == before

    code, _, _ = _cli(capsys, *_train(manifest, out, config), "--overwrite")
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and len(metrics["epochs"]) == 1


# ----------------------------------------------------------------------------- 13, 14. files
def test_out_under_a_regular_file(tmp_path, trained_run, manifest, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    out = blocker / "run"
    code, _, err = _cli(capsys, *_train(manifest, out, write_tiny_yaml(tmp_path / "t.yaml")))
    _one_line_error(code, err, str(blocker), "not a folder")
    checkpoint = trained_run / "checkpoints" / "best.ckpt"
    slide = manifest.parent / "slides" / "synth_000.tif"
    code, _, err = _cli(capsys, "predict", "--checkpoint", checkpoint, "--out", out, slide)
    _one_line_error(code, err, str(blocker), "not a folder")


@pytest.mark.parametrize("damage", ["truncated", "random"])
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_corrupt_checkpoint_is_one_line(tmp_path, trained_run, manifest, capsys, damage, command):
    good = (trained_run / "checkpoints" / "best.ckpt").read_bytes()
    bad = tmp_path / "bad.ckpt"
    rng = np.random.default_rng(0)
    bad.write_bytes(good[: len(good) // 2] if damage == "truncated" else rng.bytes(len(good)))
    out = tmp_path / "out"
    inputs = (
        [manifest.parent / "slides" / "synth_000.tif"]
        if command == "predict"
        else ["--manifest", manifest]
    )
    code, _, err = _cli(capsys, command, "--checkpoint", bad, "--out", out, *inputs)
    _one_line_error(code, err, str(bad), "not a readable checkpoint")
    assert not out.exists()


# ----------------------------------------------------------------------------- 16. folds
def test_cross_validation_over_all_folds(tmp_path, manifest, capsys):
    splits = tmp_path / "splits.csv"
    code, _, _ = _cli(capsys, "splits", "--manifest", manifest, "--out", splits, "--folds", "3")
    assert code == 0
    config = write_tiny_yaml(tmp_path / "t.yaml", train={"epochs": 1, "heatmaps": 0})
    out = tmp_path / "cv"
    code, printed, _ = _cli(
        capsys, *_train(manifest, out, config), "--splits", splits, "--folds", "all"
    )
    assert code == 0 and "cross-validation AUC" in printed
    summary = json.loads((out / "cv_metrics.json").read_text())
    assert [row["fold"] for row in summary["folds"]] == [0, 1, 2]
    assert set(summary) >= {"val_auc_mean", "val_auc_sd"}
    aucs = [row["val_auc"] for row in summary["folds"] if row["val_auc"] is not None]
    assert summary["val_auc_mean"] == pytest.approx(np.mean(aucs))
    assert summary["val_auc_sd"] == pytest.approx(np.std(aucs, ddof=1) if len(aucs) > 1 else 0)
    for fold in range(3):
        assert json.loads((out / f"fold_{fold}" / "metrics.json").read_text())["status"] == (
            "completed"
        )


# ----------------------------------------------------------------------------- 17. dry run
def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, manifest, capsys):
    out = tmp_path / "run"
    config = write_tiny_yaml(tmp_path / "t.yaml")
    code, printed, _ = _cli(capsys, *_train(manifest, out, config), "--dry-run")
    assert code == 0
    assert "StreamingPlan for input (1, 3, 256, 256)" in printed
    assert "largest slide" in printed and "median slide" in printed
    # expected memory and time per slide, on a GPU and on this CPU
    assert "on a GPU: device memory <=" in printed and "on this machine's CPU" in printed
    assert "s per slide (forward+backward" in printed and "per epoch" in printed
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.yaml"]


def test_dry_run_of_all_folds_is_refused(tmp_path, manifest, capsys):
    out = tmp_path / "run"
    config = write_tiny_yaml(tmp_path / "t.yaml")
    code, _, err = _cli(capsys, *_train(manifest, out, config), "--folds", "all", "--dry-run")
    _one_line_error(code, err, "--dry-run plans one run: drop --folds all")
    assert not out.exists()


def test_dry_run_of_a_gpu_config_plans_without_the_gpu_and_weights(tmp_path, manifest, capsys):
    """camelyon16-style settings (CUDA, bf16, ImageNet weights) plan on a CPU-only machine."""
    out = tmp_path / "run"
    config = tmp_path / "gpu.yaml"
    config.write_text(
        "model: {arch: resnet18, weights: imagenet, tile_size: null, memory_budget: 40GiB}\n"
        "train: {device: cuda, precision: bf16-mixed}\n"
    )
    code, printed, err = _cli(capsys, *_train(manifest, out, config), "--dry-run")
    assert code == 0, err
    assert "precision bf16-mixed" in printed and "on a GPU: device memory <=" in printed
    assert "bf16, streamed ResNet-34" in printed  # the measured throughput it used
    assert not out.exists()


def test_expected_seconds_matches_the_measured_gigapixel_step():
    """The planner's compute over the measured H200 bf16 throughput: 65536^2 took 21.8 s."""
    import torch
    import torchvision

    from gigastream import precision
    from gigastream.streaming import StreamingModule
    from gigastream.streaming.throughput import expected_seconds

    trunk = torch.nn.Sequential(*list(torchvision.models.resnet34().children())[:-2]).eval()
    plan = StreamingModule(trunk, memory_budget="40GiB").plan(
        (1, 3, 65536, 65536),
        torch.bfloat16,
        lazy_input=True,
        device="cuda",
        available_bytes=139 * 2**30,
        available_host_bytes=100 * 2**30,
    )
    seconds, measured = expected_seconds(plan, "cuda", "bf16-mixed")
    assert 18 < seconds < 26 and "H200" in measured.measured_on
    assert precision.kind("16-mixed") == "fp16" and precision.kind("32") == "fp32"
    assert precision.kind("64") == "fp64" and precision.kind("bf16-mixed") == "bf16"
    assert expected_seconds(plan, "cuda", "64") is None  # never measured: no estimate
    assert expected_seconds(plan, "cpu", "64")[1].measured_on.startswith("2 CPU cores")
    assert expected_seconds(plan, "mps", "32") is None


def test_train_logs_one_line_per_epoch(tmp_path, manifest, capsys, caplog):
    """As the demo does: loss and validation AUC per epoch, without -v."""
    config = write_tiny_yaml(tmp_path / "t.yaml", train={"epochs": 1, "heatmaps": 0})
    import logging

    caplog.handler.setLevel(logging.INFO)  # the handler takes INFO; the loggers decide
    root = logging.getLogger()
    level, root.level = root.level, logging.WARNING  # the command line's default level
    try:
        code, _, err = _cli(capsys, "train", "--manifest", manifest, "--out", tmp_path / "r",
                            "--config", config)  # fmt: skip
    finally:
        root.setLevel(level)
    assert code == 0, err
    lines = [r.getMessage() for r in caplog.records if r.name == "gigastream.train.recorder"]
    assert len(lines) == 1 and lines[0].startswith("epoch 1: train loss ") and "val AUC" in lines[0]
