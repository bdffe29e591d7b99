"""Streamed == ordinary: output, input gradient and every parameter gradient."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from gigastream.streaming import StreamingModule
from tests.exactness import BF16_AUTOCAST, assert_same_gradients

from .conftest import compare_streaming


def _randomise_bn(net: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(7)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return net.eval()


def conv_stack() -> nn.Sequential:
    """Odd kernels, strides, dilation, groups, 'same' with an even kernel, pooling, no-bias."""
    return _randomise_bn(
        nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2, bias=False),
            nn.BatchNorm2d(8),
            nn.GELU(),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Conv2d(8, 12, 4, padding="same"),
            nn.SiLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(12, 16, (3, 5), stride=(1, 2), padding=(1, 2)),
            nn.Tanh(),
            nn.Conv2d(16, 6, 1),
        )
    )


def residual_net() -> nn.Sequential:
    """torchvision BasicBlock and Bottleneck, with and without downsample, in containers."""

    def down(cin, cout, stride):
        return nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
        )

    return _randomise_bn(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8)),
            nn.Sequential(BasicBlock(8, 16, stride=2, downsample=down(8, 16, 2))),
            nn.Sequential(
                Bottleneck(16, 4, stride=2, downsample=down(16, 16, 2)), Bottleneck(16, 4)
            ),
        )
    )


def resnet18_trunk() -> nn.Sequential:
    net = torchvision.models.resnet18(weights=None)
    return _randomise_bn(nn.Sequential(*list(net.children())[:-2]))


@pytest.mark.parametrize(
    ("size", "tile_size", "segments"),
    [
        ((160, 300), 100, "none"),
        ((203, 331), 110, "none"),
        ((97, 91), 40, ["5"]),
        ((101, 80), 36, ["5", "9"]),
    ],
)
def test_conv_stack_float64(size, tile_size, segments):
    x = torch.randn(1, 3, *size)
    streamed = compare_streaming(conv_stack(), x, tile_size=tile_size, segments=segments)
    first = streamed.last_plan.segments[0]
    assert first.mode == "stream" and first.tiles[0] >= 3 and first.tiles[1] >= 3


@pytest.mark.parametrize(
    ("size", "segments"), [((70, 53), "auto"), ((64, 64), "none"), ((97, 130), "auto")]
)
def test_residual_blocks_float64(size, segments):
    x = torch.randn(1, 3, *size)
    tile = 38 if segments == "auto" else 60
    streamed = compare_streaming(residual_net(), x, tile_size=tile, segments=segments)
    first = streamed.last_plan.segments[0]
    assert first.mode == "stream" and first.tiles[0] * first.tiles[1] >= 4


def test_resnet18_trunk_float64_small_tiles():
    x = torch.randn(1, 3, 160, 128)
    streamed = compare_streaming(
        resnet18_trunk(), x, tile_size=100, segments=["5", "6", "7"]
    )  # the user's cuts override the planner's
    plan = streamed.last_plan
    assert plan.cuts == "fixed"
    assert [s.names for s in plan.segments] == [["0", "1", "2", "3", "4"], ["5"], ["6"], ["7"]]
    assert plan.segments[0].tiles[0] * plan.segments[0].tiles[1] >= 6


def test_resnet18_deep_segments_streamed_float64():
    """A tiny budget streams the deep segments too, with several tiles each."""
    x = torch.randn(1, 3, 256, 256)
    streamed = compare_streaming(resnet18_trunk(), x, memory_budget="14MiB")
    plan = streamed.last_plan
    streamed_segments = [s for s in plan.segments if s.mode == "stream"]
    assert plan.cuts == "planned" and len(streamed_segments) >= 3, str(plan)
    assert sum(s.tiles[0] * s.tiles[1] >= 4 for s in streamed_segments) >= 3, str(plan)


def test_mixed_plan_keep_and_stream_float64():
    x = torch.randn(1, 3, 256, 256)
    streamed = compare_streaming(resnet18_trunk(), x, memory_budget="24MiB")
    modes = [s.mode for s in streamed.last_plan.segments]
    assert "stream" in modes and "keep" in modes


@pytest.mark.parametrize("net_fn", [conv_stack, residual_net, resnet18_trunk])
def test_float32_documented_tolerance(net_fn):
    x = torch.randn(1, 3, 150, 110)
    tile = {conv_stack: 100, residual_net: 64, resnet18_trunk: 96}[net_fn]
    compare_streaming(net_fn(), x, dtype=torch.float32, tile_size=tile)


def test_batch_of_two_non_square():
    x = torch.randn(2, 3, 90, 61)
    compare_streaming(residual_net(), x, tile_size=38)


def test_image_smaller_than_one_tile():
    x = torch.randn(1, 3, 33, 29)
    streamed = compare_streaming(conv_stack(), x, tile_size=4096)
    assert streamed.last_plan.segments[0].tiles == (1, 1)


def test_image_not_divisible_by_stride():
    x = torch.randn(1, 3, 131, 77)  # total stride 8 x 16
    streamed = compare_streaming(conv_stack(), x, tile_size=80)
    # several tile rows (3 on CPU; on CUDA, where offload is allowed, the planner cuts
    # differently and takes 2)
    assert streamed.last_plan.segments[0].tiles[0] >= 2


def test_without_input_gradient():
    x = torch.randn(1, 3, 80, 80)
    compare_streaming(residual_net(), x, input_grad=False, tile_size=38)


def test_channels_last_input():
    x = torch.randn(1, 3, 72, 72, dtype=torch.float64).to(memory_format=torch.channels_last)
    compare_streaming(residual_net(), x, tile_size=38)


def test_bf16_autocast_matches_conventional_autocast():
    net = residual_net()
    streamed = StreamingModule(net, tile_size=38)

    def autocast(fn):
        def run(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn(x)

        return run

    ordinary, _ = assert_same_gradients(
        autocast(net), autocast(streamed), torch.randn(1, 3, 64, 64), net, tolerance=BF16_AUTOCAST
    )
    assert ordinary.output.dtype == torch.bfloat16


def test_gradcheck_small_network():
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Conv2d(2, 1, 3, stride=2, padding=1)
    ).double()
    streamed = StreamingModule(net, tile_size=5)
    x = torch.randn(1, 1, 11, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(streamed, (x,), eps=1e-6, atol=1e-8, fast_mode=True)
    assert streamed.last_plan.segments[0].tiles[0] >= 3


def test_dropout_mask_replayed_in_recompute():
    """With dropout, the streamed function is fixed by the seed; its gradient must be exact."""
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.Dropout(0.3),
        nn.ReLU(),
        nn.Conv2d(4, 2, 3, padding=1),
        nn.Dropout2d(0.2),
    ).double()
    net.train()
    streamed = StreamingModule(net, tile_size=6)

    def f(x):
        torch.manual_seed(99)
        return streamed(x)

    x = torch.randn(1, 1, 12, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-8, fast_mode=True)
    assert streamed.last_plan.segments[0].tiles[0] >= 3


def test_parameter_gradient_arrives_once_per_backward():
    """DDP's reducer needs one gradient per parameter per backward, not one per tile."""
    net = residual_net()
    counts = {n: 0 for n, _ in net.named_parameters()}
    for n, p in net.named_parameters():
        p.register_post_accumulate_grad_hook(lambda _p, n=n: counts.__setitem__(n, counts[n] + 1))
    out = StreamingModule(net, tile_size=38)(torch.randn(1, 3, 80, 80))
    out.sum().backward()
    assert set(counts.values()) == {1}


