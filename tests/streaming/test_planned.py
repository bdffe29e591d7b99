"""Planned segmentation, host offload, many tiles, and planning at gigapixel scale.

Every plan shape is checked for exactness in float64 (output, input gradient, every
parameter gradient within 1e-10 relative), and the planner is checked on gigapixel shapes
without computing anything (meta-device shapes only).
"""

from __future__ import annotations

import json
import time

import pytest
import torch
import torchvision
from torch import nn

from gigastream.streaming import StreamingError, StreamingModule
from tests.exactness import assert_same_gradients

from .conftest import compare_streaming
from .test_exactness import residual_net, resnet18_trunk


def test_one_segment_many_tiles_float64():
    x = torch.randn(1, 3, 150, 140)
    streamed = compare_streaming(residual_net(), x, tile_size=60, segments="none")
    (seg,) = streamed.last_plan.segments
    assert seg.mode == "stream" and seg.tiles[0] >= 5 and seg.tiles[1] >= 5


def test_planned_multi_segment_resnet18_float64():
    x = torch.randn(1, 3, 192, 160)
    streamed = compare_streaming(resnet18_trunk(), x, tile_size=96)
    plan = streamed.last_plan
    assert plan.cuts == "planned" and len(plan.segments) >= 2, str(plan)
    spans = [s.span for s in plan.segments]
    assert spans[0][0] == 0 and spans[-1][1] == 8
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert plan.segments[0].mode == "stream" and max(plan.segments[0].max_tile) <= 96


def test_planned_segments_follow_the_budget():
    """A lower budget cuts more finely and streams more; every plan stays exact."""
    x = torch.randn(1, 3, 128, 128)
    loose = compare_streaming(resnet18_trunk(), x, memory_budget="1GiB").last_plan
    tight = compare_streaming(resnet18_trunk(), x, memory_budget="9MiB").last_plan
    assert all(s.mode == "keep" for s in loose.segments)
    assert tight.est_peak_bytes <= 9 * 2**20 < loose.est_peak_bytes
    assert sum(s.mode == "stream" for s in tight.segments) >= 2, str(tight)


@pytest.mark.parametrize("input_grad", [True, False])
def test_offloaded_boundaries_float64(input_grad):
    """offload=True keeps every map between two streamed segments in a separate host buffer."""
    x = torch.randn(1, 3, 96, 80)
    streamed = compare_streaming(
        residual_net(), x, input_grad=input_grad, tile_size=40, segments=["3", "4"], offload=True
    )
    plan = streamed.last_plan
    modes = [s.mode for s in plan.segments]
    assert modes[:2] == ["stream", "stream"] and "3" in plan.offloaded, str(plan)
    assert plan.est_host_bytes > 0
    # every map between two streamed segments is offloaded, no other
    for before, seg in zip(plan.segments, plan.segments[1:], strict=False):
        assert seg.offload_input == (before.mode == seg.mode == "stream")
    assert "input in host memory" in str(plan)


def test_offloaded_resnet18_planned_many_tiles_float64():
    x = torch.randn(1, 3, 128, 128)
    streamed = compare_streaming(
        resnet18_trunk(), x, tile_size=32, memory_budget="5MiB", offload=True
    )
    plan = streamed.last_plan
    assert plan.offloaded, str(plan)
    assert max(s.tiles[0] * s.tiles[1] for s in plan.segments) >= 25, str(plan)


def test_offload_lowers_the_estimate():
    trunk = resnet18_trunk()
    shape = (1, 3, 2048, 2048)
    kwargs = dict(memory_budget="64MiB", segments=["5", "6", "7"])
    with pytest.raises(StreamingError, match="offload"):
        StreamingModule(trunk, offload=False, **kwargs).plan(shape, lazy_input=True)
    plan = StreamingModule(trunk, offload="auto", **kwargs).plan(
        shape, lazy_input=True, device="cuda", available_bytes=2**36
    )
    assert plan.offloaded and plan.est_peak_bytes <= 64 * 2**20


def test_offload_argument_is_checked():
    with pytest.raises(StreamingError, match="offload must be"):
        StreamingModule(nn.Conv2d(3, 3, 3), tile_size=16, offload="yes")


def test_lazy_input_with_offload_float64():
    from .test_exactness import _TensorSource

    net = residual_net().double()
    x = torch.randn(1, 3, 90, 90, dtype=torch.float64)
    streamed = StreamingModule(net, tile_size=38, segments=["3", "4"], offload=True)
    assert_same_gradients(net, lambda _: streamed(_TensorSource(x)), x, net, input_grad=False)
    assert streamed.last_plan.offloaded


def test_channels_last_switch_float64():
    x = torch.randn(1, 3, 80, 72)
    compare_streaming(residual_net(), x, tile_size=40, channels_last=True)


def _resnet34_trunk() -> nn.Sequential:
    return nn.Sequential(*list(torchvision.models.resnet34(weights=None).children())[:-2]).eval()


