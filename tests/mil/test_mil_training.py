"""Bag training strategies and MNIST-bags training on the engine (MILClassifier + Lightning)."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from gigastream import create_mil_head
from gigastream.mil.encoders import SmallCNN
from gigastream.train.config import OptimConfig
from gigastream.train.mil_experiment import BagExamples, MnistBagsConfig, bags_auc, train_bags
from gigastream.train.mil_strategies import BagClassifier, StrategyConfig
from gigastream.train.module import MILModel

OPTIM = OptimConfig(lr=1e-2, weight_decay=0.0, schedule="constant")


def _bags(n_bags: int, n: int, dtype=torch.float64):
    """Bags of images in [0, 1] (SmallCNN's float input), alternating labels."""
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(n, 1, 28, 28, generator=g, dtype=dtype), b % 2) for b in range(n_bags)]


def _model(strategy: str, **kw) -> BagClassifier:
    torch.manual_seed(0)
    encoder = SmallCNN(out_dim=8, width=4).double()
    head = create_mil_head("gated_abmil", 8, 2, attn_dim=8).double()
    return BagClassifier(encoder, head, StrategyConfig(strategy, chunk_size=7, **kw))


def _weights(model: BagClassifier) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _fit(model, bags, **kw):
    kw = {"optim": OPTIM, "dtype": "float64", **kw}
    return train_bags(model, bags, bags[:2], **kw)


def test_unknown_strategy_and_bad_settings():
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        StrategyConfig("nope")
    with pytest.raises(ValueError, match="sample_size"):
        StrategyConfig("sample", sample_size=0)
    with pytest.raises(ValueError, match="bags_per_step"):
        MnistBagsConfig(bags_per_step=0)
    with pytest.raises(ValueError, match="bags_per_step"):
        train_bags(_model("baseline"), _bags(2, 3), _bags(2, 3), optim=OPTIM, bags_per_step=0)


def test_bag_classifier_keeps_the_engine_contract():
    model = _model("accumulate")
    assert isinstance(model, MILModel)
    groups = model.parameter_groups()
    assert {id(p) for p in groups["trunk"] + groups["head"]} == {id(p) for p in model.parameters()}
    assert not any(k.startswith("_") for k in model.state_dict())  # no duplicate keys
    bag = _bags(1, 10)[0][0]
    out = model(bag, label=1)
    assert out.logits.shape == (2,) and out.attention.shape == (10,)
    model.loss(out, 1).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()  # evaluation: every instance, chunked, no graph
    assert not model.features(bag).requires_grad


def test_accumulate_follows_the_baseline_trajectory_in_float64():
    """Same seed, float64, through the engine: chunked training takes whole-bag training's steps."""
    bags = _bags(3, 16)
    weights = {}
    for strategy in ("baseline", "accumulate"):
        model = _model(strategy)
        before = _weights(model)
        run = _fit(model, bags, epochs=2, bags_per_step=2)
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


def test_bags_per_step_averages_gradients_over_bags():
    bags = _bags(3, 10)
    model = _model("accumulate")
    params = list(model.parameters())
    expected = [torch.zeros_like(p) for p in params]
    for bag, label in bags:
        grads = torch.autograd.grad(model.loss(model(bag, label=label), label), params)
        for e, g in zip(expected, grads, strict=True):
            e += g / 3
    grads = _Grads()
    run = _fit(model, bags, bags_per_step=3, callbacks=[grads])
    assert len(grads.grads) == 1 and run.timer.bags == 3 and run.timer.epoch_seconds[0] > 0
    for g, e in zip(grads.grads[0], expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_sample_strategy_sees_k_instances_and_is_deterministic_per_run():
    model = _model("sample", sample_size=5)
    assert model.features(_bags(1, 12)[0][0]).shape == (5, 8)
    assert model.features(_bags(1, 3)[0][0]).shape == (3, 8)
    model.eval()
    assert model.features(_bags(1, 12)[0][0]).shape == (12, 8)
    bags = _bags(3, 12)
    runs = []
    for _ in range(2):
        model = _model("sample", sample_size=5)
        _fit(model, bags, epochs=2)
        runs.append(_weights(model))
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_best_epoch_weights_and_auc_and_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bags = _bags(4, 6)
    model = _model("baseline")
    run = _fit(model, bags, epochs=3)
    log = run.module.epoch_log
    assert [e["epoch"] for e in log] == [1, 2, 3]
    aucs = [e["val_auc"] for e in log]
    assert run.best.epoch == 1 + aucs.index(max(aucs)) and run.best.val_auc == max(aucs)
    for key, value in run.module.state_dict().items():
        torch.testing.assert_close(value, run.best.state[key], rtol=0, atol=0)
    assert 0.0 <= bags_auc(run, bags) <= 1.0
    assert not any(tmp_path.iterdir())  # no logs, no checkpoints


def test_bag_examples():
    example = BagExamples(_bags(8, 4))[7]
    assert (example.slide_id, example.label, example.error) == ("bag_0007", 1, None)
    opened = example.open(None, "cpu")
    assert opened.x.shape == (4, 1, 28, 28)
    opened.close()


def test_small_cnn_takes_uint8_or_unit_floats():
    from gigastream.mil.datasets import bag_tensor

    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8).numpy()
    encoder = SmallCNN(out_dim=4).double()
    raw = bag_tensor(images, [0, 2, 4])
    assert raw.dtype == torch.uint8 and raw.shape == (3, 1, 28, 28)
    torch.testing.assert_close(encoder(raw), encoder(bag_tensor(images, [0, 2, 4], torch.float64)))
