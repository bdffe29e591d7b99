"""``gigastream demo`` end to end at a tiny size: the outputs exist and are valid.

The real demo (10 slides of 2048^2 px, 3 epochs) takes minutes; here 4 slides of 512^2 px
stream at 1 um/px for one epoch, which exercises every step in seconds.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from gigastream.cli.main import main

TINY = ["--slides", "4", "--size", "512", "--tile-size", "192", "--no-progress", "--threads", "1"]


def test_demo_writes_outputs(tmp_path, sources, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--epochs", "1", *TINY, "--sources", *sources])
    assert code == 0
    assert "validation (2 slides): AUC" in capsys.readouterr().out

    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=pytest.fail)
    assert metrics["status"] == "completed"
    assert len(metrics["train_slides"]) == 2 and len(metrics["val_slides"]) == 2
    assert not set(metrics["train_slides"]) & set(metrics["val_slides"])
    (epoch,) = metrics["epochs"]
    assert epoch["epoch"] == 1 and len(epoch["train_slide_losses"]) == 2
    assert math.isfinite(epoch["train_loss"]) and math.isfinite(epoch["val_loss"])
    assert 0.0 <= epoch["val_accuracy"] <= 1.0
    assert epoch["val_auc"] is None or 0.0 <= epoch["val_auc"] <= 1.0
    assert epoch["train_seconds"] > 0 and metrics["peak_rss_mib"] > 100
    assert metrics["plan"]["input_shape"] == [1, 3, 256, 256]
    assert any(s["mode"] == "stream" for s in metrics["plan"]["segments"])
    assert len(metrics["final"]["predictions"]) == 2

    assert (out / "training_curve.png").stat().st_size > 1000
    heatmaps = sorted((out / "heatmaps").glob("*.png"))
    assert [str(p.relative_to(out)) for p in heatmaps] == sorted(metrics["outputs"]["heatmaps"])
    assert len(heatmaps) == 2
    config = yaml.safe_load((out / "checkpoints" / "config.yaml").read_text())
    assert config["model"]["arch"] == "resnet18" and config["train"]["epochs"] == 1
    assert config["synth"]["slides"] == 4 and config["data"]["mpp"] == 1.0
    checkpoint = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["config"] == config
    assert (out / "checkpoints" / "best.pt").is_file()


def test_failed_run_keeps_checkpoints_and_metrics(tmp_path, sources, monkeypatch, capsys):
    from gigastream.train import slide_trainer

    calls = {"n": 0}
    evaluate = slide_trainer.evaluate

    def failing_evaluate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated failure in epoch 2")
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(slide_trainer, "evaluate", failing_evaluate)
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--epochs", "2", *TINY, "--sources", *sources])
    assert code == 1
    assert "simulated failure in epoch 2" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"].startswith("failed: RuntimeError")
    assert [e["epoch"] for e in metrics["epochs"]] == [1]
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 1
    assert (out / "checkpoints" / "config.yaml").is_file()


def test_demo_bad_config(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  depth: 3\n")
    assert main(["demo", "--out", str(tmp_path / "x"), "--config", str(config)]) == 1


def test_demo_without_he_sources_uses_procedural_texture(tmp_path, monkeypatch, capsys):
    from gigastream.cli import demo

    monkeypatch.setattr(demo, "_find_sources", lambda given: [])
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--epochs", "1", *TINY])
    assert code == 0
    assert (out / "procedural_he.png").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["config"]["sources"] == [str(out / "procedural_he.png")]
