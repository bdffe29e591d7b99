"""How a MIL model sees a bag during training: the strategies ``baseline``, ``accumulate``
and ``sample``.

- ``baseline``: the encoder runs on the whole bag with an autograd graph (the ordinary,
  memory-hungry reference: activation memory grows with ``N``);
- ``accumulate``: :class:`~gigastream.mil.chunked.ChunkedEncoder`, exact gradients with
  memory bounded by one chunk (Andersson et al., 2022);
- ``sample``: the encoder and head see a random subset of ``sample_size`` instances per step
  (Koriakina et al., 2021); cheap, but the bag label may not hold for the subset.

Evaluation always uses every instance, encoded in chunks without a graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gigastream.mil.chunked import ChunkedEncoder

STRATEGIES = ("baseline", "accumulate", "sample")


@dataclass
class StrategyConfig:
    """A training strategy.

    Attributes:
        name: ``baseline``, ``accumulate`` or ``sample``.
        chunk_size: instances per chunk (``accumulate``, and evaluation of every strategy).
        sample_size: instances per training step (``sample``).
        memory_budget_mib: ``accumulate`` only: memory for chunks that keep their graph.
    """

    name: str = "accumulate"
    chunk_size: int = 64
    sample_size: int = 64
    memory_budget_mib: float | None = None

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.name!r}; choose one of {', '.join(STRATEGIES)}")
        if self.sample_size < 1:
            raise ValueError(f"sample_size must be >= 1, got {self.sample_size}")


class BagEncoder:
    """Encodes bags according to a strategy.

    Args:
        encoder: the instance encoder ``(n, *instance_shape) -> (n, D)``.
        config: the strategy.

    Example:
        >>> enc = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> bags = BagEncoder(enc, StrategyConfig("sample", sample_size=5))
        >>> bags.train_features(torch.randn(20, 1, 2, 2), torch.Generator()).shape
        torch.Size([5, 3])
    """

    def __init__(self, encoder: nn.Module, config: StrategyConfig) -> None:
        self.encoder = encoder
        self.config = config
        self.chunked = ChunkedEncoder(encoder, config.chunk_size, config.memory_budget_mib)
        self.eval_chunked = ChunkedEncoder(encoder, config.chunk_size)

    def train_features(self, bag: Tensor, generator: torch.Generator) -> Tensor:
        """Features of a training bag, connected to the encoder for backward.

        Args:
            bag: ``(N, *instance_shape)``.
            generator: random source of the ``sample`` strategy's subsets (CPU).

        Returns:
            ``(N, D)``, or ``(min(N, sample_size), D)`` for ``sample``.
        """
        name = self.config.name
        if name == "baseline":
            return self.encoder(bag)
        if name == "accumulate":
            return self.chunked(bag)
        n = bag.shape[0]
        if n > self.config.sample_size:
            keep = torch.randperm(n, generator=generator)[: self.config.sample_size]
            bag = bag[keep.to(bag.device)]
        return self.encoder(bag)

    @torch.no_grad()
    def eval_features(self, bag: Tensor) -> Tensor:
        """Features of every instance of a bag, in chunks, without a graph: ``(N, D)``."""
        return self.eval_chunked(bag)
