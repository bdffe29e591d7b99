"""Regression runs (``task: regression``, issue 18): the metrics against their definitions,
the target checks and strata, the loss and its mapping back to the label's units, exact
streamed and chunked gradients of the regression loss, and a tiny run end to end
(``metrics.json``, ``predictions.csv``, the stored target scale, ``evaluate``, ``predict``,
cross-validation)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gigastream.models.patch_mil import PatchConfig, PatchMIL
from gigastream.models.streaming_mil import StreamingMIL, StreamingMILConfig
from gigastream.train.config import ConfigError, TargetConfig
from gigastream.train.metrics import confusion_matrix, regression_metrics
from gigastream.train.module import MILClassifier
from gigastream.train.selection import (
    LabelIndex,
    check_targets,
    parse_target,
    target_scale,
    target_strata,
)
from gigastream.wsi.manifest import ManifestRow
from tests.cli.clitools import cli, one_line_error
from tests.exactness import assert_same_gradients
from tests.train.conftest import synth_manifest, tiny_config, write_tiny_yaml


# ----------------------------------------------------------------------------- metrics
def test_regression_metrics_follow_their_definitions():
    y = np.array([3.0, 1.0, 4.0, 1.5, 5.0, 9.0])
    p = np.array([2.5, 0.5, 4.5, 2.0, 6.0, 7.0])
    m = regression_metrics(y, p)
    rank = lambda v: np.argsort(np.argsort(v)).astype(float)  # noqa: E731 (no ties here)
    assert m["spearman"] == pytest.approx(np.corrcoef(rank(y), rank(p))[0, 1], abs=1e-12)
    assert m["pearson"] == pytest.approx(np.corrcoef(y, p)[0, 1], abs=1e-12)
    assert m["mae"] == pytest.approx(np.abs(p - y).mean(), abs=1e-12)
    assert m["rmse"] == pytest.approx(math.sqrt(((p - y) ** 2).mean()), abs=1e-12)
    r2 = 1 - ((p - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert m["r2"] == pytest.approx(r2, abs=1e-12)
    assert regression_metrics(y, y)["r2"] == 1.0 and regression_metrics(y, -y)["spearman"] == -1.0


def test_regression_metrics_are_nan_where_undefined():
    constant = regression_metrics([1.0, 2.0], [0.5, 0.5])  # constant predictions
    assert math.isnan(constant["spearman"]) and math.isnan(constant["pearson"])
    assert constant["mae"] == pytest.approx(1.0)
    assert math.isnan(regression_metrics([2.0, 2.0], [1.0, 3.0])["r2"])  # constant targets
    assert all(math.isnan(v) for v in regression_metrics([], []).values())


def test_confusion_matrix_counts_true_against_predicted():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    assert confusion_matrix([0, 1, 1, 2], probs) == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert confusion_matrix([], np.zeros((0, 2))) == [[0, 0], [0, 0]]


# ----------------------------------------------------------------------------- targets
def _rows(*labels) -> list[ManifestRow]:
    return [ManifestRow(f"s{i}", f"s{i}.tif", lab, f"c{i}") for i, lab in enumerate(labels)]


def test_targets_are_numbers_and_every_bad_label_is_named():
    assert check_targets(_rows("0.5", "3", "-1e2", " 7 ")) == ["value"]
    with pytest.raises(ConfigError) as err:
        check_targets(_rows("1.5", "high", "nan", "2"), "m.csv")
    assert "m.csv" in str(err.value) and "s1 ('high')" in str(err.value)
    assert "s2 ('nan')" in str(err.value) and "--task classification" in str(err.value)
    with pytest.raises(ConfigError, match="at least two distinct values"):
        check_targets(_rows("2", "2.0"))
    assert parse_target("inf") is None and parse_target(None) is None
    assert LabelIndex(["value"]).get("x") is None and LabelIndex(["a", "b"]).get("b") == 1


def test_target_scale_and_quantile_strata():
    mean, std = target_scale(_rows("1", "3"))
    assert (mean, std) == (2.0, 1.0)
    assert target_scale(_rows("4", "4")) == (4.0, 1.0)  # constant: std 1
    strata = [r.label for r in target_strata(_rows(*map(str, range(16))))]
    assert strata == ["q1"] * 4 + ["q2"] * 4 + ["q3"] * 4 + ["q4"] * 4
    few = [r.label for r in target_strata(_rows("1", "2", "3"))]
    assert few == ["q1"] * 3  # fewer than 8 slides: one stratum


# ----------------------------------------------------------------------------- the loss
class _Fixed(nn.Module):
    """A stand-in MIL model whose one output is a parameter."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor([value], dtype=torch.float64))

    def forward(self, x, label=None):
        assert label is None  # a regression run gives the model no class
        return type("Out", (), {"logits": self.value * 1.0, "attention": torch.ones(1)})()


