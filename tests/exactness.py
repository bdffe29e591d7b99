"""The suite's one exactness check: a computation done in pieces equals the ordinary one.

*In pieces* is every way gigastream splits a computation that must not change its result:
tile by tile (:class:`~gigastream.streaming.StreamingModule`), chunk by chunk
(:class:`~gigastream.mil.chunked.ChunkedEncoder`), across processes (DDP).
:func:`assert_same_gradients` runs the ordinary and the pieced computation on the same
input, backpropagates the same upstream gradient through both, and compares the output,
the input gradient and the gradient of every named parameter with
``torch.testing.assert_close``; a failure names the tensor (``gradient of layer1.0.conv1.weight``).

Tolerances (:data:`TOLERANCES`, one per dtype). A tensor passes when every element has
``|actual - expected| <= rtol * |expected| + atol * max(1, max|expected|)``. The absolute
part grows with the tensor's largest magnitude: rounding errors of a sum scale with its
terms, so an element that cancels to near zero in a gradient of scale 1e3 is judged
against 1e3, not against itself. Below magnitude 1 it stays ``atol``: a gradient that is
zero in exact arithmetic (the bias of a softmax score: ~1e-17 of rounding noise) has no
scale of its own. The pieces change only the order of the sums (convolutions over tiles,
parameter-gradient sums over tiles or chunks), so both results differ by rounding only:

- float64: ``rtol=atol=1e-12``. The largest difference seen in the suite (its float64
  cases: streamed ResNet-18/34/50, VGG and residual blocks in 2-49 tiles, offloaded and
  lazy inputs, chunked bags, DDP, StreamingMIL) is 8.9e-15 of ``max(1, max|expected|)``
  (resnet50, 2 x 2 tiles, ~40 float64 ulps), a margin of ~110 for other kernels (CUDA),
  while a real error (a missing tile border, a gradient counted twice) is of the order of
  the values themselves.
- float32: ``rtol=1e-5, atol=5e-6``. The largest difference seen (ResNet-18 and residual
  blocks streamed in tiles of 64-100 px; chunked encoders with GroupNorm, dropout and
  frozen BatchNorm differ far less, <2e-9) is 4.9e-7 of the scale (ResNet-18's layer1
  weight gradients, scale ~600: a few float32 ulps), a margin of ~10 for other kernels (on
  CUDA with TF32 off; TF32 rounds to 1e-3).

Before this module the suite's comparisons used (float64) ``rtol=1e-10`` with
``atol=1e-10 x max|expected|`` (streaming), ``atol=1e-10`` or ``1e-12`` absolute (trunks,
chunked bags; StreamingCLAM, DDP) and ``rtol=atol=1e-12`` (the read-ahead test); (float32)
``rtol=1e-4, atol=2e-5 x max|expected|`` (streaming), ``rtol=atol=1e-5`` absolute (chunked
bags) and ``rtol=1e-5, atol=1e-6`` (the chunked no-grad path).

Example:
    >>> net = torch.nn.Conv2d(1, 2, 3).double()
    >>> pieced = lambda x: torch.cat([net(x[..., :6, :]), net(x[..., 4:, :])], dim=-2)
    >>> x = torch.randn(1, 1, 10, 8, dtype=torch.float64)
    >>> ordinary, streamed = assert_same_gradients(net, pieced, x, net)
    >>> sorted(streamed.grads)
    ['bias', 'weight']
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "FLOAT32",
    "FLOAT64",
    "TOLERANCES",
    "Run",
    "Tolerance",
    "assert_exact",
    "assert_same_gradients",
    "assert_same_runs",
    "run_backward",
]


@dataclass(frozen=True)
class Tolerance:
    """``|actual - expected| <= rtol * |expected| + atol * max(1, max|expected|)``."""

    rtol: float
    atol: float  # times max(1, the largest magnitude of the expected tensor)


FLOAT64 = Tolerance(rtol=1e-12, atol=1e-12)
FLOAT32 = Tolerance(rtol=1e-5, atol=5e-6)
TOLERANCES: dict[torch.dtype, Tolerance] = {torch.float64: FLOAT64, torch.float32: FLOAT32}
#: The same arithmetic in the same order: bit for bit.
EQUAL = Tolerance(rtol=0.0, atol=0.0)
#: bfloat16 autocast (8 mantissa bits), for its bf16 output and its float32 gradients alike
#: (the largest difference seen: 5.9e-3 of the scale, in the input gradient).
BF16_AUTOCAST = Tolerance(rtol=2e-2, atol=2e-2)

#: A computation's output: one tensor, or named tensors (``{"logits": ..., "loss": ...}``).
Outputs = Tensor | Mapping[str, Tensor]


def assert_exact(
    actual: Outputs, expected: Outputs, what: str = "output", tolerance: Tolerance | None = None
) -> None:
    """Assert ``actual`` equals ``expected`` up to rounding.

    Args:
        actual: the pieced result: a tensor, or a mapping of named tensors.
        expected: the ordinary result, of the same structure (the same names), dtype,
            device and shape.
        what: names the tensor in the failure message.
        tolerance: default: the one of ``expected``'s dtype (:data:`TOLERANCES`); integer
            tensors must be equal.
    """
    if isinstance(expected, Mapping):
        assert isinstance(actual, Mapping), f"{what}: {type(actual).__name__}, not a mapping"
        missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
        assert not missing and not extra, f"{what}: missing {missing}, unexpected {extra}"
        for name in expected:
            assert_exact(actual[name], expected[name], f"{what} {name}", tolerance)
        return
    if not expected.is_floating_point():
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, msg=lambda m: f"{what}: {m}")
        return
    if tolerance is None:
        if expected.dtype not in TOLERANCES:
            raise TypeError(f"{what}: no tolerance for {expected.dtype}; pass one")
        tolerance = TOLERANCES[expected.dtype]
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(
        actual,
        expected,
        rtol=tolerance.rtol,
        atol=tolerance.atol * max(1.0, scale),
        msg=lambda m: f"{what}: {m}",
    )


@dataclass
class Run:
    """What one computation gave."""

    output: Outputs  # detached
    input_grad: Tensor | None  # None if none was asked for or none arrived
    grads: dict[str, Tensor]  # name -> gradient, for the parameters that got one


def _trainable(params: nn.Module | Mapping[str, nn.Parameter]) -> dict[str, nn.Parameter]:
    items = params.named_parameters() if isinstance(params, nn.Module) else params.items()
    return {name: p for name, p in items if p.requires_grad}


def _detach(output: Outputs) -> Outputs:
    if isinstance(output, Mapping):
        return {name: t.detach().clone() for name, t in output.items()}
    return output.detach().clone()


def weighted_sum(seed: int) -> Callable[[Outputs], Tensor]:
    """The default objective: ``sum(output * w)`` for fixed random weights ``w`` (per name,
    drawn from ``seed``), so the upstream gradient is the same random tensor in both runs."""

    def objective(output: Outputs) -> Tensor:
        tensors = output if isinstance(output, Mapping) else {"": output}
        total = 0
        for i, name in enumerate(sorted(tensors)):
            t = tensors[name]
            gen = torch.Generator().manual_seed(seed + i)
            w = torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)
            total = total + (t * w).sum()
        return total

    return objective


def run_backward(
    fn: Callable[[Tensor], Outputs],
    x: Tensor,
    params: nn.Module | Mapping[str, nn.Parameter],
    *,
    loss: Callable[[Outputs], Tensor] | None = None,
    input_grad: bool = True,
    seed: int = 0,
) -> Run:
    """Run ``fn`` on a fresh leaf copy of ``x`` and backpropagate ``loss(fn(x))``.

    Args:
        fn: the computation; called after ``torch.manual_seed(seed)``, so random layers
            (dropout) draw the same numbers in every run.
        x: the input.
        params: the parameters whose gradients are collected (a module, or a mapping
            ``name -> parameter``); their gradients are cleared first.
        loss: the scalar to backpropagate; default :func:`weighted_sum`.
        input_grad: whether the input takes a gradient.
        seed: seeds the global RNG and the default upstream weights.
    """
    named = _trainable(params)
    for p in named.values():
        p.grad = None
    x = x.detach().clone().requires_grad_(input_grad)
    torch.manual_seed(seed)
    output = fn(x)
    (loss or weighted_sum(seed))(output).backward()
    grads = {name: p.grad.detach().clone() for name, p in named.items() if p.grad is not None}
    return Run(_detach(output), None if x.grad is None else x.grad.detach().clone(), grads)


def assert_same_runs(
    got: Run,
    expected: Run,
    params: nn.Module | Mapping[str, nn.Parameter],
    *,
    unused: Collection[str] = (),
    tolerance: Tolerance | None = None,
) -> None:
    """Assert two runs agree: output, input gradient and every parameter's gradient.

    Every trainable parameter of ``params`` except those named in ``unused`` must get a
    finite gradient in both runs; those in ``unused`` must get none in either.
    """
    assert_exact(got.output, expected.output, "output", tolerance)
    for run, label in ((expected, "ordinary"), (got, "pieced")):
        other = got if run is expected else expected
        if run.input_grad is None and other.input_grad is not None:
            raise AssertionError(f"input gradient: the {label} run got none")
    if expected.input_grad is not None:
        assert_exact(got.input_grad, expected.input_grad, "input gradient", tolerance)
    names = set(_trainable(params))
    assert set(unused) <= names, f"unknown unused parameters {sorted(set(unused) - names)}"
    used = names - set(unused)
    for run, label in ((expected, "ordinary"), (got, "pieced")):
        missing, extra = sorted(used - set(run.grads)), sorted(set(run.grads) - used)
        assert not missing, f"{label} run: parameters without a gradient: {missing}"
        assert not extra, f"{label} run: parameters expected to get no gradient got one: {extra}"
    for name in sorted(used):
        assert torch.isfinite(expected.grads[name]).all(), f"gradient of {name} is not finite"
        assert_exact(got.grads[name], expected.grads[name], f"gradient of {name}", tolerance)


def assert_same_gradients(
    ordinary: Callable[[Tensor], Outputs],
    pieced: Callable[[Tensor], Outputs],
    x: Tensor,
    params: nn.Module | Mapping[str, nn.Parameter],
    *,
    loss: Callable[[Outputs], Tensor] | None = None,
    input_grad: bool = True,
    unused: Collection[str] = (),
    seed: int = 0,
    tolerance: Tolerance | None = None,
) -> tuple[Run, Run]:
    """Assert the pieced computation equals the ordinary one, in value and in every gradient.

    Runs ``ordinary`` then ``pieced`` (:func:`run_backward`, the same input, seed and
    upstream gradient) and compares them (:func:`assert_same_runs`).

    Args:
        ordinary: the reference computation, ``x -> output`` (a tensor or named tensors).
        pieced: the same computation done in tiles, chunks or processes.
        x: the input; its dtype chooses the tolerance unless ``tolerance`` is given.
        params: the parameters both computations use (a module or ``name -> parameter``).
        loss: ``output -> scalar`` to backpropagate; default a fixed random weighting of
            the output (:func:`weighted_sum`).
        input_grad: also compare the gradient with respect to ``x``.
        unused: parameters that take no part in this loss (they must get no gradient).
        seed: seeds the RNG before each run and the default upstream gradient.
        tolerance: overrides :data:`TOLERANCES`.

    Returns:
        ``(ordinary_run, pieced_run)``.
    """
    kwargs = dict(loss=loss, input_grad=input_grad, seed=seed)
    expected = run_backward(ordinary, x, params, **kwargs)
    got = run_backward(pieced, x, params, **kwargs)
    assert_same_runs(got, expected, params, unused=unused, tolerance=tolerance)
    return expected, got
