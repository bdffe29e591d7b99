"""Frozen BatchNorm folded into the convolution before it (``gigastream.streaming.folding``):
the folded trunk, streamed, equals the ordinary unfolded one — output, input gradient and every
parameter gradient (conv weights and biases, BatchNorm gamma and beta)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from gigastream.streaming import StreamingModule, freeze_batchnorm
from gigastream.streaming.batchnorm import FrozenBatchNorm, calibrate_batchnorm
from gigastream.streaming.folding import (
    FoldedBatchNorm,
    FoldedConv2d,
    fold_batchnorm,
    folded_pairs,
    unfold_batchnorm,
)
from tests.exactness import FLOAT64, assert_same_gradients

from .conftest import compare_streaming
from .test_exactness import conv_stack, residual_net, resnet18_trunk


def _counts(net: nn.Module) -> tuple[int, int]:
    return (
        sum(isinstance(m, FoldedConv2d) for m in net.modules()),
        sum(isinstance(m, FoldedBatchNorm) for m in net.modules()),
    )


@pytest.mark.parametrize(
    ("net_fn", "pairs"), [(conv_stack, 1), (residual_net, 14), (resnet18_trunk, 20)]
)
def test_every_conv_bn_pair_is_folded_and_nothing_else(net_fn, pairs):
    net = freeze_batchnorm(net_fn())
    bns = sum(isinstance(m, FrozenBatchNorm) for m in net.modules())
    assert fold_batchnorm(net) == pairs == bns  # every BatchNorm here follows a conv
    assert _counts(net) == (pairs, pairs)
    assert fold_batchnorm(net) == 0  # twice: nothing more


@pytest.mark.parametrize(
    ("net_fn", "size", "tile"),
    [
        (conv_stack, (160, 300), 100),
        (residual_net, (150, 110), 64),
        (resnet18_trunk, (160, 128), 96),
    ],
)
def test_folded_streaming_equals_the_unfolded_ordinary_trunk_float64(net_fn, size, tile):
    """The reference is the plain trunk (eval BatchNorm, unfolded); the streamed one folds."""
    x = torch.randn(1, 3, *size)
    streamed = compare_streaming(
        net_fn(), x, tile_size=tile, freeze_batchnorm=True, fold_batchnorm=True
    )
    assert streamed.folded_batchnorms > 0
    assert _counts(streamed.trunk)[0] == streamed.folded_batchnorms


def test_folded_streaming_float32_documented_tolerance():
    x = torch.randn(1, 3, 150, 110)
    compare_streaming(
        resnet18_trunk(),
        x,
        dtype=torch.float32,
        tile_size=96,
        freeze_batchnorm=True,
        fold_batchnorm=True,
    )


@pytest.mark.parametrize("affine", [True, False])
def test_folded_conv_with_bias_equals_conv_then_batchnorm(affine):
    """A conv bias folds in too; a BatchNorm without affine parameters folds (scale 1/sigma)."""
    import torch.nn.functional as F

    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4, affine=affine))
    net[1].running_mean.normal_()
    net[1].running_var.uniform_(0.5, 2.0)
    if affine:
        net[1].weight.data.uniform_(0.5, 1.5)
        net[1].bias.data.normal_()
    net = freeze_batchnorm(net.double())
    conv, bn = net[0], net[1]

    def ordinary(x):
        y = F.conv2d(x, conv.weight, conv.bias)
        return F.batch_norm(
            y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
        )

    assert fold_batchnorm(net) == 1
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    _, folded = assert_same_gradients(ordinary, net, x, net, tolerance=FLOAT64)
    assert len(folded.grads) == (4 if affine else 2)  # conv weight, bias (and gamma, beta)


def test_pairs_that_are_not_plain_conv_then_bn_are_left_alone():
    """A conv output used twice, a BatchNorm over another layer, a BN in train mode."""

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # the conv output has two users: not foldable

    net = freeze_batchnorm(Twice().eval())
    assert folded_pairs(net) == [] and fold_batchnorm(net) == 0
    after_relu = freeze_batchnorm(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(), nn.BatchNorm2d(3)))
    assert fold_batchnorm(after_relu) == 0
    not_frozen = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    assert fold_batchnorm(not_frozen) == 0  # train-mode BatchNorm: freeze it first


def test_untraceable_model_is_left_unfolded_with_a_warning(caplog):
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                x = -x
            return self.bn(self.conv(x))

    net = freeze_batchnorm(DataDependent())
    with caplog.at_level("WARNING", logger="gigastream.streaming.folding"):
        assert fold_batchnorm(net) == 0
    assert "cannot trace DataDependent" in caplog.text


def test_state_dict_keys_unchanged_and_unfold_restores():
    net = freeze_batchnorm(resnet18_trunk())
    keys = list(net.state_dict())
    folded = copy.deepcopy(net)
    fold_batchnorm(folded)
    assert list(folded.state_dict()) == keys
    net.load_state_dict(folded.state_dict())  # checkpoints load either way
    folded.load_state_dict(net.state_dict())
    assert unfold_batchnorm(folded) == 20 and _counts(folded) == (0, 0)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(folded(x), net(x), rtol=0, atol=0)


def test_calibration_and_optimiser_updates_are_seen_by_the_fold():
    """The fold is computed at every call: calibrated statistics and updated gamma count."""
    torch.manual_seed(0)
    block = BasicBlock(4, 4).double()
    net = freeze_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), block))
    net = net.double()
    reference = copy.deepcopy(net)
    assert fold_batchnorm(net) == 3
    batches = [torch.randn(2, 3, 16, 16, dtype=torch.float64) * 3 + 1]
    calibrate_batchnorm(net, batches)
    calibrate_batchnorm(reference, batches)
    for a, b in zip(net.buffers(), reference.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        for a, b in zip(net.parameters(), reference.parameters(), strict=True):
            a.mul_(1.5)
            b.mul_(1.5)
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(net(x), reference(x), rtol=1e-12, atol=1e-12)


def test_streaming_module_without_fold_keeps_plain_layers():
    streamed = StreamingModule(resnet18_trunk(), tile_size=96, freeze_batchnorm=True)
    assert streamed.folded_batchnorms == 0 and _counts(streamed.trunk) == (0, 0)
