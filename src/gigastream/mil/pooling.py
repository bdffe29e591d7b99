"""Mean and max pooling MIL baselines (embedding-level pooling, as in Ilse et al. 2018), and
the fraction of instances called positive (a burden head for regression targets).

Their ``attention`` is the share of the bag embedding each instance contributes: ``1/N``
each for mean pooling (whose per-instance scores, ``instance_logits``, average to the bag's); for max pooling, the fraction of feature dimensions whose maximum an
instance attains (ties share the credit equally), so it sums to 1 and permutes with the bag.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gigastream.mil.base import MILHead, MILOutput, projection


class _PoolingMIL(MILHead):
    """Projection, a pooling of the instances, and a linear classifier.

    Args:
        in_dim: instance feature size.
        num_classes: number of bag classes.
        hidden_dim: optional per-instance projection size (``None``: none).
        dropout: dropout after the projection.
    """

    def __init__(
        self, in_dim: int, num_classes: int, hidden_dim: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__(in_dim, num_classes)
        self.fc, dim = projection(in_dim, hidden_dim, dropout)
        self.classifier = nn.Linear(dim, num_classes)

    def pool(self, features: Tensor, label: Tensor | None) -> MILOutput:
        hidden = self.fc(features)  # (N, dim)
        embedding, attention = self.reduce(hidden)  # (dim,), (N,)
        return MILOutput(self.classifier(embedding), attention, embedding, **self.extra(hidden))

    def extra(self, hidden: Tensor) -> dict[str, Tensor]:
        """More of the output than logits, attention and embedding (none)."""
        return {}

    def reduce(self, hidden: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError


class MeanPoolMIL(_PoolingMIL):
    """Mean of the (projected) instance features, then a linear classifier.

    Takes ``in_dim, num_classes, hidden_dim=None, dropout=0.0`` like every pooling head.

    Example:
        >>> import torch
        >>> MeanPoolMIL(8, 2)(torch.randn(4, 8)).attention
        tensor([0.2500, 0.2500, 0.2500, 0.2500])
    """

    def reduce(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        attention = hidden.new_full((hidden.shape[0],), 1.0 / hidden.shape[0])  # (N,)
        return hidden.mean(dim=0), attention

    def extra(self, hidden: Tensor) -> dict[str, Tensor]:
        """Each instance's own score (the classifier on its features): their mean is the
        bag's (the classifier is linear); a regression's instance loss trains them."""
        return {"instance_logits": self.classifier(hidden)}  # (N, num_classes)


class MaxPoolMIL(_PoolingMIL):
    """Feature-wise maximum of the (projected) instance features, then a linear classifier.

    Takes ``in_dim, num_classes, hidden_dim=None, dropout=0.0`` like every pooling head.

    Example:
        >>> import torch
        >>> MaxPoolMIL(8, 2)(torch.randn(4, 8)).logits.shape
        torch.Size([2])
    """

    def reduce(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        embedding = hidden.max(dim=0).values  # (dim,)
        winners = (hidden == embedding).to(hidden.dtype).detach()  # (N, dim), 1 where max
        share = winners / winners.sum(dim=0, keepdim=True)  # ties split each feature's credit
        return embedding, share.mean(dim=1)  # (dim,), (N,)


class FractionMIL(MILHead):
    """The fraction of instances called positive: a burden head (``fraction``).

    Every instance gets a score ``z_i`` per class (a linear instance classifier on the
    optionally projected features); the bag's output is ``scale * mean_i sigmoid(z_i) +
    offset`` per class (``scale`` and ``offset`` learned, from 4 and -2: a share from 0 to 1
    spans -2 to 2, the range of a standardised target, so the output need not first grow to
    it). For a regression
    of a lesion burden the mean is the share of instances called lesion; the instance
    classifier is trained by the regression's ``positive`` instance loss
    (:class:`~gigastream.train.config.TargetConfig`: every instance of a slide whose value
    is above ``positive_above`` as positive). ``attention`` is each instance's share of the
    called fraction (uniform when none is called).

    Example:
        >>> import torch
        >>> out = FractionMIL(8, 1)(torch.randn(5, 8))
        >>> out.logits.shape, out.instance_logits.shape
        (torch.Size([1]), torch.Size([5, 1]))
    """

    def __init__(
        self, in_dim: int, num_classes: int, hidden_dim: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__(in_dim, num_classes)
        self.fc, dim = projection(in_dim, hidden_dim, dropout)
        self.instance_classifier = nn.Linear(dim, num_classes)
        self.scale = nn.Parameter(torch.full((num_classes,), 4.0))
        self.offset = nn.Parameter(torch.full((num_classes,), -2.0))

    def pool(self, features: Tensor, label: Tensor | None) -> MILOutput:
        scores = self.instance_classifier(self.fc(features))  # (N, C)
        called = torch.sigmoid(scores)
        fraction = called.mean(dim=0)  # (C,)
        share = called.sum(dim=1)
        attention = (share + 1e-12) / (share + 1e-12).sum()  # (N,)
        return MILOutput(
            self.scale * fraction + self.offset, attention, fraction, instance_logits=scores
        )
