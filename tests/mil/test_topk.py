"""Top-k instance-score pooling: what it pools, its instance loss, its errors."""

from __future__ import annotations

import pytest
import torch

from gigastream.mil.heads import create_mil_head
from gigastream.mil.topk import TopKMIL
from tests.exactness import assert_exact


def _bag(n: int = 30, dim: int = 8) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_binary_logits_are_plus_minus_half_the_topk_mean_margin():
    torch.manual_seed(0)
    head = TopKMIL(8, 2, k=3).double()
    bag = _bag()
    out = head(bag)
    scores = head.instance_logits(bag)
    margin = scores[:, 1] - scores[:, 0]
    bag_score = margin.topk(3).values.mean()
    assert_exact(out.logits, torch.stack([-bag_score / 2, bag_score / 2]))
    assert_exact(out.attention, margin.softmax(0))


def test_multiclass_logits_are_per_class_topk_means():
    torch.manual_seed(0)
    head = TopKMIL(8, 3, k=4).double()
    bag = _bag()
    out = head(bag)
    expected = head.instance_logits(bag).topk(4, dim=0).values.mean(0)
    assert_exact(out.logits, expected)


def test_k_larger_than_bag_and_k_one_is_max():
    torch.manual_seed(0)
    head = TopKMIL(8, 2, k=100).double()
    assert head(_bag(5)).logits.shape == (2,)
    head.k = 1
    scores = head.instance_logits(_bag())
    margin = scores[:, 1] - scores[:, 0]
    assert_exact(head(_bag()).logits[1], margin.max() / 2)


def test_instance_loss_trains_every_instance_on_the_bag_label():
    torch.manual_seed(0)
    head = create_mil_head("topk", 8, 2, k=2, instance_weight=0.5).double()
    bag = _bag()
    out = head(bag, label=1)
    targets = torch.ones(30, dtype=torch.long)
    expected = torch.nn.functional.cross_entropy(head.instance_logits(bag), targets)
    assert_exact(out.instance_loss, expected)
    bag_loss = torch.nn.functional.cross_entropy(out.logits[None], torch.tensor([1]))
    assert_exact(head.loss(out, 1), bag_loss + 0.5 * expected)
    assert head(bag).instance_loss is None  # no label, no instance loss
    head.loss(out, 1).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "options, message",
    [
        ({"k": 0}, "k must be >= 1"),
        ({"attention_class": 2}, "attention_class"),
        ({"temperature": 0.0}, "temperature"),
        ({"instance_weight": -1.0}, "instance_weight"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        TopKMIL(8, 2, **options)
