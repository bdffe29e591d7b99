"""``gigastream demo`` end to end at a tiny size: the outputs exist and are valid.

The real demo takes minutes; here 8 slides of 512^2 px stream at 1 um/px for one epoch,
which exercises every step in seconds.
"""

from __future__ import annotations

import json

import pytest
import yaml

from gigastream.cli.main import main

TINY = ["--slides", "8", "--size", "512", "--tile-size", "192", "--no-progress", "--threads", "1"]


def test_demo_writes_outputs(tmp_path, sources, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--epochs", "1", *TINY, "--sources", *sources])
    assert code == 0
    printed = capsys.readouterr().out
    assert "held-out slides): AUC" in printed

    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=pytest.fail)
    assert metrics["status"] == "completed"
    assert len(metrics["train_slides"]) + len(metrics["val_slides"]) == 8
    assert not set(metrics["train_slides"]) & set(metrics["val_slides"])
    (epoch,) = metrics["epochs"]
    assert epoch["epoch"] == 1 and len(epoch["train_slide_losses"]) == len(metrics["train_slides"])
    assert metrics["final"]["slides"] == len(metrics["val_slides"])
    assert (out / "training_curve.png").stat().st_size > 1000
    assert (out / "predictions.csv").read_text().startswith("slide_id,label,p_negative,p_positive")
    heatmaps = sorted(str(p.relative_to(out)) for p in (out / "heatmaps").glob("*.png"))
    assert heatmaps and heatmaps == sorted(metrics["outputs"]["heatmaps"])
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["train"]["epochs"] == 1 and config["data"]["mpp"] > 0
    assert config["class_names"] == ["negative", "positive"]
    assert (out / "checkpoints" / "best.ckpt").is_file() and (
        out / "checkpoints" / "last.ckpt"
    ).is_file()
    assert (out / "data" / "manifest.csv").is_file()

    # a second demo into the same folder refuses, unless --overwrite
    assert main(["demo", "--out", str(out), "--epochs", "1", *TINY, "--sources", *sources]) == 1
    assert "already holds a run" in capsys.readouterr().err


def test_demo_bad_config(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  depth: 3\nsynth:\n  slidez: 3\n")
    assert main(["demo", "--out", str(tmp_path / "x"), "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "unknown key" in err and "slides" in err
    assert not (tmp_path / "x").exists()


def test_demo_without_he_sources_uses_procedural_texture(tmp_path, monkeypatch):
    from gigastream.cli import common

    monkeypatch.setattr(common, "find_shared_data", lambda *names: [])
    monkeypatch.chdir(tmp_path)  # and a relative --out, as in the README's command
    out = tmp_path / "demo"
    # 8 slides: a validation quarter of 2, one of each class (4 would leave one slide)
    code = main(["demo", "--out", "demo", "--epochs", "1", "--slides", "8", *TINY[2:]])
    assert code == 0
    assert (out / "procedural_he.png").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed"
