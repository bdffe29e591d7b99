"""Frozen BatchNorm folded into the convolution before it: one op instead of two, exact.

A frozen BatchNorm (:class:`~gigastream.streaming.batchnorm.FrozenBatchNorm`) is a
per-channel affine map, ``y = (x - mu) * gamma / sigma + beta`` with
``sigma = sqrt(var + eps)``. After a convolution ``x = w * z + b`` the two are one
convolution with ``w' = w * gamma / sigma`` and ``b' = beta + (b - mu) * gamma / sigma``.
:func:`fold_batchnorm` rewires every such pair of a model, in place: the convolution
computes ``w'`` and ``b'`` from the current ``w``, ``b``, ``gamma``, ``beta`` and running
statistics at every call (so the optimiser's updates and a calibration are always seen),
and autograd differentiates the fold, so the gradients of ``w``, ``b``, ``gamma`` and
``beta`` are the unfolded model's (to rounding: float64 within 1e-10, tested). The
BatchNorm then passes its input through. Parameters, buffers and ``state_dict`` keys stay
where they were, so checkpoints load either way and :func:`unfold_batchnorm` undoes it.

Memory and time: the BatchNorm's own activation (forward) and its backward (one of the
largest costs of a streamed ResNet, issue 17's profile) disappear; the fold itself is a
per-channel scale of the weights, computed per call (per tile when streaming).

Pairs are found by tracing the model with :mod:`torch.fx` (convolutions and BatchNorms
as leaves): a ``Conv2d`` whose only use is a frozen BatchNorm over its channels, each
called once. A model that cannot be traced is left as it is (a warning says why).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from gigastream.streaming.batchnorm import freeze_batchnorm
    >>> net = freeze_batchnorm(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()))
    >>> x = torch.randn(2, 3, 16, 16)
    >>> before = net(x)
    >>> fold_batchnorm(net)
    1
    >>> torch.allclose(net(x), before, atol=1e-6), type(net[0]).__name__
    (True, 'FoldedConv2d')
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from gigastream.streaming.batchnorm import FrozenBatchNorm
from gigastream.streaming.geometry import Geometry

logger = logging.getLogger(__name__)

__all__ = ["FoldedBatchNorm", "FoldedConv2d", "fold_batchnorm", "folded_pairs", "unfold_batchnorm"]


class FoldedBatchNorm(FrozenBatchNorm):
    """A frozen BatchNorm whose map the convolution before it applies: passes its input.

    Made only by :func:`fold_batchnorm` (the class of an existing
    :class:`~gigastream.streaming.batchnorm.FrozenBatchNorm` is switched; its parameters
    and buffers stay where they are).
    """

    def forward(self, x: Tensor) -> Tensor:
        return x

    def stream_geometry(self) -> Geometry:
        return Geometry()


class FoldedConv2d(nn.Conv2d):
    """A ``Conv2d`` that applies the frozen BatchNorm after it by folding it into its weights.

    Made only by :func:`fold_batchnorm` (the class of an existing ``Conv2d`` is switched;
    it keeps its parameters). Streams like any ``Conv2d`` (same geometry).
    """

    _folded_bn: FoldedBatchNorm  # set with object.__setattr__: not a submodule

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 - torch's signature
        """Device and dtype moves reach the BatchNorm too when it is not moved with this
        conv (a deep copy of the conv alone, e.g. the planner's ``meta`` copy of one unit);
        applying a move twice is a no-op."""
        super()._apply(fn, recurse)
        bn = self._folded_bn
        if (bn.running_var.device, bn.running_var.dtype) != (self.weight.device, self.weight.dtype):
            bn._apply(fn, recurse)
        return self

    def forward(self, x: Tensor) -> Tensor:
        bn = self._folded_bn
        if bn.calibrating:  # batch statistics: the unfolded computation
            return bn.normalize(self._conv_forward(x, self.weight, self.bias))
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = bn.weight * scale
        shift = -bn.running_mean * scale
        if self.bias is not None:
            shift = shift + self.bias * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        weight = self.weight * scale.to(self.weight.dtype).reshape(-1, 1, 1, 1)
        return self._conv_forward(x, weight, shift.to(self.weight.dtype))


class _LeafTracer(torch.fx.Tracer):
    """Traces through every module except convolutions and BatchNorms (kept as calls)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Conv2d, FrozenBatchNorm, nn.modules.batchnorm._BatchNorm)):
            return True
        return super().is_leaf_module(m, qualname)


def folded_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """``(conv name, BatchNorm name)`` of every foldable pair of ``module``.

    A pair is a ``Conv2d`` whose output is used only by a
    :class:`~gigastream.streaming.batchnorm.FrozenBatchNorm` over its channels, both
    called once in the traced forward.

    Raises:
        RuntimeError: the model cannot be traced by :mod:`torch.fx` (data-dependent
            control flow); the message says why.
    """
    try:
        graph = _LeafTracer().trace(module)
    except Exception as exc:  # fx raises many types for untraceable code
        name = type(module).__name__
        raise RuntimeError(f"cannot trace {name} to find conv-BN pairs: {exc}") from exc
    modules = dict(module.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.Conv2d):
            continue
        conv = modules[node.target]
        users = list(node.users)
        if isinstance(conv, FoldedConv2d) or len(users) != 1:
            continue
        user = users[0]
        if user.op != "call_module" or user.args[:1] != (node,) or len(user.args) != 1:
            continue
        bn = modules[user.target]
        if type(bn) is not FrozenBatchNorm or bn.num_features != conv.out_channels:
            continue
        if calls[node.target] == 1 and calls[user.target] == 1:
            pairs.append((node.target, user.target))
    return pairs


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every frozen BatchNorm of ``module`` into the convolution before it, in place.

    Only :class:`~gigastream.streaming.batchnorm.FrozenBatchNorm` layers are folded (a
    BatchNorm in train mode normalises with batch statistics: freeze it first with
    :func:`~gigastream.streaming.batchnorm.freeze_batchnorm`). Folding twice does nothing
    more.

    Returns:
        The number of pairs folded (0 when the model cannot be traced; a warning says why).
    """
    try:
        pairs = folded_pairs(module)
    except RuntimeError as exc:
        logger.warning("BatchNorm not folded: %s", exc)
        return 0
    modules = dict(module.named_modules())
    for conv_name, bn_name in pairs:
        conv, bn = modules[conv_name], modules[bn_name]
        bn.__class__ = FoldedBatchNorm
        conv.__class__ = FoldedConv2d
        object.__setattr__(conv, "_folded_bn", bn)
    return len(pairs)


def unfold_batchnorm(module: nn.Module) -> int:
    """Undo :func:`fold_batchnorm` in place; returns the number of pairs unfolded."""
    count = 0
    for m in module.modules():
        if isinstance(m, FoldedConv2d):
            m.__class__ = nn.Conv2d
            m._folded_bn.__class__ = FrozenBatchNorm
            object.__delattr__(m, "_folded_bn")
            count += 1
    return count
