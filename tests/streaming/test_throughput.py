"""Expected time per step from a plan, with Lightning's precision names."""

from __future__ import annotations

import pytest
from torch import nn

from gigastream.streaming import StreamingModule
from gigastream.streaming.throughput import MEASURED, expected_seconds


@pytest.fixture(scope="module")
def plan():
    return StreamingModule(nn.Conv2d(3, 8, 3, padding=1), tile_size=32).plan((1, 3, 64, 64))


def test_expected_seconds_by_precision(plan):
    seconds, measured = expected_seconds(plan, "cuda", "bf16-mixed")
    assert measured == MEASURED[("cuda", "bf16")]
    assert seconds == pytest.approx(plan.est_flops / measured.flops_per_second)
    assert expected_seconds(plan, "cuda", "16-mixed") == (seconds, measured)  # fp16 as bf16
    assert expected_seconds(plan, "cuda", "32")[1] == MEASURED[("cuda", "fp32")]
    assert expected_seconds(plan, "cuda", "32-true")[1] == MEASURED[("cuda", "fp32")]
    assert expected_seconds(plan, "cuda", "64") is None  # never measured
    assert expected_seconds(plan, "cpu", "bf16-mixed")[1] == MEASURED[("cpu", "fp32")]
    assert expected_seconds(plan, "mps", "32") is None


def test_expected_seconds_refuses_other_names(plan):
    with pytest.raises(ValueError, match="Lightning's names"):
        expected_seconds(plan, "cuda", "bf16")
