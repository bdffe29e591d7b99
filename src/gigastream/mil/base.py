"""The interface every MIL head shares: :class:`MILOutput` and :class:`MILHead`.

A MIL head pools a bag of instance features ``H`` of shape ``(N, in_dim)`` into one bag
prediction. Every head in :mod:`gigastream.mil.heads` is called the same way::

    out = head(H)             # inference
    out = head(H, label=y)    # training: heads with an instance loss (CLAM) compute it
    loss = head.loss(out, y)  # the head's training loss for one bag
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class MILOutput:
    """What a MIL head returns for one bag.

    Attributes:
        logits: bag-level class scores, shape ``(num_classes,)``.
        attention: non-negative instance weights that sum to 1 over the bag, shape ``(N,)``
            or ``(branches, N)`` for multi-branch heads (each branch sums to 1).
        embedding: the pooled bag embedding, shape ``(dim,)`` or ``(branches, dim)``.
        instance_loss: the head's instance-level loss (CLAM), a scalar, or ``None`` when the
            head has none or no label was given.
        instance_logits: ``(N, num_classes)`` per-instance scores whose mean is ``logits``
            (mean pooling), or ``None``: what a regression's instance loss trains
            (:class:`~gigastream.train.config.TargetConfig`).
        dense_loss: the loss of every instance trained to predict its bag's class, of heads
            that have one besides ``instance_loss`` (CLAM with ``instance_weight > 0``), or
            ``None``.
    """

    logits: Tensor
    attention: Tensor
    embedding: Tensor
    instance_loss: Tensor | None = None
    instance_logits: Tensor | None = None
    dense_loss: Tensor | None = None


def check_bag(features: Tensor, in_dim: int) -> None:
    """Raise a clear :class:`ValueError` unless ``features`` is a non-empty ``(N, in_dim)`` bag.

    Args:
        features: the instance features of one bag.
        in_dim: the feature size the head was built for.

    Raises:
        ValueError: on an empty bag, a wrong number of dimensions or a wrong feature size.
    """
    if features.dim() != 2:
        raise ValueError(
            f"a MIL head takes one bag of instance features of shape (N, in_dim); "
            f"got shape {tuple(features.shape)}"
        )
    if features.shape[0] == 0:
        raise ValueError("empty bag: a MIL head needs at least one instance (got N=0)")
    if features.shape[1] != in_dim:
        raise ValueError(
            f"instance features have size {features.shape[1]}, but the head was built for "
            f"in_dim={in_dim}"
        )


def projection(in_dim: int, hidden_dim: int | None, dropout: float) -> tuple[nn.Module, int]:
    """The optional per-instance projection ``Linear -> ReLU -> Dropout`` in front of a head.

    Args:
        in_dim: instance feature size.
        hidden_dim: projected size, or ``None`` for no projection (identity).
        dropout: dropout probability after the projection.

    Returns:
        The module and the feature size it outputs.
    """
    if hidden_dim is None:
        return nn.Identity(), in_dim
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.ReLU()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers), hidden_dim


class MILHead(nn.Module):
    """Base class of the MIL heads: validates the bag and defines the bag loss.

    Subclasses implement :meth:`pool`; ``forward`` checks the bag first, so every head
    refuses an empty bag with the same clear error.
    """

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        if in_dim < 1 or num_classes < 1:
            raise ValueError(f"in_dim and num_classes must be >= 1, got {in_dim}, {num_classes}")
        self.in_dim = in_dim
        self.num_classes = num_classes

    def forward(self, features: Tensor, label: Tensor | int | None = None) -> MILOutput:
        """Pool one bag.

        Args:
            features: instance features, shape ``(N, in_dim)``.
            label: the bag's class index; heads with an instance loss need it to compute it.

        Returns:
            The head's :class:`MILOutput`.
        """
        check_bag(features, self.in_dim)
        if label is not None:
            label = torch.as_tensor(label, device=features.device).reshape(())
        return self.pool(features, label)

    def pool(self, features: Tensor, label: Tensor | None) -> MILOutput:  # pragma: no cover
        raise NotImplementedError

    def loss(self, out: MILOutput, label: Tensor | int) -> Tensor:
        """The training loss of one bag: cross-entropy of the bag logits.

        Args:
            out: the head's output for the bag.
            label: the bag's class index.

        Returns:
            A scalar loss.
        """
        target = torch.as_tensor(label, device=out.logits.device).reshape(1).long()
        return F.cross_entropy(out.logits.unsqueeze(0), target)
