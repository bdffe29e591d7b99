"""How a MIL model sees a bag during training: the strategies ``baseline``, ``accumulate``,
``sample`` and ``frozen``, and :class:`BagClassifier`, the bag model the training engine
trains.

- ``baseline``: the encoder runs on the whole bag with an autograd graph (the ordinary,
  memory-hungry reference: activation memory grows with ``N``);
- ``accumulate``: :class:`~gigastream.mil.chunked.ChunkedEncoder`, exact gradients with
  memory bounded by one chunk (Andersson et al., 2022);
- ``sample``: the encoder and head see a random subset of ``sample_size`` instances per step
  (Koriakina et al., 2021); cheap, but the bag label may not hold for the subset;
- ``frozen``: the encoder does not train (no parameter of it gets a gradient; it stays in
  eval mode, so dropout and BatchNorm act as at inference); a bag's features are computed
  once, in chunks without a graph, and kept in memory for the next epochs when the bag
  carries a ``cache_key`` (a hash of what its pixels depend on: the slide file, the patch
  grid, the orientation), so only the head trains: the two-stage baseline of CLAM and
  TRIDENT, inside the same run (``gigastream features`` writes the features to disk).

A bag is a tensor ``(N, *instance_shape)`` or a lazy
:class:`~gigastream.streaming.recompute.InputSource` (e.g. a slide's
:class:`~gigastream.wsi.patches.PatchBag`): ``baseline`` reads it whole, ``accumulate``
chunk by chunk (again in the recompute), ``sample`` only the sampled instances (the
source's ``take(indices)`` when it has one). Evaluation always uses every instance,
encoded in chunks without a graph.
:class:`BagClassifier` keeps the :class:`~gigastream.train.module.MILModel` contract, so
:class:`~gigastream.train.module.MILClassifier` (PyTorch Lightning) trains it like a
slide model: one bag per step, gradient accumulation over bags with the ``Trainer``'s
``accumulate_grad_batches``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gigastream.mil.base import MILHead, MILOutput
from gigastream.mil.chunked import ChunkedEncoder
from gigastream.streaming.recompute import InputSource

STRATEGIES = ("baseline", "accumulate", "sample", "frozen")

#: A bag: instances ``(N, *instance_shape)`` as a tensor or a lazy source.
Bag = Tensor | InputSource


def read_bag(bag: Bag) -> Tensor:
    """The whole bag as one tensor (a lazy source is read whole)."""
    return bag if isinstance(bag, Tensor) else bag.read((slice(None),))


def take_instances(bag: Bag, indices: Tensor) -> Tensor:
    """Instances ``indices`` ``(k,)`` of a bag, in that order, reading only those from a
    lazy source (its ``take(indices)``, else one ``read`` per instance)."""
    if isinstance(bag, Tensor):
        return bag[indices.to(bag.device)]
    take = getattr(bag, "take", None)
    if take is not None:
        return take(indices)
    return torch.cat([bag.read((slice(int(i), int(i) + 1),)) for i in indices.tolist()])


@dataclass
class StrategyConfig:
    """A training strategy.

    Attributes:
        name: ``baseline``, ``accumulate``, ``sample`` or ``frozen``.
        chunk_size: instances per chunk (``accumulate``, ``frozen``, and evaluation of every
            strategy).
        sample_size: instances per training step (``sample``).
        memory_budget_mib: ``accumulate`` only: memory for chunks that keep their graph.
        cache_bags: ``frozen`` only: how many bags' features are kept in memory (the
            least recently used are dropped first; 0: none, every step re-encodes).
    """

    name: str = "accumulate"
    chunk_size: int = 64
    sample_size: int = 64
    memory_budget_mib: float | None = None
    cache_bags: int = 100_000

    @property
    def trains_encoder(self) -> bool:
        """Whether the encoder gets gradients (every strategy but ``frozen``)."""
        return self.name != "frozen"

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
        if self.cache_bags < 0:
            raise ValueError(f"cache_bags must be >= 0, got {self.cache_bags}")


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
        self.cache: OrderedDict[str, Tensor] = OrderedDict()  # frozen: cache_key -> (N, D)
        self.encoded = 0  # frozen: bags encoded (not found in the cache)

    def train_features(self, bag: Bag, generator: torch.Generator | None = None) -> Tensor:
        """Features of a training bag, connected to the encoder for backward.

        Args:
            bag: ``(N, *instance_shape)``, a tensor or a lazy source.
            generator: CPU random source of the ``sample`` strategy's subsets; ``None``:
                torch's default generator (which the engine reseeds every epoch from the
                run's seed, so the subsets are the same in every run with that seed).

        Returns:
            ``(N, D)``, or ``(min(N, sample_size), D)`` for ``sample``.
        """
        return self.train_instances(bag, generator)[0]

    def train_instances(
        self, bag: Bag, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`train_features` and the indices ``(k,)`` of the instances they are of
        (``None``: every instance, in order; only ``sample`` picks a subset)."""
        name = self.config.name
        if name == "baseline":
            return self.encoder(read_bag(bag)), None
        if name == "accumulate":
            return self.chunked(bag), None
        if name == "frozen":
            return self.frozen_features(bag), None
        n = bag.shape[0]
        if n <= self.config.sample_size:
            return self.encoder(read_bag(bag)), None
        keep = torch.randperm(n, generator=generator)[: self.config.sample_size]
        return self.encoder(take_instances(bag, keep)), keep

    @torch.no_grad()
    def eval_features(self, bag: Bag) -> Tensor:
        """Features of every instance of a bag, in chunks, without a graph: ``(N, D)``."""
        return self.eval_chunked(bag)

    def frozen_features(self, bag: Bag) -> Tensor:
        """``frozen``: the bag's features without a graph, from the cache when its
        ``cache_key`` was encoded before (on the bag's device; the cache is on the CPU)."""
        key = getattr(bag, "cache_key", None)
        cached = self.cache.get(key) if key is not None else None
        if cached is not None:
            self.cache.move_to_end(key)
            return cached.to(bag.device)
        features = self.eval_features(bag)
        self.encoded += 1
        if key is not None and self.config.cache_bags > 0:
            self.cache[key] = features.detach().cpu()
            while len(self.cache) > self.config.cache_bags:
                self.cache.popitem(last=False)
        return features


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
        >>> encoder = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 8), nn.ReLU())
        >>> model = BagClassifier(encoder, create_mil_head("gated_abmil", 8, 2),
        ...                       StrategyConfig("accumulate", chunk_size=16))
        >>> out = model(torch.rand(40, 1, 28, 28), label=1)
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
        if not strategy.trains_encoder:
            encoder.requires_grad_(False)
            encoder.eval()

    @property
    def augments_bags(self) -> bool:
        """Whether training bags should be augmented (not for ``frozen``: its cached
        features are of the bag as read)."""
        return self.strategy.trains_encoder

    def train(self, mode: bool = True) -> BagClassifier:
        """As :meth:`torch.nn.Module.train`; a ``frozen`` encoder stays in eval mode."""
        super().train(mode)
        if not self.strategy.trains_encoder:
            self.encoder.eval()
        return self

    def features(self, bag: Bag) -> Tensor:
        """Instance features ``(N or sample_size, D)`` of one bag ``(N, *instance_shape)``."""
        return self.encode(bag)[0]

    def encode(self, bag: Bag) -> tuple[Tensor, Tensor | None]:
        """:meth:`features` and the indices of their instances (``None``: all, in order)."""
        if self.training:
            return self._bags.train_instances(bag, self.generator)
        if not self.strategy.trains_encoder:  # frozen: the same features as in training
            return self._bags.frozen_features(bag), None
        return self._bags.eval_features(bag), None

    def forward(self, bag: Bag, label: Tensor | int | None = None) -> MILOutput:
        """Classify one bag ``(N, *instance_shape)``; ``label`` as for the head."""
        return self.head(self.features(bag), label=label)

    def loss(self, out: MILOutput, label: Tensor | int) -> Tensor:
        """The head's training loss of one bag."""
        return self.head.loss(out, label)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``trunk`` (the encoder's trainable parameters) and ``head`` parameters."""
        trunk = [p for p in self.encoder.parameters() if p.requires_grad]
        return {"trunk": trunk, "head": list(self.head.parameters())}


__all__ = [
    "STRATEGIES",
    "Bag",
    "BagClassifier",
    "BagEncoder",
    "StrategyConfig",
    "read_bag",
    "take_instances",
]
