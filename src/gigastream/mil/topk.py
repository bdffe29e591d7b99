"""Top-k instance-score pooling: the bag score of a class is the mean of its k highest instance scores.

Instance-level MIL in the style of WELDON/CHOWDER (Durand et al. 2016; Courtiol et al.
2018) and of Campanella et al. (Nature Medicine 2019, max pooling, ``k = 1``): a small
classifier scores every instance; the bag logit of class ``c`` is the mean of the ``k``
largest instance logits of class ``c``. Where a positive bag differs from a negative one
only in a few per cent of its instances (a small lesion on a slide), attention pooling
starts uniform and dilutes them; top-k pooling sends the gradient straight to the most
suspicious instances from the first step.

The ``attention`` of the output is a heatmap of instance evidence that sums to 1:
``softmax`` over instances of the evidence for class ``attention_class`` (default: the
last class, "positive" in a binary task; the margin ``s_i`` with two classes) divided by
``temperature``.

Example:
    >>> import torch
    >>> head = TopKMIL(in_dim=16, num_classes=2, k=4)
    >>> out = head(torch.randn(100, 16))
    >>> out.logits.shape, out.attention.shape, round(float(out.attention.sum()), 4)
    (torch.Size([2]), torch.Size([100]), 1.0)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gigastream.mil.base import MILHead, MILOutput, projection


class TopKMIL(MILHead):
    """Per-instance classifier, bag logit per class = mean of the top-k instance logits.

    Args:
        in_dim: instance feature size.
        num_classes: number of bag classes.
        k: instances averaged per class (``k = 1``: max pooling); a bag with fewer than
            ``k`` instances averages all of them.
        hidden_dim: optional per-instance projection ``Linear-ReLU(-Dropout)`` size.
        dropout: dropout after the projection.
        attention_class: class whose instance logits make the ``attention`` heatmap
            (``-1``: the last class).
        temperature: softmax temperature of the ``attention`` heatmap.
        instance_weight: weight of the instance loss in :meth:`loss`: every instance is
            trained to predict its bag's label (cross-entropy of the instance logits,
            mean over the bag). Witness instances occur only in positive bags while
            ordinary ones occur in both, so this teaches the instance classifier what
            differs, including when the top-k are not yet the witnesses (0: off).
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        k: int = 8,
        hidden_dim: int | None = 128,
        dropout: float = 0.0,
        attention_class: int = -1,
        temperature: float = 1.0,
        instance_weight: float = 0.0,
    ) -> None:
        super().__init__(in_dim, num_classes)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not -num_classes <= attention_class < num_classes:
            raise ValueError(
                f"attention_class must index one of {num_classes} classes, got {attention_class}"
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.k = k
        self.attention_class = attention_class
        self.temperature = temperature
        if instance_weight < 0:
            raise ValueError(f"instance_weight must be >= 0, got {instance_weight}")
        self.instance_weight = instance_weight
        self.fc, dim = projection(in_dim, hidden_dim, dropout)
        self.classifier = nn.Linear(dim, num_classes)

    def instance_logits(self, features: Tensor) -> Tensor:
        """Per-instance class scores ``(N, num_classes)`` of a bag ``(N, in_dim)``."""
        return self.classifier(self.fc(features))

    def pool(self, features: Tensor, label: Tensor | None) -> MILOutput:
        hidden = self.fc(features)  # (N, dim)
        scores = self.classifier(hidden)  # (N, num_classes)
        k = min(self.k, scores.shape[0])
        if self.num_classes == 2:  # one evidence score per instance: the logit margin
            margin = scores[:, 1] - scores[:, 0]  # (N,)
            top, index = margin.topk(k)  # (k,)
            bag = top.mean()
            logits = torch.stack([-bag / 2, bag / 2])  # (2,), softmax gives sigmoid(bag)
            evidence = margin if self.attention_class in (1, -1) else -margin
            chosen = index
        else:
            top, index = scores.topk(k, dim=0)  # (k, num_classes) each
            logits = top.mean(dim=0)  # (num_classes,)
            evidence = scores[:, self.attention_class]  # (N,)
            chosen = index[:, self.attention_class]
        attention = (evidence / self.temperature).softmax(dim=0)  # (N,)
        embedding = hidden[chosen].mean(dim=0)  # (dim,)
        instance_loss = None
        if label is not None and self.instance_weight > 0:
            targets = label.long().expand(scores.shape[0])  # (N,) the bag label
            instance_loss = F.cross_entropy(scores, targets)
        return MILOutput(logits, attention, embedding, instance_loss)

    def loss(self, out: MILOutput, label: Tensor | int) -> Tensor:
        """Bag cross-entropy plus ``instance_weight`` times the instance loss (if computed)."""
        loss = super().loss(out, label)
        if out.instance_loss is not None:
            loss = loss + self.instance_weight * out.instance_loss
        return loss
