"""The host-memory budget: offloaded maps and gradient accumulators fit ``host_memory_budget``.

The planner's host estimate is checked against the host maps actually alive during a float64
run (CPU, ``offload=True``: the same code path as CUDA offload, with plain copies), and the
budget is checked on gigapixel plans (meta-device shapes only, nothing computed).
"""

from __future__ import annotations

import json
import weakref

import pytest
import torch
import torchvision
from torch import nn

from gigastream.streaming import StreamingError, StreamingModule, recompute

from .conftest import compare_streaming
from .test_exactness import residual_net, resnet18_trunk

GiB = 2**30


class _HostMaps:
    """Counts the bytes of host maps and gradient accumulators alive, and their peak."""

    def __init__(self, monkeypatch) -> None:
        self.live = 0
        self.peak = 0
        empty, zeros = recompute._Transfer.host_empty, recompute._Transfer.host_zeros
        monkeypatch.setattr(
            recompute._Transfer, "host_empty", staticmethod(lambda *a: self._track(empty(*a)))
        )
        monkeypatch.setattr(
            recompute._Transfer, "host_zeros", staticmethod(lambda *a: self._track(zeros(*a)))
        )

    def _track(self, t: torch.Tensor) -> torch.Tensor:
        n = t.numel() * t.element_size()
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(t, self._free, n)
        return t

    def _free(self, n: int) -> None:
        self.live -= n


@pytest.mark.parametrize(
    ("net", "shape", "kwargs"),
    [
        (residual_net, (1, 3, 96, 80), dict(tile_size=40, segments=["3", "4"])),
        (resnet18_trunk, (1, 3, 128, 128), dict(tile_size=32, memory_budget="5MiB")),
    ],
)
def test_host_estimate_is_the_peak_of_live_host_maps_float64(monkeypatch, net, shape, kwargs):
    maps = _HostMaps(monkeypatch)
    streamed = compare_streaming(net(), torch.randn(shape), offload=True, **kwargs)
    plan = streamed.last_plan
    assert plan.offloaded, str(plan)
    assert maps.live == 0  # everything freed after backward
    assert maps.peak == plan.est_host_bytes, (maps.peak, str(plan))


def test_host_budget_limits_what_is_offloaded_float64():
    """A host budget below what offload=True wants: the planner offloads less, still exact."""
    x = torch.randn(1, 3, 128, 128)
    kwargs = dict(tile_size=32, memory_budget="5MiB", offload=True)
    free = StreamingModule(resnet18_trunk(), **kwargs).plan(x.shape, available_host_bytes=2**40)
    limit = free.est_host_bytes - 1
    streamed = compare_streaming(resnet18_trunk(), x, host_memory_budget=limit, **kwargs)
    plan = streamed.last_plan
    assert plan.est_host_bytes <= limit and plan.host_memory_budget == limit, str(plan)
    assert plan.est_peak_bytes <= 5 * 2**20


def _resnet34_trunk() -> nn.Sequential:
    return nn.Sequential(*list(torchvision.models.resnet34(weights=None).children())[:-2]).eval()


def _gigapixel_plan(side: int, device_gib: int, host_budget, **plan_kwargs):
    streamed = StreamingModule(
        _resnet34_trunk(),
        memory_budget=f"{device_gib}GiB",
        host_memory_budget=host_budget,
        freeze_batchnorm=True,
    )
    return streamed.plan(
        (1, 3, side, side),
        torch.bfloat16,
        lazy_input=True,
        device="cuda",
        available_bytes=139 * GiB,
        **plan_kwargs,
    )


@pytest.mark.parametrize(("side", "device_gib"), [(65536, 40), (131072, 80)])
def test_gigapixel_plans_fit_both_budgets(side, device_gib):
    plan = _gigapixel_plan(side, device_gib, "100GiB")
    assert plan.est_peak_bytes <= device_gib * GiB, str(plan)
    assert 0 < plan.est_host_bytes <= 100 * GiB, str(plan)
    assert plan.host_memory_budget == 100 * GiB
    text = str(plan)
    assert "host memory" in text and "budget 100.0 GiB" in text
    d = json.loads(json.dumps(plan.to_dict()))
    assert d["host_memory_budget"] == 100 * GiB and d["est_host_bytes"] == plan.est_host_bytes