@pytest.mark.parametrize(("side", "budget_gib"), [(65536, 40), (131072, 80)])
def test_gigapixel_plans_fit_the_budget(side, budget_gib):
    """ResNet-34 trunk, bf16, lazy input on a (pretended) CUDA device: planning only."""
    streamed = StreamingModule(
        _resnet34_trunk(), memory_budget=f"{budget_gib}GiB", freeze_batchnorm=True
    )
    t0 = time.perf_counter()
    plan = streamed.plan(
        (1, 3, side, side),
        torch.bfloat16,
        lazy_input=True,
        device="cuda",
        available_bytes=139 * 2**30,
        available_host_bytes=100 * 2**30,  # the host budget (default: the machine's)
    )
    seconds = time.perf_counter() - t0
    assert plan.est_peak_bytes <= budget_gib * 2**30, str(plan)
    assert plan.est_host_bytes <= plan.host_memory_budget == 100 * 2**30, str(plan)
    assert plan.segments[0].mode == "stream" and plan.bytes_per_elem == 2
    assert plan.segments[0].in_shape[-2:] == (side, side)
    assert seconds < 2.0, seconds
    json.dumps(plan.to_dict())
    assert "StreamingPlan" in str(plan)


def test_no_cap_on_tiles():
    """Small tiles on a huge image: hundreds of tiles per axis are planned."""
    streamed = StreamingModule(_resnet34_trunk(), tile_size=1024)
    plan = streamed.plan(
        (1, 3, 65536, 65536), torch.bfloat16, lazy_input=True, available_bytes=2**40
    )
    assert plan.segments[0].tiles[0] >= 64 and max(plan.segments[0].max_tile) <= 1024, str(plan)


def test_release_memory_after_each_streamed_segment_float64(monkeypatch):
    """The heap is trimmed once after each streamed segment's forward and backward pass
    ("auto": on CPU, for inputs whose conventional estimate exceeds 4 GiB); results stay
    exact; False turns it off."""
    from gigastream.streaming import recompute

    calls = []
    monkeypatch.setattr(recompute, "release_free_memory", lambda: calls.append(1) or True)
    x = torch.randn(1, 3, 96, 80)
    streamed = compare_streaming(
        residual_net(), x, tile_size=40, segments=["3", "4"], release_memory=True
    )
    n_streamed = sum(s.mode == "stream" for s in streamed.last_plan.segments)
    assert n_streamed >= 2 and len(calls) == 2 * n_streamed
    calls.clear()
    compare_streaming(residual_net(), x, tile_size=40, segments=["3", "4"], release_memory=False)
    assert calls == []
    auto = StreamingModule(residual_net(), tile_size=40, segments=["3", "4"])
    auto(x).sum().backward()
    assert calls == []  # "auto": a small input (conventional estimate <= 4 GiB) is not trimmed
    from gigastream.streaming import memory

    monkeypatch.setattr(memory, "AUTO_RELEASE_BYTES", 0)
    auto(x).sum().backward()
    assert len(calls) == 2 * n_streamed  # "auto" on CPU, an input above the threshold
    with pytest.raises(StreamingError, match="release_memory must be"):
        StreamingModule(nn.Conv2d(3, 3, 3), tile_size=16, release_memory="yes")


def test_release_free_memory_calls_glibc():
    import sys

    from gigastream.streaming.memory import release_free_memory

    assert release_free_memory() is sys.platform.startswith("linux")


def test_lazy_host_source_is_read_ahead_on_a_thread_float64():
    """A slide-like source is read on a background thread, ahead of its use: piece 0 is
    computed while piece 2 is being read (forward and backward); results stay exact."""
    import threading

    from gigastream.streaming.recompute import Piece, piecewise_recompute

    from .test_exactness import _TensorSource

    x = torch.randn(1, 3, 40, 6, dtype=torch.float64)
    conv = nn.Conv2d(3, 4, 1).double()
    third_read = threading.Event()
    readers: set[str] = set()

    class Slide(_TensorSource):
        def read(self, index):
            readers.add(threading.current_thread().name)
            if self.reads % 4 >= 2:  # the third read of a pass (forward, then backward)
                third_read.set()
            return super().read(index)

    calls = []

    def fn(t):
        if len(calls) % 4 == 0:  # piece 0 of a pass: a sequential reader has read 0 and 1
            assert third_read.wait(10), "piece 2 was not read while piece 0 was computed"
            third_read.clear()
        calls.append(1)
        return conv(t)

    rows = [(i, i + 10) for i in range(0, 40, 10)]
    pieces = [
        Piece((slice(None), slice(None), slice(a, b)), (slice(None), slice(None), slice(a, b)),
              (slice(None),) * 4)
        for a, b in rows
    ]  # fmt: skip
    source = Slide(x)

    def pieced(_):
        return piecewise_recompute(fn, source, pieces, (1, 4, 40, 6), list(conv.parameters()))

    assert_same_gradients(conv, pieced, x, conv, input_grad=False)
    assert source.reads == 8 and readers == {"gigastream-read_0"}
