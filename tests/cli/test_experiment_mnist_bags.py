"""``gigastream experiment mnist-bags`` end to end on a few tiny bags (on the Lightning engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gigastream.cli.main import main

MNIST = Path(__file__).parents[2] / ".." / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(not MNIST.is_dir(), reason=f"real MNIST data not found at {MNIST}")

TINY = (
    "--bag-size 6 --train-bags 4 --val-bags 2 --test-bags 4 --epochs 1 --no-progress --threads 1"
).split()
KEYS = ("test_auc", "val_auc", "best_epoch", "train_seconds", "seconds_per_bag", "eval_seconds",
        "peak_rss_mib", "setup_rss_mib", "train_peak_rss_mib", "history", "config")  # fmt: skip


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()  # --threads 1 sets torch's thread count for the process
    yield
    torch.set_num_threads(threads)


@needs_mnist
@pytest.mark.parametrize("strategy", ["baseline", "accumulate", "sample"])
def test_writes_results(tmp_path, monkeypatch, strategy, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r.json"
    argv = ["experiment", "mnist-bags", "--strategy", strategy, "--data", str(MNIST),
            "--out", str(out), "--chunk-size", "4", "--sample-size", "3", *TINY]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.read_text())
    for key in KEYS:
        assert key in result
    assert 0.0 <= result["test_auc"] <= 1.0
    assert result["peak_rss_mib"] > 0 and result["best_epoch"] == 1
    assert result["engine"] == "lightning" and len(result["history"]) == 1
    assert result["config"]["strategy"] == strategy and result["config"]["bag_size"] == 6
    assert "test_auc" in json.loads(capsys.readouterr().out)
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no logs or checkpoints


@needs_mnist
def test_yaml_config_with_flags_taking_precedence(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("strategy: sample\nbag_size: 5\nlr: 0.002\nbags_per_step: 2\n")
    out = tmp_path / "r.json"
    argv = ["experiment", "mnist-bags", "--config", str(config), "--bag-size", "7",
            "--data", str(MNIST), "--out", str(out), *TINY[2:]]  # fmt: skip
    assert main(argv) == 0
    resolved = json.loads(out.read_text())["config"]
    assert (resolved["strategy"], resolved["bag_size"], resolved["lr"]) == ("sample", 7, 0.002)
    assert resolved["bags_per_step"] == 2
    config.write_text("bag_sise: 5\n")
    assert main(["experiment", "mnist-bags", "--config", str(config), "--data", str(MNIST)]) == 1


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    code = main(["experiment", "mnist-bags", "--data", str(tmp_path / "nowhere"), *TINY])
    assert code == 1
    assert "does not exist" in capsys.readouterr().err