@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_the_loss_is_of_the_standardised_target_and_predictions_are_in_its_units(loss):
    target = TargetConfig(loss=loss, huber_delta=0.5, mean=10.0, std=4.0)
    module = MILClassifier(_Fixed(1.0), ["value"], target=target)
    out = module.model(None)
    assert (18.0 - 10.0) / 4.0 == 2.0  # the standardised target: the output 1.0 is 1.0 off
    expected = 1.0 if loss == "mse" else 0.5 * (1.0 - 0.5 * 0.5)  # Huber: linear past 0.5
    assert float(module._regression_loss(out.logits, 18.0).detach()) == pytest.approx(expected)
    assert module.predicted_value(out.logits) == pytest.approx(1.0 * 4.0 + 10.0)
    plain = MILClassifier(_Fixed(1.0), ["value"], target=TargetConfig(standardize=False))
    assert plain.predicted_value(out.logits) == pytest.approx(1.0)


def test_the_instance_loss_regresses_every_instance_to_the_slide_value():
    from gigastream.mil.pooling import MeanPoolMIL

    torch.manual_seed(0)
    head = MeanPoolMIL(4, 1, hidden_dim=3).double()
    features = torch.randn(5, 4, dtype=torch.float64)
    out = head(features)
    assert torch.allclose(out.instance_logits.mean(dim=0), out.logits, atol=1e-12)
    target = TargetConfig(instance_weight=0.5, mean=1.0, std=2.0)
    module = MILClassifier(head, ["value"], target=target)
    standard = (4.0 - 1.0) / 2.0
    expected = (out.logits[0] - standard) ** 2 + 0.5 * (
        (out.instance_logits - standard) ** 2
    ).mean()
    assert module._regression_loss(out.logits, 4.0, out).item() == pytest.approx(expected.item())
    with pytest.raises(
        ConfigError,
        match=r"target.instance_weight needs per-instance scores \(head mean or fraction\), not head clam_sb",
    ):
        tiny_config(Path("m.csv"), task="regression", target={"instance_weight": 1.0})


def test_the_positive_instance_loss_calls_every_instance_of_a_slide_above_the_threshold():
    from gigastream.mil.pooling import FractionMIL

    torch.manual_seed(0)
    head = FractionMIL(4, 1, hidden_dim=3).double()
    out = head(torch.randn(6, 4, dtype=torch.float64))
    called = torch.sigmoid(out.instance_logits).mean(dim=0)
    assert torch.allclose(out.logits, head.scale * called + head.offset, atol=1e-12)
    assert torch.allclose(out.attention.sum(), torch.ones((), dtype=torch.float64))
    target = TargetConfig(instance_weight=2.0, instance_target="positive", positive_above=0.5)
    module = MILClassifier(head, ["value"], target=target)
    z = out.instance_logits.reshape(-1)
    for value, positive in ((3.0, 1.0), (0.5, 0.0)):  # 0.5 is not above 0.5
        bag = (out.logits[0] - value) ** 2  # standardize: mean/std unresolved -> (0, 1)
        instances = torch.nn.functional.binary_cross_entropy_with_logits(
            z, torch.full_like(z, positive)
        )
        got = module._regression_loss(out.logits, value, out).item()
        assert got == pytest.approx((bag + 2.0 * instances).item())


