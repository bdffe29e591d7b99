"""Shared helpers: compare a streamed run with the ordinary computation."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from gigastream.streaming import StreamingModule

# float32 tolerance (documented in the README): tiles change the summation order of
# convolutions and of the parameter-gradient sums, so float32 results differ from the
# ordinary computation by rounding only; relative to the largest magnitude of each tensor.
F32_RTOL = 1e-4
F32_ATOL_REL = 2e-5
F64_RTOL = 1e-10
F64_ATOL_REL = 1e-10

# GIGASTREAM_TEST_DEVICE=cuda runs every compare_streaming check on that device (the GPU
# session's check; CI runs them on the CPU).
TEST_DEVICE = torch.device(os.environ.get("GIGASTREAM_TEST_DEVICE", "cpu"))
if TEST_DEVICE.type == "cuda":  # TF32 would round both runs differently, far above 1e-4
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def assert_close_scaled(
    actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol_rel: float, msg: str
):
    scale = expected.abs().max().item() or 1.0
    torch.testing.assert_close(
        actual, expected, rtol=rtol, atol=atol_rel * scale, msg=lambda m: f"{msg}: {m}"
    )


def compare_streaming(
    net: nn.Module,
    x: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float64,
    input_grad: bool = True,
    seed: int = 0,
    **stream_kwargs,
) -> StreamingModule:
    """Run ``net`` ordinarily and streamed; assert output, input grad and every param grad agree."""
    net = net.to(device=TEST_DEVICE, dtype=dtype)
    x = x.to(TEST_DEVICE)
    rtol, atol_rel = (
        (F64_RTOL, F64_ATOL_REL) if dtype == torch.float64 else (F32_RTOL, F32_ATOL_REL)
    )
    x_ref = x.detach().to(dtype).requires_grad_(input_grad)
    net.zero_grad(set_to_none=True)
    ref = net(x_ref)
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    w = w.to(TEST_DEVICE)
    (ref * w).sum().backward()
    ref_grads = {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
    ref_xgrad = x_ref.grad.detach().clone() if input_grad else None
    net.zero_grad(set_to_none=True)

    streamed = StreamingModule(net, **stream_kwargs)
    x_s = x.detach().to(dtype).requires_grad_(input_grad)
    out = streamed(x_s)
    assert out.shape == ref.shape
    (out * w).sum().backward()
    assert_close_scaled(out.detach(), ref.detach(), rtol, atol_rel, "output")
    if input_grad:
        assert x_s.grad is not None
        assert_close_scaled(x_s.grad, ref_xgrad, rtol, atol_rel, "input gradient")
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None, f"parameter {name} got no gradient"
        assert_close_scaled(p.grad, ref_grads[name], rtol, atol_rel, f"gradient of {name}")
    return streamed


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
