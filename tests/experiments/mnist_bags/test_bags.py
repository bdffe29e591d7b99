"""MNIST-bags training on the engine (``experiments/mnist_bags/bags.py``: MILClassifier in the
Trainer of ``build_trainer``, the best checkpoint of ``checkpoint_callbacks``)."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from sklearn.metrics import roc_auc_score

from gigastream.models.patch_mil import PatchConfig, PatchMIL
from gigastream.models.streaming_mil import StreamingMILConfig
from gigastream.train.config import ConfigError, OptimConfig, TrainConfig
from gigastream.train.files import load_checkpoint_file
from tests.experiments.conftest import experiment_module

bags = experiment_module("mnist_bags", "bags")
OPTIM = OptimConfig(lr=1e-2, weight_decay=0.0, schedule="constant")


def _bags(n_bags: int, n: int, dtype=torch.float64):
    """Bags of images in [0, 1] (the digit encoder's float input), alternating labels."""
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(n, 1, 28, 28, generator=g, dtype=dtype), b % 2) for b in range(n_bags)]


def _model(strategy: str, **kw) -> PatchMIL:
    """The experiment's model (PatchMIL built by the engine), small and in float64."""
    config = bags.MnistBagsConfig(
        model=StreamingMILConfig(kind="patches", head="gated_abmil", head_options={"attn_dim": 8}),
        patches=PatchConfig(
            bags.digit_encoder(out_dim=8, width=4),
            patch_size=28,
            strategy=strategy,
            chunk_size=7,
            **kw,
        ),
        train=TrainConfig(seed=0, precision="64"),
    )
    return bags.build_bag_model(config)


def _weights(model: PatchMIL) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _loop(**kw) -> TrainConfig:
    """The loop of these tests: float64 on the CPU, no progress bars."""
    values = {"epochs": 1, "device": "cpu", "precision": "64", "accumulate_grad_batches": 1}
    return TrainConfig(**{**values, "progress": False, **kw})


def _fit(out, model, bag_list, callbacks=(), **kw):
    return bags.train_bags(
        model, bag_list, bag_list[:2], optim=OPTIM, train=_loop(**kw), out=out, callbacks=callbacks
    )


def test_bad_settings(tmp_path):
    with pytest.raises(ConfigError, match="accumulate_grad_batches"):
        bags.MnistBagsConfig(train=TrainConfig(accumulate_grad_batches=0)).validate()
    with pytest.raises(ConfigError, match="bag_size"):
        bags.MnistBagsConfig(bag_size=0).validate()
    with pytest.raises(ConfigError, match="accumulate_grad_batches"):
        _fit(tmp_path, _model("baseline"), _bags(2, 3), accumulate_grad_batches=0)
    with pytest.raises(ConfigError, match="one device"):
        _fit(tmp_path, _model("baseline"), _bags(2, 3), devices=2)
    assert not any(tmp_path.iterdir())  # refused before anything is written


def test_accumulate_follows_the_baseline_trajectory_in_float64(tmp_path):
    """Same seed, float64, through the engine: chunked training takes whole-bag training's steps."""
    bag_list = _bags(3, 16)
    weights = {}
    for strategy in ("baseline", "accumulate"):
        model = _model(strategy)
        before = _weights(model)
        run = _fit(tmp_path / strategy, model, bag_list, epochs=2, accumulate_grad_batches=2)
        assert run.trainer.global_step == 4  # 2 steps per epoch: 2 bags, then the last one
        weights[strategy] = _weights(model)
    assert any(not torch.equal(a, b) for a, b in zip(before, weights["baseline"], strict=True))
    for a, b in zip(weights["baseline"], weights["accumulate"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


class _Grads(Callback):
    def __init__(self) -> None:
        self.grads: list[list[torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads.append([p.grad.detach().clone() for p in pl_module.model.parameters()])


def test_bags_per_step_averages_gradients_over_bags(tmp_path):
    bag_list = _bags(3, 10)
    model = _model("accumulate")
    params = list(model.parameters())
    expected = [torch.zeros_like(p) for p in params]
    for bag, label in bag_list:
        grads = torch.autograd.grad(model.loss(model(bag, label=label), label), params)
        for e, g in zip(expected, grads, strict=True):
            e += g / 3
    grads = _Grads()
    run = _fit(tmp_path, model, bag_list, callbacks=[grads], accumulate_grad_batches=3)
    assert len(grads.grads) == 1 and run.timer.bags == 3 and run.timer.epoch_seconds[0] > 0
    for g, e in zip(grads.grads[0], expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_sample_strategy_is_deterministic_per_run(tmp_path):
    bag_list = _bags(3, 12)
    runs = []
    for i in range(2):
        model = _model("sample", sample_size=5)
        _fit(tmp_path / str(i), model, bag_list, epochs=2)
        runs.append(_weights(model))
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_best_checkpoint_weights_and_auc(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bag_list = _bags(4, 6)
    model = _model("baseline")
    run = _fit(tmp_path / "run", model, bag_list, epochs=3)
    log = run.module.epoch_log
    assert [e["epoch"] for e in log] == [1, 2, 3]
    # the engine's val_score: the AUC, ties broken by the lower validation loss
    scores = [e["val_auc"] - 1e-3 * e["val_loss"] for e in log]
    assert scores[run.best_epoch - 1] == pytest.approx(max(scores), abs=1e-6)
    assert run.best_val_auc == log[run.best_epoch - 1]["val_auc"]
    assert run.best_checkpoint == tmp_path / "run" / "checkpoints" / "best.ckpt"
    saved = load_checkpoint_file(run.best_checkpoint)["state_dict"]
    for key, value in run.module.state_dict().items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)
    # the AUC of the trainer's predictions is that of the model applied bag by bag
    model.eval()
    with torch.no_grad():
        p = [torch.softmax(model(bag).logits, -1)[1].item() for bag, _ in bag_list]
    auc = roc_auc_score([label for _, label in bag_list], p)
    assert math.isfinite(auc) and bags.bags_auc(run, bag_list) == pytest.approx(auc, abs=1e-12)
    written = [path.relative_to(tmp_path) for path in tmp_path.rglob("*") if path.is_file()]
    assert [str(path) for path in written] == ["run/checkpoints/best.ckpt"]  # no logs


def test_bag_examples():
    example = bags.BagExamples(_bags(8, 4))[7]
    assert (example.slide_id, example.label, example.error) == ("bag_0007", 1, None)
    opened = example.open(None, "cpu")
    assert opened.x.shape == (4, 1, 28, 28)
    opened.close()


def test_run_config_sections_and_precision():
    config = bags.MnistBagsConfig(train=TrainConfig(precision="64", epochs=1, device="cpu"))
    config.validate()
    model = bags.build_bag_model(config)
    assert isinstance(model, PatchMIL) and model.config.patch_size == 28
    assert all(p.dtype == torch.float64 for p in model.parameters())
    with pytest.raises(ConfigError, match="model.kind must be patches"):
        bags.MnistBagsConfig(model=StreamingMILConfig(kind="streaming")).validate()
    with pytest.raises(ConfigError, match="frozen"):
        bags.MnistBagsConfig(
            patches=PatchConfig(bags.digit_encoder(), 28, strategy="frozen")
        ).validate()
    defaults = bags.MnistBagsConfig()
    assert (defaults.optim.lr, defaults.optim.schedule, defaults.train.epochs) == (
        5e-4,
        "constant",
        5,
    )
    assert defaults.train.accumulate_grad_batches == 1 and defaults.train.device == "cpu"
