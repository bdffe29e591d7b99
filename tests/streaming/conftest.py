"""Shared helpers: compare a streamed run with the ordinary computation."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from gigastream.precision import set_tf32
from gigastream.streaming import StreamingModule
from tests.exactness import assert_same_runs, run_backward

# GIGASTREAM_TEST_DEVICE=cuda runs every compare_streaming check on that device (the GPU
# session's check; CI runs them on the CPU).
TEST_DEVICE = torch.device(os.environ.get("GIGASTREAM_TEST_DEVICE", "cpu"))
if TEST_DEVICE.type == "cuda":  # TF32 would round both runs differently, far above 1e-5
    set_tf32(False)


def compare_streaming(
    net: nn.Module,
    x: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float64,
    input_grad: bool = True,
    seed: int = 0,
    **stream_kwargs,
) -> StreamingModule:
    """Run ``net`` ordinarily and streamed; assert output, input grad and every param grad agree.

    The comparison and its tolerances are :mod:`tests.exactness`'s; ``stream_kwargs`` go to
    :class:`StreamingModule`, which is built after the ordinary run (it may replace modules
    of ``net``, e.g. ``freeze_batchnorm=True``).
    """
    net = net.to(device=TEST_DEVICE, dtype=dtype)
    x = x.to(device=TEST_DEVICE, dtype=dtype)
    kwargs = dict(input_grad=input_grad, seed=seed)
    ordinary = run_backward(net, x, net, **kwargs)
    streamed = StreamingModule(net, **stream_kwargs)
    assert_same_runs(run_backward(streamed, x, net, **kwargs), ordinary, net)
    return streamed


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