class _TensorSource:
    """A minimal lazy input: reads slices of a tensor it holds (stands in for a slide)."""

    def __init__(self, x):
        self._x = x
        self.shape, self.dtype, self.device = x.shape, x.dtype, x.device
        self.reads = 0

    def read(self, index):
        self.reads += 1
        return self._x[index].clone()


@pytest.mark.parametrize("cache", ["auto", 0])
def test_lazy_input_source_matches_tensor(cache):
    """A lazy input streams exactly; it is decoded once per step (the forward pass keeps
    what it read for the recompute) unless the cache is off (then read in both passes)."""
    net = residual_net().double()
    x = torch.randn(1, 3, 90, 90, dtype=torch.float64)
    src = _TensorSource(x)
    src.cache_reads = True  # a source that asks for its reads to be kept
    streamed = StreamingModule(net, tile_size=38, input_cache=cache)
    assert_same_gradients(net, lambda _: streamed(src), x, net, input_grad=False)
    first = streamed.last_plan.segments[0]
    assert first.mode == "stream"
    tiles = first.tiles[0] * first.tiles[1]
    assert src.reads == (tiles if cache == "auto" else 2 * tiles)
    stats = streamed.last_input_stats
    assert stats.pieces == tiles and stats.pixels_backward == (
        0 if cache == "auto" else stats.pixels_forward
    )
