"""The engine with two real gloo processes (DDP on the CPU), bf16 autocast and the recipe head."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from tests.train.conftest import tiny_config, write_tiny_yaml


def test_ddp_two_cpu_processes_train_one_run(tmp_path, manifest):
    """``--devices 2 --strategy ddp`` on the CPU: Lightning starts a second real process."""
    config = write_tiny_yaml(tmp_path / "c.yaml", train={"epochs": 1})
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    env.pop("RANK", None)
    done = subprocess.run(
        [sys.executable, "-m", "gigastream.cli.main", "train", "--manifest", str(manifest),
         "--out", str(out), "--config", str(config), "--device", "cpu", "--devices", "2",
         "--strategy", "ddp"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["config"]["train"]["devices"] == 2
    # every training slide was seen once across the two ranks in the epoch
    (epoch,) = metrics["epochs"]
    assert len(epoch["train_slide_losses"]) >= len(metrics["train_slides"]) // 2
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_bf16_autocast_trains_and_predicts(tmp_path, manifest):
    from gigastream.train.fitting import fit
    from gigastream.train.prediction import load_classifier

    config = tiny_config(manifest, train={"epochs": 1, "precision": "bf16-mixed"})
    metrics = fit(config, tmp_path / "run")
    assert metrics["status"] == "completed"
    assert all(torch.isfinite(torch.tensor(e["train_loss"])) for e in metrics["epochs"])
    module, loaded = load_classifier(tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert loaded.train.precision == "bf16-mixed"


def test_the_recipe_head_trains(tmp_path, manifest):
    """The default recipe (topk head with instance loss, BN calibration, augmentation)."""
    from dataclasses import replace

    from gigastream.train.fitting import fit

    config = tiny_config(
        manifest, train={"epochs": 1, "bn_calibration": 2, "accumulate_grad_batches": 2}
    )
    model = replace(config.model, head="topk", head_options={"k": 4, "instance_weight": 1.0})
    config = replace(config, model=model)
    metrics = fit(config, tmp_path / "run")
    assert metrics["status"] == "completed"
    assert len(metrics["epochs"][0]["train_slide_losses"]) == len(metrics["train_slides"])
