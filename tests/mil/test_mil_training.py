"""Training strategies and the MIL training loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gigastream import create_mil_head
from gigastream.mil.encoders import SmallCNN
from gigastream.train.mil_strategies import BagEncoder, StrategyConfig
from gigastream.train.mil_trainer import bag_auc, evaluate_auc, model_parameters, train_epoch


def _bags(n_bags: int, n: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(n, 1, 28, 28, generator=g, dtype=dtype), b % 2) for b in range(n_bags)]


def _model(strategy: str, **kw):
    torch.manual_seed(0)
    encoder = SmallCNN(out_dim=8, width=4).double()
    head = create_mil_head("gated_abmil", 8, 2, attn_dim=8).double()
    return BagEncoder(encoder, StrategyConfig(strategy, chunk_size=7, **kw)), head


def test_unknown_strategy():
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        StrategyConfig("nope")


def test_accumulate_follows_the_baseline_trajectory_in_float64():
    """Same seed, float64: chunked training takes the same steps as whole-bag training."""
    bags = _bags(3, 16)
    params = {}
    for strategy in ("baseline", "accumulate"):
        bag_encoder, head = _model(strategy)
        opt = torch.optim.Adam(model_parameters(bag_encoder.encoder, head), lr=1e-2)
        train_epoch(bag_encoder, head, bags, opt, bags_per_step=2, progress=False)
        params[strategy] = [p.detach().clone() for p in model_parameters(bag_encoder.encoder, head)]
    for a, b in zip(params["baseline"], params["accumulate"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_sample_strategy_sees_k_instances():
    bag_encoder, _ = _model("sample", sample_size=5)
    g = torch.Generator().manual_seed(1)
    assert bag_encoder.train_features(_bags(1, 12)[0][0], g).shape == (5, 8)
    assert bag_encoder.train_features(_bags(1, 3)[0][0], g).shape == (3, 8)
    assert bag_encoder.eval_features(_bags(1, 12)[0][0]).shape == (12, 8)


def test_bags_per_step_averages_gradients_over_bags():
    bags = _bags(3, 10)
    bag_encoder, head = _model("accumulate")
    params = model_parameters(bag_encoder.encoder, head)
    before = [p.detach().clone() for p in params]
    expected = [torch.zeros_like(p) for p in params]
    for bag, label in bags:
        grads = torch.autograd.grad(head.loss(head(bag_encoder.encoder(bag), label=label), label),
                                    params)
        for e, g in zip(expected, grads, strict=True):
            e += g / 3
    stats = train_epoch(bag_encoder, head, bags, torch.optim.SGD(params, lr=1.0),
                        bags_per_step=3, progress=False)
    assert stats.bags == 3 and stats.seconds > 0
    for p, b, e in zip(params, before, expected, strict=True):
        torch.testing.assert_close(p.detach(), b - e, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="bags_per_step"):
        train_epoch(bag_encoder, head, bags, torch.optim.SGD(params, lr=1.0), bags_per_step=0)


def test_evaluate_auc_and_eval_mode():
    bag_encoder, head = _model("baseline")
    bags = _bags(4, 6)
    auc = evaluate_auc(bag_encoder, head, bags, [label for _, label in bags])
    assert 0.0 <= auc <= 1.0
    assert not head.training and not bag_encoder.encoder.training
    assert bag_auc([1, 1], torch.tensor([0.2, 0.3]).numpy()) != bag_auc([1, 1], [0.2, 0.3])  # nan


def test_model_parameters_dedupes():
    shared = nn.Linear(2, 2)
    assert len(model_parameters(shared, nn.Sequential(shared))) == 2


def test_small_cnn_takes_uint8_or_unit_floats():
    from gigastream.mil.datasets import bag_tensor

    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8).numpy()
    encoder = SmallCNN(out_dim=4).double()
    raw = bag_tensor(images, [0, 2, 4])
    assert raw.dtype == torch.uint8 and raw.shape == (3, 1, 28, 28)
    torch.testing.assert_close(encoder(raw), encoder(bag_tensor(images, [0, 2, 4], torch.float64)))
