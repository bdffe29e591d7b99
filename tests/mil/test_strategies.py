"""Bag training strategies and :class:`BagClassifier` (``gigastream.mil.strategies``).

Training bag models on the engine is tested with the MNIST-bags experiment
(``tests/experiments/mnist_bags/test_bags.py``).
"""

from __future__ import annotations

import pytest
import torch

from gigastream import create_mil_head
from gigastream.mil.encoders import SmallCNN
from gigastream.mil.strategies import BagClassifier, StrategyConfig
from gigastream.train.module import MILModel


def _bags(n_bags: int, n: int, dtype=torch.float64):
    """Bags of images in [0, 1] (SmallCNN's float input), alternating labels."""
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(n, 1, 28, 28, generator=g, dtype=dtype), b % 2) for b in range(n_bags)]


def _model(strategy: str, **kw) -> BagClassifier:
    torch.manual_seed(0)
    encoder = SmallCNN(out_dim=8, width=4).double()
    head = create_mil_head("gated_abmil", 8, 2, attn_dim=8).double()
    return BagClassifier(encoder, head, StrategyConfig(strategy, chunk_size=7, **kw))


def test_unknown_strategy_and_bad_settings():
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        StrategyConfig("nope")
    with pytest.raises(ValueError, match="sample_size"):
        StrategyConfig("sample", sample_size=0)


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


def test_sample_strategy_sees_k_instances():
    model = _model("sample", sample_size=5)
    assert model.features(_bags(1, 12)[0][0]).shape == (5, 8)
    assert model.features(_bags(1, 3)[0][0]).shape == (3, 8)
    model.eval()
    assert model.features(_bags(1, 12)[0][0]).shape == (12, 8)
