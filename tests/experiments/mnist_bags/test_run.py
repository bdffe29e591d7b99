"""``experiments/mnist_bags/run.py`` end to end on a few tiny bags (on the Lightning engine)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from tests.experiments.conftest import MNIST, experiment_module

main = experiment_module("mnist_bags").main
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


def _csv_auc(path) -> float:
    """ROC AUC of p(positive) from the written predictions, by sklearn."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["slide_id"] for r in rows] == [f"bag_{i:04d}" for i in range(len(rows))]
    return roc_auc_score(
        [r["label"] == "positive" for r in rows], [float(r["p_positive"]) for r in rows]
    )


@needs_mnist
@pytest.mark.parametrize("strategy", ["baseline", "accumulate", "sample"])
def test_writes_results(tmp_path, monkeypatch, strategy, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    argv = ["--strategy", strategy, "--data", str(MNIST), "--out", str(out),
            "--chunk-size", "4", "--sample-size", "3", *TINY]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "metrics.json").read_text())
    for key in KEYS:
        assert key in result
    assert result["status"] == "completed"
    assert math.isfinite(result["test_auc"])
    assert result["test_auc"] == pytest.approx(_csv_auc(out / "test_predictions.csv"), abs=1e-12)
    assert result["peak_rss_mib"] > 0 and result["best_epoch"] == 1
    assert result["engine"] == "lightning" and len(result["history"]) == 1
    assert result["config"]["patches"]["strategy"] == strategy and result["config"]["bag_size"] == 6
    assert "test_auc" in json.loads(capsys.readouterr().out)
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["run/checkpoints/best.ckpt", "run/metrics.json", "run/test_predictions.csv"]


@needs_mnist
def test_yaml_config_with_flags_taking_precedence(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "patches: {strategy: sample}\nbag_size: 5\noptim: {lr: 0.002}\n"
        "train: {accumulate_grad_batches: 2}\n"
    )
    out = tmp_path / "run"
    argv = ["--config", str(config), "--bag-size", "7",
            "--data", str(MNIST), "--out", str(out), *TINY[2:]]  # fmt: skip
    assert main(argv) == 0
    resolved = json.loads((out / "metrics.json").read_text())["config"]
    assert (resolved["patches"]["strategy"], resolved["bag_size"]) == ("sample", 7)
    assert resolved["optim"]["lr"] == 0.002
    assert resolved["train"]["accumulate_grad_batches"] == 2
    config.write_text("bag_sise: 5\n")
    assert main(["--config", str(config), "--data", str(MNIST), "--out", str(out)]) == 1


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["--data", str(tmp_path / "nowhere"), "--out", str(out), *TINY])
    assert code == 1
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()  # nothing written
