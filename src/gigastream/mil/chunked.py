"""Exact gradient accumulation over the instances of a bag (Andersson et al., 2022).

:class:`ChunkedEncoder` runs an instance encoder ``f`` over a bag of ``N`` instances in
chunks of ``chunk_size`` and returns ``H = [f(x_1) .. f(x_N)]`` with autograd support:

1. forward: every chunk runs **without** a graph; only ``H`` (``N x D``, small) is kept;
2. the head and the loss run normally on ``H`` and give ``G = dL/dH``;
3. backward: every chunk is recomputed **with** a graph and back-propagates ``G[chunk]``.

By the chain rule the summed gradients equal those of running ``f`` on the whole bag,
while memory holds one chunk's activations plus ``H``. The cost is O(N): one extra forward
per chunk (about 4/3 of the ordinary forward + backward), not the head re-run per chunk.
A memory budget lets some chunks keep their graph from the forward pass instead of being
recomputed, which is faster. It is built on the shared primitive
:func:`gigastream.streaming.recompute.piecewise_recompute`.

Dropout is replayed exactly (same masks in the recompute). BatchNorm in train mode is
refused: its statistics over a chunk are not the bag's, so gradients would not be exact;
:func:`gigastream.streaming.batchnorm.freeze_batchnorm` replaces it by its frozen
(running-statistics) form.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from gigastream.streaming.batchnorm import freeze_batchnorm as _freeze_batchnorm
from gigastream.streaming.batchnorm import training_batchnorms
from gigastream.streaming.recompute import InputSource, Piece, piecewise_recompute

logger = logging.getLogger(__name__)

_MIB = 2**20


def activation_bytes(fn: Callable[[Tensor], Tensor], sample: Tensor, skip: set[int]) -> int:
    """Bytes of the tensors autograd saves when ``fn`` runs on ``sample`` (parameters excluded)."""
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        if t.data_ptr() not in skip:
            total += t.numel() * t.element_size()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(sample)
    return total


def _chunk(bag: Tensor | InputSource, start: int, stop: int) -> Tensor:
    """Instances ``start:stop`` of a bag tensor or lazy source."""
    if isinstance(bag, Tensor):
        return bag[start:stop]
    return bag.read((slice(start, stop),))


class ChunkedEncoder(nn.Module):
    """Encode a bag in chunks, with exact gradients and memory bounded by one chunk.

    Args:
        encoder: the instance encoder; maps ``(n, *instance_shape)`` to ``(n, *feature_shape)``
            instance by instance (no coupling across instances: no train-mode BatchNorm).
        chunk_size: instances per chunk.
        memory_budget_mib: extra memory (MiB) the forward may spend keeping chunk graphs so
            that those chunks are not recomputed in backward; ``None`` or 0: recompute all.
        progress: optional callback called with the number of instances of each chunk the
            forward pass finishes (e.g. ``tqdm.update``).
        freeze_batchnorm: replace the encoder's BatchNorm layers by frozen ones
            (:func:`gigastream.streaming.batchnorm.freeze_batchnorm`: running statistics,
            trainable affine parameters); otherwise a train-mode BatchNorm raises an error.

    Example:
        >>> enc = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 32), nn.ReLU())
        >>> chunked = ChunkedEncoder(enc, chunk_size=64)
        >>> bag = torch.randn(1000, 1, 28, 28)
        >>> features = chunked(bag)  # (1000, 32), same values and gradients as enc(bag)
        >>> torch.allclose(features, enc(bag))
        True
    """

    def __init__(
        self,
        encoder: nn.Module,
        chunk_size: int = 64,
        memory_budget_mib: float | None = None,
        progress: Callable[[int], Any] | None = None,
        *,
        freeze_batchnorm: bool = False,
    ) -> None:
        super().__init__()
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if memory_budget_mib is not None and memory_budget_mib < 0:
            raise ValueError(f"memory_budget_mib must be >= 0, got {memory_budget_mib}")
        self.encoder = _freeze_batchnorm(encoder) if freeze_batchnorm else encoder
        self.chunk_size = chunk_size
        self.memory_budget_mib = memory_budget_mib
        self.progress = progress
        self.kept_chunks = 0  # chunks whose graph the last forward kept (for inspection)

    def _check_encoder(self) -> None:
        names = training_batchnorms(self.encoder)
        if names:
            raise ValueError(
                f"ChunkedEncoder: the encoder has BatchNorm in training mode ({', '.join(names)}); "
                "its statistics over one chunk are not the bag's, so chunked gradients would "
                "not be exact. Freeze it: `ChunkedEncoder(encoder, ..., freeze_batchnorm=True)` or "
                "`gigastream.streaming.freeze_batchnorm(encoder)` (normalise with the running "
                "statistics, keep the affine parameters "
                "trainable), or put those modules in eval mode with `.eval()`."
            )

    def _probe(
        self, bag: Tensor | InputSource, params: list[Tensor]
    ) -> tuple[tuple[int, ...], int]:
        """Feature shape of one instance and activation bytes per instance (0 if not needed)."""
        sample = _chunk(bag, 0, 1).detach()
        want_bytes = bool(self.memory_budget_mib) and torch.is_grad_enabled()
        with torch.random.fork_rng(devices=[bag.device] if bag.device.type == "cuda" else []):
            if want_bytes:
                skip = {p.data_ptr() for p in params}
                out_bytes = activation_bytes(self.encoder, sample, skip)
                with torch.no_grad():
                    shape = tuple(self.encoder(sample).shape[1:])
            else:
                with torch.no_grad():
                    shape = tuple(self.encoder(sample).shape[1:])
                out_bytes = 0
        return shape, out_bytes

    def forward(self, bag: Tensor | InputSource) -> Tensor:
        """Encode one bag.

        Args:
            bag: instances, shape ``(N, *instance_shape)``, e.g. ``(N, C, H, W)``: a tensor,
                or a lazy :class:`~gigastream.streaming.recompute.InputSource` whose chunks
                are read when they are encoded (a bag too large to hold as pixels).

        Returns:
            Instance features ``(N, *feature_shape)``, e.g. ``(N, D)``, connected to the bag
            (if it requires grad) and to the encoder's parameters.

        Raises:
            ValueError: on an empty bag or a train-mode BatchNorm in the encoder.
        """
        if len(bag.shape) < 1 or bag.shape[0] == 0:
            raise ValueError(
                f"empty bag: ChunkedEncoder needs N >= 1 instances, got shape {tuple(bag.shape)}"
            )
        self._check_encoder()
        n = bag.shape[0]
        params = [p for p in self.encoder.parameters() if p.requires_grad]
        input_grad = isinstance(bag, Tensor) and bag.requires_grad
        needs_graph = torch.is_grad_enabled() and (input_grad or bool(params))
        if not needs_graph:
            return self._encode_without_graph(bag)
        feature_shape, bytes_per_instance = self._probe(bag, params)
        starts = range(0, n, self.chunk_size)
        keep = 0
        if self.memory_budget_mib and bytes_per_instance:
            chunk_mib = bytes_per_instance * self.chunk_size / _MIB
            keep = min(len(starts), math.floor(self.memory_budget_mib / chunk_mib))
            logger.debug(
                "keeping the graph of %d of %d chunks (%.1f MiB each)", keep, len(starts), chunk_mib
            )
        self.kept_chunks = keep
        pieces = [
            Piece(
                (slice(i, i + self.chunk_size),),
                (slice(i, i + self.chunk_size),),
                (slice(None),),
                keep_graph=k < keep,
            )
            for k, i in enumerate(starts)
        ]
        progress = None
        if self.progress is not None:
            sizes = [min(self.chunk_size, n - i) for i in starts]
            calls = iter(sizes)

            def progress(_: int) -> None:
                self.progress(next(calls))

        return piecewise_recompute(
            self.encoder,
            bag,
            pieces,
            (n, *feature_shape),
            params,
            module=self.encoder,
            progress=progress,
        )

    def _encode_without_graph(self, bag: Tensor | InputSource) -> Tensor:
        outputs = []
        for i in range(0, bag.shape[0], self.chunk_size):
            outputs.append(self.encoder(_chunk(bag, i, i + self.chunk_size)))
            if self.progress is not None:
                self.progress(outputs[-1].shape[0])
        return torch.cat(outputs)