def test_gigapixel_prefers_plans_that_offload_less():
    """Unlimited host memory: still not the plan that offloads every boundary (~80 GiB)."""
    plan = _gigapixel_plan(65536, 40, None, available_host_bytes=2**50)
    assert plan.est_host_bytes <= 32 * GiB, str(plan)
    assert len(plan.offloaded) == 1, str(plan)


def test_no_offload_when_the_device_budget_does_not_need_it():
    plan = StreamingModule(resnet18_trunk(), memory_budget="1GiB").plan(
        (1, 3, 2048, 2048), lazy_input=True, device="cuda", available_bytes=2**36
    )
    assert plan.est_host_bytes == 0 and not plan.offloaded, str(plan)


def test_no_plan_error_names_both_budgets_and_estimates():
    streamed = StreamingModule(resnet18_trunk(), memory_budget="32MiB", host_memory_budget="1MiB")
    with pytest.raises(StreamingError) as info:
        streamed.plan(
            (1, 3, 2048, 2048),
            torch.bfloat16,
            lazy_input=True,
            device="cuda",
            available_bytes=2**36,
        )
    msg = str(info.value)
    assert "memory_budget=32.0 MiB" in msg and "host_memory_budget=1.0 MiB" in msg, msg
    assert "smallest device estimate is" in msg and "smallest host estimate is" in msg, msg
    assert "raise memory_budget to at least" in msg, msg
    assert "raise host_memory_budget to at least" in msg, msg
    assert "segments='auto'" not in msg, msg  # the cuts were planned already
    assert "lower precision" not in msg, msg  # bf16 already


def test_no_plan_advice_matches_the_situation():
    shape = (1, 3, 2048, 2048)
    # fixed cuts, float32, no offload
    with pytest.raises(StreamingError) as info:
        StreamingModule(
            resnet18_trunk(), memory_budget="64MiB", segments=["5", "6", "7"], offload=False
        ).plan(shape, lazy_input=True, available_host_bytes=2**40)
    msg = str(info.value)
    assert "segments='auto'" in msg and "offload='auto'" in msg, msg
    assert "lower precision" in msg and "raise memory_budget to at least" in msg, msg
    assert "raise host_memory_budget" not in msg, msg
    # planned cuts, offload allowed: only the device budget limits
    with pytest.raises(StreamingError) as info:
        StreamingModule(resnet18_trunk(), memory_budget="5MiB").plan(
            shape, lazy_input=True, device="cuda", available_bytes=2**36, available_host_bytes=2**40
        )
    msg = str(info.value)
    assert "segments='auto'" not in msg and "offload=" not in msg, msg
    assert "host_memory_budget=1.0 TiB" in msg and "raise memory_budget to at least" in msg, msg


def test_host_budget_defaults_to_available_memory(monkeypatch):
    from gigastream.streaming import module

    seen = []

    def fake_available(device):
        seen.append(device.type)
        return 3 * GiB

    monkeypatch.setattr(module, "available_memory", fake_available)
    shape = (1, 3, 256, 256)
    plan = StreamingModule(resnet18_trunk(), tile_size=128).plan(shape)
    assert plan.host_memory_budget == 3 * GiB and "cpu" in seen
    plan = StreamingModule(resnet18_trunk(), tile_size=128).plan(shape, available_host_bytes=GiB)
    assert plan.host_memory_budget == GiB
    # an explicit budget wins, as bytes or as a string
    for budget in ("2GiB", 2 * GiB):
        streamed = StreamingModule(resnet18_trunk(), tile_size=128, host_memory_budget=budget)
        assert streamed.plan(shape, available_host_bytes=GiB).host_memory_budget == 2 * GiB


def test_host_budget_is_checked():
    with pytest.raises(ValueError, match="cannot read memory size"):
        StreamingModule(nn.Conv2d(3, 3, 3), tile_size=16, host_memory_budget="lots")
