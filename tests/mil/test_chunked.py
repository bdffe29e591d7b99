"""ChunkedEncoder: output, input gradient and every parameter gradient equal the full bag's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gigastream import ChunkedEncoder, create_mil_head
from gigastream.streaming import FrozenBatchNorm, freeze_batchnorm
from tests.exactness import assert_exact, assert_same_gradients, run_backward


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.GroupNorm(2, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, dilation=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.norm(self.conv1(x)))))


def conv_pool() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def conv_dropout() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 3),
        nn.ReLU(),
        nn.Dropout2d(0.3),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 5 * 5, 10),
        nn.Dropout(0.5),
    )


def residual() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        Residual(4),
        Residual(4),
        nn.AdaptiveMaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def frozen_bn() -> nn.Module:
    enc = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 10)
    )
    enc[1].running_mean.uniform_(-1, 1)
    enc[1].running_var.uniform_(0.5, 2)
    return freeze_batchnorm(enc)


ENCODERS = {
    "conv_pool": conv_pool,
    "conv_dropout": conv_dropout,
    "residual": residual,
    "frozen_bn": frozen_bn,
}


def _reference(encoder, bag, chunk_size, stochastic):
    """The ordinary computation with a graph (chunk by chunk only to draw the same dropout
    masks as the chunked forward; without dropout, one pass over the whole bag)."""
    if not stochastic:
        return encoder(bag)
    return torch.cat([encoder(bag[i : i + chunk_size]) for i in range(0, len(bag), chunk_size)])


def _bag_case(encoder, head, chunk_size: int, label: int = 1):
    """The ordinary encoder (:func:`_reference`), the parameters of encoder and head, the
    bag loss, and the parameters that take no part in it."""
    params = {
        **dict(encoder.named_parameters()),
        **{f"head.{n}": p for n, p in head.named_parameters()},
    }

    def loss(feats):
        return head.loss(head(feats, label=label), label) + (feats**2).mean()  # 2nd path into H

    # CLAM's instance classifier of the other class gets no gradient (no subtyping)
    unused = {n for n in params if n.startswith(f"head.instance_classifiers.{1 - label}.")}

    def ordinary(bag):
        return _reference(encoder, bag, chunk_size, stochastic=encoder.training)

    return ordinary, params, loss, unused


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("enc_name", list(ENCODERS))
@pytest.mark.parametrize(
    "head_name,n,chunk", [("gated_abmil", 37, 8), ("clam_mb", 50, 16), ("max", 9, 4)]
)
def test_chunked_equals_full_bag(dtype, enc_name, head_name, n, chunk):
    torch.manual_seed(0)
    encoder = ENCODERS[enc_name]().to(dtype).train()
    head = create_mil_head(head_name, 10, 2, hidden_dim=6).to(dtype)
    bag = torch.randn(n, 1, 12, 12, dtype=dtype)
    ordinary, params, loss, unused = _bag_case(encoder, head, chunk)
    chunked = ChunkedEncoder(encoder, chunk_size=chunk)
    assert_same_gradients(ordinary, chunked, bag, params, loss=loss, unused=unused, seed=5)


def test_dropout_is_replayed_not_redrawn():
    """Without the RNG replay the recompute would draw new masks and gradients would differ."""
    torch.manual_seed(0)
    encoder = conv_dropout().double().train()
    head = create_mil_head("abmil", 10, 2).double()
    bag = torch.randn(20, 1, 12, 12, dtype=torch.float64)
    ordinary, params, loss, unused = _bag_case(encoder, head, 6)
    chunked = ChunkedEncoder(encoder, chunk_size=6)
    ref, _ = assert_same_gradients(ordinary, chunked, bag, params, loss=loss, seed=1)
    other = run_backward(ordinary, bag, params, loss=loss, seed=2)
    assert not torch.allclose(other.grads["0.weight"], ref.grads["0.weight"])


@pytest.mark.parametrize("budget,expected_kept", [(None, 0), (1e-6, 0), (0.3, None), (1e4, 5)])
def test_memory_budget_keeps_graphs_and_stays_exact(budget, expected_kept):
    torch.manual_seed(0)
    encoder = conv_pool().double()
    head = create_mil_head("gated_abmil", 10, 2).double()
    bag = torch.randn(33, 1, 12, 12, dtype=torch.float64)
    ordinary, params, loss, _ = _bag_case(encoder, head, 7)
    chunked = ChunkedEncoder(encoder, chunk_size=7, memory_budget_mib=budget)
    assert_same_gradients(ordinary, chunked, bag, params, loss=loss)
    if expected_kept is None:
        assert 0 < chunked.kept_chunks < 5
    else:
        assert chunked.kept_chunks == expected_kept


def test_train_mode_batchnorm_is_refused_with_a_fix():
    enc = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten())
    with pytest.raises(ValueError, match=r"BatchNorm in training mode \(1\).*freeze_batchnorm"):
        ChunkedEncoder(enc)(torch.randn(4, 1, 8, 8))
    enc[1].eval()
    ChunkedEncoder(enc)(torch.randn(4, 1, 8, 8))  # eval mode is fine


def test_freeze_batchnorm_matches_eval_and_survives_train():
    bn = nn.BatchNorm2d(3)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(4, 3, 5, 5)
    expected = bn.eval()(x)
    model = freeze_batchnorm(nn.Sequential(bn)).train()
    assert isinstance(model[0], FrozenBatchNorm)
    torch.testing.assert_close(model(x), expected)
    assert {n for n, _ in model.named_parameters()} == {"0.weight", "0.bias"}
    with pytest.raises(ValueError, match="track_running_stats"):
        freeze_batchnorm(nn.BatchNorm1d(3, track_running_stats=False))


def test_freeze_batchnorm_keeps_parameters_and_state_dict():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(4)))
    weight, keys = net[1].weight, set(net.state_dict())
    state = {k: v.clone() for k, v in net.state_dict().items()}
    frozen = freeze_batchnorm(net)
    assert frozen is net and isinstance(net[2][0], FrozenBatchNorm)
    assert net[1].weight is weight  # optimisers built before still see the parameters
    assert set(net.state_dict()) == keys  # checkpoints load both ways
    net.load_state_dict(state)
    bn1d = freeze_batchnorm(nn.BatchNorm1d(5).eval())
    x = torch.randn(6, 5)
    assert isinstance(bn1d, FrozenBatchNorm)
    torch.testing.assert_close(bn1d.train()(x), nn.BatchNorm1d(5).eval()(x), rtol=0, atol=0)


def test_chunked_encoder_freezes_batchnorm_when_asked():
    enc = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten())
    chunked = ChunkedEncoder(enc, chunk_size=2, freeze_batchnorm=True).train()
    assert isinstance(chunked.encoder[1], FrozenBatchNorm)
    chunked(torch.randn(4, 1, 8, 8)).sum().backward()
    assert enc[1].weight.grad is not None


def test_empty_bag_and_bad_chunk_size():
    with pytest.raises(ValueError, match="empty bag"):
        ChunkedEncoder(nn.Flatten())(torch.zeros(0, 1, 4, 4))
    with pytest.raises(ValueError, match="chunk_size"):
        ChunkedEncoder(nn.Flatten(), chunk_size=0)


def test_no_grad_path_and_progress():
    enc = conv_pool().eval()
    seen: list[int] = []
    bag = torch.randn(10, 1, 12, 12)
    chunked = ChunkedEncoder(enc, chunk_size=4, progress=seen.append)
    with torch.no_grad():
        feats = chunked(bag)
        assert_exact(feats, enc(bag))
    assert seen == [4, 4, 2]
    seen.clear()
    chunked(bag).sum().backward()
    assert seen == [4, 4, 2]
    assert all(p.grad is not None for p in enc.parameters())
