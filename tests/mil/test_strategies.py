"""Bag training strategies and :class:`BagClassifier` (``gigastream.mil.strategies``).

Training bag models on the engine is tested with the MNIST-bags experiment
(``tests/experiments/mnist_bags/test_bags.py``).
"""

from __future__ import annotations

import pytest
import torch

from gigastream import create_mil_head
from gigastream.mil.strategies import BagClassifier, StrategyConfig
from gigastream.train.module import MILModel


def _bags(n_bags: int, n: int, dtype=torch.float64):
    """Bags of images in [0, 1] (the digit encoder's float input), alternating labels."""
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(n, 1, 28, 28, generator=g, dtype=dtype), b % 2) for b in range(n_bags)]


def _digit_encoder(out_dim: int = 8, width: int = 4):
    """The MNIST-bags experiment's ``small_cnn`` on 1-channel 28 px digits, float64."""
    from gigastream.models.encoders import EncoderConfig, build_encoder

    config = EncoderConfig(
        "small_cnn",
        normalize="none",
        mean=[0.1307],
        std=[0.3081],
        options={"in_channels": 1, "out_dim": out_dim, "width": width, "image_size": 28},
    )
    return build_encoder(config).double()


def _model(strategy: str, **kw) -> BagClassifier:
    torch.manual_seed(0)
    encoder = _digit_encoder()
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


class _KeyedBag:
    """A tensor bag with a ``cache_key`` (what a slide's patch bag carries)."""

    def __init__(self, x: torch.Tensor, key: str) -> None:
        self.x, self.cache_key = x, key
        self.shape, self.dtype, self.device = x.shape, x.dtype, x.device
        self.reads = 0

    def read(self, index):
        self.reads += 1
        return self.x[index]


def test_frozen_trains_only_the_head_on_the_encoders_inference_features():
    model = _model("frozen")
    model.encoder.add_module("dropout", torch.nn.Dropout(0.5))  # would randomise training
    model.train()
    assert not model.encoder.training and model.head.training  # the encoder stays in eval
    assert not model.augments_bags
    groups = model.parameter_groups()
    assert groups["trunk"] == [] and len(groups["head"]) == len(list(model.head.parameters()))
    bag, label = _bags(1, 10)[0]
    features = model.features(bag)
    assert not features.requires_grad
    torch.testing.assert_close(features, model.encoder(bag), rtol=1e-12, atol=1e-12)
    model.loss(model(bag, label=label), label).backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.head.parameters())


def test_frozen_encodes_a_keyed_bag_once_and_a_changed_one_again():
    model = _model("frozen", cache_bags=1)
    bags = _bags(2, 9)
    first, second = _KeyedBag(bags[0][0], "a"), _KeyedBag(bags[1][0], "b")
    a = model.features(first)
    reads = first.reads
    model.eval()  # evaluation uses the cache too: the same features
    torch.testing.assert_close(model.features(first), a, rtol=0, atol=0)
    assert model._bags.encoded == 1 and first.reads == reads
    model.features(second)  # cache_bags=1: "a" is dropped
    assert model._bags.encoded == 2 and list(model._bags.cache) == ["b"]
    model.features(first)
    assert model._bags.encoded == 3
    unkeyed = bags[0][0]  # a plain tensor has no key: encoded every time
    model.features(unkeyed), model.features(unkeyed)
    assert model._bags.encoded == 5
    with pytest.raises(ValueError, match="cache_bags"):
        StrategyConfig("frozen", cache_bags=-1)
