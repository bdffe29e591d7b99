"""Contract tests over every registered MIL head."""

from __future__ import annotations

import pytest
import torch

from gigastream import create_mil_head, list_mil_heads

IN_DIM = 12
HEADS = list_mil_heads()


def _head(name: str, num_classes: int = 2, **options):
    torch.manual_seed(0)
    return create_mil_head(name, IN_DIM, num_classes, **options).double()


def _bag(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, IN_DIM, generator=g, dtype=torch.float64)


def test_registry_lists_the_issue_heads():
    assert set(HEADS) >= {"abmil", "gated_abmil", "clam_sb", "clam_mb", "mean", "max"}


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("num_classes", [2, 3])
def test_shapes_and_attention_sums_to_one(name, num_classes):
    head = _head(name, num_classes)
    out = head(_bag(17), label=1)
    assert out.logits.shape == (num_classes,)
    assert out.attention.shape[-1] == 17
    assert out.attention.dim() in (1, 2)
    assert (out.attention >= 0).all()
    torch.testing.assert_close(
        out.attention.sum(-1), torch.ones(out.attention.shape[:-1], dtype=torch.float64)
    )
    assert torch.isfinite(head.loss(out, 1))


@pytest.mark.parametrize("name", HEADS)
def test_permutation_equivariance(name):
    head = _head(name).eval()
    bag = _bag(23)
    perm = torch.randperm(23, generator=torch.Generator().manual_seed(3))
    out, out_perm = head(bag), head(bag[perm])
    torch.testing.assert_close(out_perm.logits, out.logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out_perm.attention, out.attention[..., perm], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", HEADS)
def test_every_parameter_gets_a_gradient(name):
    head = _head(name, hidden_dim=8, dropout=0.1)
    bag = _bag(20).requires_grad_(True)
    loss = sum(head.loss(head(bag, label=y), y) for y in (0, 1))
    loss.backward()
    for pname, p in head.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all()
    assert bag.grad is not None and bag.grad.abs().sum() > 0


@pytest.mark.parametrize("name", HEADS)
def test_empty_bag_raises(name):
    with pytest.raises(ValueError, match="empty bag"):
        _head(name)(torch.zeros(0, IN_DIM, dtype=torch.float64))


@pytest.mark.parametrize("name", HEADS)
def test_wrong_shapes_raise(name):
    head = _head(name)
    with pytest.raises(ValueError, match="in_dim"):
        head(_bag(5)[:, :5])
    with pytest.raises(ValueError, match=r"\(N, in_dim\)"):
        head(torch.zeros(2, 3, IN_DIM, dtype=torch.float64))


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("n", [1, 2, 3, 9])
def test_small_bags_work(name, n):
    """Bags of 1-9 instances: shapes, attention that sums to 1, finite losses, and a finite
    gradient for every parameter and the bag. (CLAM's instance loss samples N // 2 instances
    per class, so a bag of one trains no instance classifier; with one instance, attention
    is 1 whatever its parameters, so their gradient is zero, not absent.)"""
    head = _head(name)
    bag = _bag(n).requires_grad_(True)
    total = 0
    for label in (0, 1):
        out = head(bag, label=label)
        assert out.logits.shape == (2,)
        assert out.attention.shape[-1] == n and out.attention.dim() in (1, 2)
        assert (out.attention >= 0).all()
        ones = torch.ones(out.attention.shape[:-1], dtype=torch.float64)
        torch.testing.assert_close(out.attention.sum(-1), ones)
        loss = head.loss(out, label)
        assert loss.dim() == 0 and torch.isfinite(loss), (label, loss)
        total = total + loss
    total.backward()
    for pname, p in head.named_parameters():
        if n == 1 and pname.startswith("instance_classifiers."):
            assert p.grad is None, f"{name}: {pname} trained by a bag of one"
            continue
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname}"
    assert bag.grad is not None and torch.isfinite(bag.grad).all()


def test_unknown_head_lists_available():
    with pytest.raises(ValueError, match="available: abmil"):
        create_mil_head("nope", 4, 2)


@pytest.mark.parametrize("name", ["clam_sb", "clam_mb"])
def test_clam_instance_loss(name):
    head = _head(name, instance_samples=8, bag_weight=0.6)
    assert head(_bag(30)).instance_loss is None
    out = head(_bag(30), label=0)
    assert out.instance_loss is not None and out.instance_loss.dim() == 0
    expected = (
        0.6 * torch.nn.functional.cross_entropy(out.logits[None], torch.tensor([0]))
        + 0.4 * out.instance_loss
    )
    torch.testing.assert_close(head.loss(out, 0), expected)
    # fewer instances than B: B shrinks to N // 2, still a finite loss
    assert torch.isfinite(head(_bag(5), label=1).instance_loss)


@pytest.mark.parametrize("name", ["clam_sb", "clam_mb"])
def test_clam_dense_instance_loss(name):
    """``instance_weight``: every instance is trained to predict its bag's class, on top of
    CLAM's clustering loss; off (the default), the head is CLAM as published and has no
    dense classifier (older checkpoints keep loading)."""
    assert not hasattr(_head(name), "dense_classifier")
    head = _head(name, num_classes=3, bag_weight=0.6, instance_weight=0.5)
    bag = _bag(30)
    assert head(bag).dense_loss is None  # no label, no loss
    out = head(bag, label=2)
    hidden = head.fc(bag)
    expected_dense = torch.nn.functional.cross_entropy(
        head.dense_classifier(hidden), torch.full((30,), 2)
    )
    torch.testing.assert_close(out.dense_loss, expected_dense)
    bag_ce = torch.nn.functional.cross_entropy(out.logits[None], torch.tensor([2]))
    expected = 0.6 * bag_ce + 0.4 * out.instance_loss + 0.5 * expected_dense
    torch.testing.assert_close(head.loss(out, 2), expected)
    head.loss(out, 2).backward()
    assert head.dense_classifier.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="instance_weight"):
        _head(name, instance_weight=-1.0)


def test_clam_subtyping_uses_other_classes():
    head = _head("clam_mb", num_classes=3, subtyping=True)
    head.loss(head(_bag(12), label=2), 2).backward()
    assert all(clf.weight.grad is not None for clf in head.instance_classifiers)


def test_clam_bad_options():
    with pytest.raises(ValueError, match="instance_samples"):
        create_mil_head("clam_sb", 4, 2, instance_samples=0)
    with pytest.raises(ValueError, match="bag_weight"):
        create_mil_head("clam_sb", 4, 2, bag_weight=1.5)
