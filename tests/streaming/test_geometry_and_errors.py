"""Analytic geometry, planner contracts, and the errors users see."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torchvision
from torch import nn

from gigastream.streaming import (
    FrozenBatchNorm,
    Geometry,
    StreamingError,
    StreamingModule,
    describe,
    register_geometry,
    split_segments,
)
from gigastream.streaming.planner import parse_bytes


def resnet_trunk(name: str) -> nn.Sequential:
    return nn.Sequential(
        *list(getattr(torchvision.models, name)(weights=None).children())[:-2]
    ).eval()


@pytest.mark.parametrize(("name", "rf"), [("resnet18", 435), ("resnet34", 899), ("resnet50", 427)])
def test_resnet_receptive_field_and_stride(name, rf):
    geom = describe(resnet_trunk(name))
    assert geom.stride == (32, 32)
    assert geom.receptive_field == (rf, rf)


def test_geometry_output_sizes_match_pytorch():
    net = nn.Sequential(
        nn.Conv2d(1, 1, 5, stride=3, padding=1, dilation=2),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(1, 1, (2, 4), padding="same"),
        nn.AvgPool2d(2),
    )
    geom = describe(net)
    for h, w in [(40, 41), (57, 100), (23, 31)]:
        assert geom.out_size((h, w)) == tuple(net(torch.zeros(1, 1, h, w)).shape[-2:])


def test_resnet_stage_segments():
    segs = split_segments(resnet_trunk("resnet34"), "stages")
    assert [s.names for s in segs] == [["0", "1", "2", "3", "4"], ["5"], ["6"], ["7"]]
    assert len(split_segments(resnet_trunk("resnet34"), "none")) == 1
    assert [s.names for s in split_segments(resnet_trunk("resnet34"), ["6"])] == [
        ["0", "1", "2", "3", "4", "5"],
        ["6", "7"],
    ]
    with pytest.raises(StreamingError, match="top-level children"):
        split_segments(resnet_trunk("resnet18"), ["layer9"])
    # "auto" cuts are planned per input shape (StreamingModule), never split_segments' rule
    with pytest.raises(StreamingError, match="'auto' cuts are planned per input shape"):
        split_segments(resnet_trunk("resnet18"), "auto")
    with pytest.raises(StreamingError, match="segments must be 'auto'"):
        StreamingModule(resnet_trunk("resnet18"), tile_size=64, segments="stages")


@pytest.mark.parametrize(
    ("module", "match"),
    [
        (nn.AdaptiveAvgPool2d(1), "not local"),
        (nn.Linear(4, 4), "not local"),
        (nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"), "padding_mode='reflect'"),
        (nn.MaxPool2d(2, ceil_mode=True), "ceil_mode"),
        (nn.Upsample(scale_factor=2), "not local"),
    ],
)
def test_unsupported_layers_are_named(module, match):
    net = nn.Sequential(nn.Conv2d(3, 3, 3), module)
    with pytest.raises(StreamingError, match=match) as err:
        StreamingModule(net, tile_size=64)
    assert "'1'" in str(err.value)  # the offending module's name


class Custom(nn.Module):
    def forward(self, x):
        return x * 2


def test_unknown_module_explains_how_to_describe_it():
    with pytest.raises(StreamingError, match="stream_geometry"):
        StreamingModule(nn.Sequential(nn.Conv2d(3, 3, 3), Custom()), tile_size=64)


def test_custom_module_described_by_method_and_registry():
    class SelfDescribing(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            return x + self.conv(x).relu()

        def stream_geometry(self):
            return Geometry.residual(describe(self.conv), Geometry())

    class Registered(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 5, padding=2)

        def forward(self, x):
            return torch.sigmoid(self.conv(x)) * x

    @register_geometry(Registered)
    def _(m, name):
        return Geometry.residual(describe(m.conv, name + ".conv"), Geometry())

    net = nn.Sequential(SelfDescribing(), Registered(), SelfDescribing()).double()
    x = torch.randn(1, 2, 60, 50, dtype=torch.float64, requires_grad=True)
    ref = net(x)
    ref.square().sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    streamed = StreamingModule(net, tile_size=20)
    out = streamed(x.detach())
    out.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for g, r in zip((p.grad for p in net.parameters()), grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)
    assert streamed.last_plan.segments[0].tiles[0] >= 3


def test_train_mode_batchnorm_is_refused_with_fix():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)).train()
    with pytest.raises(StreamingError, match="freeze_batchnorm=True"):
        StreamingModule(net, tile_size=32)
    net.eval()
    streamed = StreamingModule(net, tile_size=32)
    streamed.train()  # the user switches the whole model to training afterwards
    with pytest.raises(StreamingError, match="train mode"):
        streamed(torch.randn(1, 3, 40, 40))


def test_freeze_batchnorm_survives_train():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout(0.1))
    streamed = StreamingModule(net, tile_size=32, freeze_batchnorm=True).train()
    assert isinstance(net[1], FrozenBatchNorm) and net[2].training
    assert streamed(torch.randn(1, 3, 40, 40)).shape == (1, 4, 40, 40)


def test_tile_too_small_reports_smallest_valid_size():
    net = resnet_trunk("resnet18")
    cuts = ["5", "6", "7"]  # fixed cuts: the first segment is stem+layer1
    streamed = StreamingModule(net, tile_size=32, segments=cuts)
    with pytest.raises(StreamingError, match=r"tile_size >= (\d+)") as err:
        streamed(torch.randn(1, 3, 160, 160))
    smallest = int(re.search(r"tile_size >= (\d+)", str(err.value)).group(1))
    # the reported size works
    plan = StreamingModule(net, tile_size=smallest, segments=cuts).plan((1, 3, 160, 160))
    assert plan.segments[0].mode == "stream"
    with pytest.raises(StreamingError, match="tile_size >="):
        StreamingModule(net, tile_size=smallest - 1, segments=cuts).plan((1, 3, 160, 160))
    # planned cuts make such a tile possible: the first segment becomes shallower
    plan = StreamingModule(net, tile_size=32).plan((1, 3, 160, 160))
    assert plan.segments[0].mode == "stream" and max(plan.segments[0].max_tile) <= 32


def test_settings_errors():
    net = nn.Sequential(nn.Conv2d(3, 3, 3))
    with pytest.raises(StreamingError, match="tile_size .* or memory_budget"):
        StreamingModule(net)
    with pytest.raises(ValueError, match="4GiB"):
        StreamingModule(net, memory_budget="lots")
    with pytest.raises(StreamingError, match="positive"):
        StreamingModule(net, tile_size=0)
    with pytest.raises(StreamingError, match=r"\(B, C, H, W\)"):
        StreamingModule(net, tile_size=16)(torch.randn(3, 20, 20))
    with pytest.raises(StreamingError, match="no plan fits memory_budget"):
        StreamingModule(resnet_trunk("resnet18"), memory_budget="1MiB").plan((1, 3, 256, 256))


def test_parse_bytes():
    assert parse_bytes("4GiB") == 4 * 2**30
    assert parse_bytes("512 MiB") == 512 * 2**20
    assert parse_bytes("2e9") == 2_000_000_000
    assert parse_bytes(1024) == 1024


def test_big_budget_keeps_every_graph_and_plan_is_loggable():
    streamed = StreamingModule(resnet_trunk("resnet18"), memory_budget="64GiB")
    plan = streamed.plan((1, 3, 512, 512))
    assert all(s.mode == "keep" for s in plan.segments)
    assert plan.est_flops == pytest.approx(plan.conventional_flops)
    json.dumps(plan.to_dict())
    assert "keep graph" in str(plan)


def test_plan_estimates_shrink_with_budget():
    streamed_small = StreamingModule(resnet_trunk("resnet34"), memory_budget="1GiB")
    plan = streamed_small.plan((1, 3, 4096, 4096))
    assert plan.est_peak_bytes <= 2**30 < plan.conventional_bytes
    assert plan.segments[0].mode == "stream"


def test_trunk_frozen_by_freeze_batchnorm_streams_exactly():
    from gigastream.streaming import freeze_batchnorm

    from .test_exactness import residual_net

    net = freeze_batchnorm(residual_net()).train()  # stays frozen in train mode
    from .conftest import compare_streaming

    compare_streaming(net, torch.randn(1, 3, 70, 53), tile_size=38)