def test_the_presence_loss_is_of_the_top_k_instance_scores():
    from gigastream.mil.pooling import FractionMIL

    torch.manual_seed(1)
    head = FractionMIL(4, 1).double()
    out = head(torch.randn(10, 4, dtype=torch.float64))
    z = out.instance_logits.reshape(-1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    base = TargetConfig(instance_weight=1.0, instance_target="positive")
    plain = MILClassifier(head, ["value"], target=base)._regression_loss(out.logits, 2.0, out)
    target = TargetConfig(**{**base.__dict__, "presence_weight": 0.5, "presence_k": 3})
    both = MILClassifier(head, ["value"], target=target)._regression_loss(out.logits, 2.0, out)
    top = z.topk(3).values.mean()
    assert (both - plain).item() == pytest.approx(0.5 * bce(top, torch.ones_like(top)).item())
    with pytest.raises(ConfigError, match="presence_weight needs target.instance_target"):
        TargetConfig(presence_weight=1.0).validate()


def test_a_balanced_regression_interleaves_slides_with_and_without_a_value():
    from gigastream.train.fitting import _strata

    rows = _rows("0", "2.5", "0", "7", "x")
    config = tiny_config(Path("m.csv"), task="regression", target={"positive_above": 1.0})
    assert _strata(rows, config) == [0, 1, 0, 1, None]
    assert _strata(rows, tiny_config(Path("m.csv"))) is None  # a classifier: its classes


def _regression_loss(value: float):
    module = MILClassifier(nn.Identity(), ["value"], target=TargetConfig(mean=1.0, std=2.0))
    return lambda out: module._regression_loss(out["logits"], value)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_streamed_regression_gradients_equal_the_conventional_ones(dtype):
    """The regression loss through a streamed trunk (several tiles) and a one-output head:
    output, input gradient and every parameter gradient as without streaming (the suite's
    tolerances: float64 1e-12, float32 rtol 1e-5 / atol 5e-6)."""
    torch.manual_seed(0)
    options = {"hidden_dim": 32, "attn_dim": 16, "dropout": 0.0}
    config = StreamingMILConfig(
        arch="resnet18", head="gated_abmil", head_options=options, num_classes=1, pool=2,
        tile_size=96,
    )  # fmt: skip
    model = StreamingMIL(config).to(dtype)
    model.train()
    x = torch.randn(1, 3, 192, 160, dtype=dtype, generator=torch.Generator().manual_seed(1))

    def slide(stream: bool):
        return lambda t: {"logits": model(t, stream=stream).logits}

    assert_same_gradients(slide(False), slide(True), x, model, loss=_regression_loss(3.5))
    tiles = [s.tiles[0] * s.tiles[1] for s in model.trunk.last_plan.segments if s.mode == "stream"]
    assert max(tiles) > 1


def test_chunked_patch_bag_regression_gradients_equal_the_whole_bag_float64():
    """``accumulate`` (chunks of 3 of 7 patches) against ``baseline`` under the regression
    loss: the output and every encoder and head gradient, and each patch's."""
    from gigastream.models.encoders import EncoderConfig

    torch.manual_seed(0)
    config = PatchConfig(EncoderConfig("resnet18"), patch_size=32, chunk_size=3)
    model = PatchMIL(config, "gated_abmil", 1, {"attn_dim": 8}).double()
    x = torch.rand(7, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def bag(strategy: str):
        def run(t):
            model.strategy.name = strategy
            return {"logits": model(t).logits}

        return run

    assert_same_gradients(bag("baseline"), bag("accumulate"), x, model, loss=_regression_loss(-2))


# ----------------------------------------------------------------------------- a run
@pytest.fixture(scope="module")
def count_manifest(tmp_path_factory) -> Path:
    """Eight tiny synthetic slides labelled with their lesion count (0-3)."""
    return synth_manifest(tmp_path_factory.mktemp("counts"), target="lesion_count")


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory, count_manifest) -> Path:
    from gigastream.train.fitting import fit

    out = tmp_path_factory.mktemp("regression") / "run"
    fit(tiny_config(count_manifest, task="regression", train={"epochs": 1}), out)
    return out


def test_a_regression_run_reports_its_metrics_and_values(regression_run, count_manifest):
    metrics = json.loads((regression_run / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    final = metrics["final"]
    for name in ("spearman", "pearson", "mae", "rmse", "r2", "loss"):
        assert f"val_{name}" in final, final
    assert final["val_mae"] >= 0 and final["slides"] == 2
    epoch = metrics["epochs"][0]
    assert epoch["val_auc"] is None and "val_spearman" in epoch
    with open(regression_run / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["slide_id", "label", "prediction"] and len(rows) == 2
    labels = {r["slide_id"]: r["label"] for r in csv.DictReader(open(count_manifest))}
    for row in rows:
        assert float(row["label"]) == float(labels[row["slide_id"]])
        assert math.isfinite(float(row["prediction"]))
    # the target scale is the training slides' and is stored with the run
    config = (regression_run / "config.yaml").read_text()
    train = [float(labels[s]) for s in metrics["train_slides"]]
    assert f"mean: {np.mean(train)}" in config and f"std: {np.std(train)}" in config
    assert "task: regression" in config and (regression_run / "training_curve.png").is_file()
    assert ".png" in [Path(p).suffix for p in metrics["outputs"]["heatmaps"]]  # titled by value


def test_evaluate_and_predict_a_regression_checkpoint(
    regression_run, count_manifest, tmp_path, capsys
):
    checkpoint = regression_run / "checkpoints" / "best.ckpt"
    code, out, _ = cli(
        capsys, "evaluate", "--checkpoint", checkpoint, "--manifest", count_manifest,
        "--out", tmp_path / "ev", "--split", "all", "--no-progress",
    )  # fmt: skip
    assert code == 0 and "Spearman" in out and "R²" in out, out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["task"] == "regression" and metrics["slides"] == 8
    values = [p["prediction"] for p in metrics["predictions"]]
    labels = [p["label"] for p in metrics["predictions"]]
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(np.subtract(values, labels))))
    slides = sorted((count_manifest.parent / "slides").glob("*.tif"))[:2]
    code, out, _ = cli(capsys, "predict", "--checkpoint", checkpoint, "--out", tmp_path / "pr",
                       "--no-progress", *slides)  # fmt: skip
    assert code == 0 and "prediction" in out, out
    header = (tmp_path / "pr" / "predictions.csv").read_text().splitlines()[0]
    assert header == "slide_id,label,prediction"


def test_regression_settings_that_cannot_be_are_one_line(
    count_manifest, manifest, tmp_path, capsys
):
    yaml = write_tiny_yaml(tmp_path / "t.yaml")
    train = ["train", "--manifest", manifest, "--out", tmp_path / "r", "--config", yaml]
    code, _, err = cli(capsys, *train, "--task", "regression")  # labels positive/negative
    one_line_error(code, err, "task regression needs a number", "synth_")
    code, _, err = cli(capsys, *train, "--task", "regression", "--positive-class", "positive")
    one_line_error(code, err, "positive_class", "regression")
    bad = write_tiny_yaml(tmp_path / "bad.yaml", task="regresion")
    code, _, err = cli(capsys, "train", "--manifest", count_manifest, "--out", tmp_path / "r2",
                       "--config", bad)  # fmt: skip
    one_line_error(code, err, "task must be one of", "did you mean 'regression'")
    bad = write_tiny_yaml(tmp_path / "loss.yaml", task="regression", target={"loss": "l1"})
    code, _, err = cli(capsys, "train", "--manifest", count_manifest, "--out", tmp_path / "r3",
                       "--config", bad)  # fmt: skip
    one_line_error(code, err, "target.loss must be one of mse, huber")
    assert not (tmp_path / "r").exists() and not (tmp_path / "r2").exists()


def test_cross_validation_of_a_regression_reports_mean_and_sd(count_manifest, tmp_path, capsys):
    splits = tmp_path / "splits.csv"
    code, _, err = cli(capsys, "splits", "--manifest", count_manifest, "--folds", "2",
                       "--out", splits, "--task", "regression")  # fmt: skip
    assert code == 0, err
    yaml = write_tiny_yaml(tmp_path / "t.yaml", train={"epochs": 1, "heatmaps": 0})
    code, out, err = cli(capsys, "train", "--manifest", count_manifest, "--out", tmp_path / "cv",
                         "--config", yaml, "--task", "regression", "--splits", splits,
                         "--folds", "all")  # fmt: skip
    assert code == 0, err
    assert "cross-validation Spearman" in out and out.count("fold ") == 2, out
    summary = json.loads((tmp_path / "cv" / "cv_metrics.json").read_text())
    assert summary["task"] == "regression" and len(summary["folds"]) == 2
    maes = [f["val_mae"] for f in summary["folds"]]
    assert summary["val_mae_mean"] == pytest.approx(np.mean(maes))
    assert summary["val_mae_sd"] == pytest.approx(np.std(maes, ddof=1))


def test_a_regression_curve_shows_spearman_and_picks_its_best_epoch():
    from gigastream.viz.curves import best_epoch, training_curve_figure

    base = {"train_loss": 1.0, "val_loss": 1.0, "val_auc": None, "val_accuracy": None}
    epochs = [
        {**base, "epoch": 1, "val_spearman": 0.2, "val_r2": 0.1},
        {**base, "epoch": 2, "val_spearman": 0.6, "val_r2": -0.3},
        {**base, "epoch": 3, "val_spearman": 0.5, "val_r2": 0.4},
    ]
    assert best_epoch(epochs) == 2  # by Spearman, not by R² or the (absent) AUC
    fig = training_curve_figure(epochs, "t", None, None)
    texts = [
        t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()
    ]
    assert "best: epoch 2, Spearman 0.600" in texts and "validation R²" in texts
