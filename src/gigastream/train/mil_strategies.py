"""How a MIL model sees a bag during training: the strategies ``baseline``, ``accumulate``
and ``sample``, and :class:`BagClassifier`, the bag model the training engine trains.

- ``baseline``: the encoder runs on the whole bag with an autograd graph (the ordinary,
  memory-hungry reference: activation memory grows with ``N``);
- ``accumulate``: :class:`~gigastream.mil.chunked.ChunkedEncoder`, exact gradients with
  memory bounded by one chunk (Andersson et al., 2022);
- ``sample``: the encoder and head see a random subset of ``sample_size`` instances per step
  (Koriakina et al., 2021); cheap, but the bag label may not hold for the subset.

Evaluation always uses every instance, encoded in chunks without a graph.
:class:`BagClassifier` keeps the :class:`~gigastream.train.module.MILModel` contract, so
:class:`~gigastream.train.module.MILClassifier` (PyTorch Lightning) trains it like a
slide model: one bag per step, gradient accumulation over bags with the ``Trainer``'s
``accumulate_grad_batches``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gigastream.mil.base import MILHead, MILOutput
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
            raise ValueError(
                f"unknown strategy {self.name!r}; choose one of {', '.join(STRATEGIES)}"
            )
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.sample_size < 1:
            raise ValueError(f"sample_size must be >= 1, got {self.sample_size}")
        if self.memory_budget_mib is not None and self.memory_budget_mib < 0:
            raise ValueError(f"memory_budget_mib must be >= 0, got {self.memory_budget_mib}")


class BagEncoder:
    """Encodes bags according to a strategy.

    Args:
        encoder: the instance encoder ``(n, *instance_shape) -> (n, D)``.
        config: the strategy.

    Example:
        >>> enc = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> bags = BagEncoder(enc, StrategyConfig("sample", sample_size=5))
        >>> bags.train_features(torch.randn(20, 1, 2, 2)).shape
        torch.Size([5, 3])
    """

    def __init__(self, encoder: nn.Module, config: StrategyConfig) -> None:
        self.encoder = encoder
        self.config = config
        self.chunked = ChunkedEncoder(encoder, config.chunk_size, config.memory_budget_mib)
        self.eval_chunked = ChunkedEncoder(encoder, config.chunk_size)

    def train_features(self, bag: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Features of a training bag, connected to the encoder for backward.

        Args:
            bag: ``(N, *instance_shape)``.
            generator: CPU random source of the ``sample`` strategy's subsets; ``None``:
                torch's default generator (which the engine reseeds every epoch from the
                run's seed, so the subsets are the same in every run with that seed).

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


class BagClassifier(nn.Module):
    """An instance encoder and a MIL head trained end to end on bags with a strategy.

    Keeps the :class:`~gigastream.train.module.MILModel` contract: ``model(bag, label=y)``
    gives the head's :class:`~gigastream.mil.base.MILOutput` (``logits``
    ``(num_classes,)``, ``attention`` ``(N,)``; in training with ``sample``, over the
    sampled instances), ``model.loss(out, y)`` the head's loss and
    ``model.parameter_groups()`` the ``trunk`` (encoder) and ``head`` parameters. In
    training mode the bag is encoded by the strategy (:meth:`BagEncoder.train_features`);
    in eval mode every instance is encoded in chunks without a graph.

    Args:
        encoder: the instance encoder ``(n, *instance_shape) -> (n, D)``.
        head: a MIL head taking ``(N, D)`` features.
        strategy: the training strategy.
        generator: random source of the ``sample`` strategy (``None``: torch's default
            generator, reseeded every epoch by :class:`~gigastream.train.module.MILClassifier`).

    Example:
        >>> from gigastream import create_mil_head
        >>> from gigastream.mil.encoders import SmallCNN
        >>> model = BagClassifier(SmallCNN(out_dim=8), create_mil_head("gated_abmil", 8, 2),
        ...                       StrategyConfig("accumulate", chunk_size=16))
        >>> out = model(torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8), label=1)
        >>> out.logits.shape, out.attention.shape
        (torch.Size([2]), torch.Size([40]))
    """

    def __init__(
        self,
        encoder: nn.Module,
        head: MILHead,
        strategy: StrategyConfig,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.strategy = strategy
        self.generator = generator
        self._bags = BagEncoder(encoder, strategy)  # a plain object: no duplicate state_dict keys

    def features(self, bag: Tensor) -> Tensor:
        """Instance features ``(N or sample_size, D)`` of one bag ``(N, *instance_shape)``."""
        if self.training:
            return self._bags.train_features(bag, self.generator)
        return self._bags.eval_features(bag)

    def forward(self, bag: Tensor, label: Tensor | int | None = None) -> MILOutput:
        """Classify one bag ``(N, *instance_shape)``; ``label`` as for the head."""
        return self.head(self.features(bag), label=label)

    def loss(self, out: MILOutput, label: Tensor | int) -> Tensor:
        """The head's training loss of one bag."""
        return self.head.loss(out, label)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``trunk`` (the encoder) and ``head`` parameters."""
        return {"trunk": list(self.encoder.parameters()), "head": list(self.head.parameters())}


__all__ = ["STRATEGIES", "BagClassifier", "BagEncoder", "StrategyConfig"]
