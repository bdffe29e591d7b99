"""CLAM: clustering-constrained attention MIL (Lu et al., Nature Biomedical Engineering 2021).

Gated attention pooling (single branch, ``clam_sb``, or one branch per class, ``clam_mb``)
plus an instance-level clustering loss: per class, an instance classifier learns to separate
the ``B`` most attended instances (pseudo-label 1, "in class") from the ``B`` least attended
(pseudo-label 0) of bags of that class. With ``subtyping=True`` the most attended instances of
the other classes' branches are also pseudo-labelled 0. The training loss is
``bag_weight * bag_ce + (1 - bag_weight) * instance_loss``.

Bags smaller than ``2B`` use ``B = N // 2`` so top and bottom never overlap; a bag of one
instance has no instance loss (it is 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gigastream.mil.attention import AttentionNet
from gigastream.mil.base import MILHead, MILOutput, projection

#: Named sizes: ``preset -> (hidden_dim, attn_dim, dropout)``.
PRESETS: dict[str, tuple[int, int, float]] = {"paper": (512, 256, 0.25)}


class CLAM(MILHead):
    """CLAM head (registered as ``clam_sb`` and, with ``multi_branch=True``, ``clam_mb``).

    Args:
        in_dim: instance feature size.
        num_classes: number of bag classes.
        hidden_dim: optional per-instance projection size (``None``: none).
        attn_dim: size of the hidden (gated) attention layer.
        dropout: dropout after the projection and in the attention network.
        multi_branch: one attention branch and one bag classifier per class.
        instance_samples: ``B``, the number of top and of bottom attended instances that
            get pseudo-labels.
        bag_weight: weight of the bag loss; the instance loss gets ``1 - bag_weight``.
        subtyping: also pseudo-label the top instances of the other classes as negatives.
        preset: ``"paper"`` sets CLAM's published sizes (Lu et al. 2021, ``size_arg="small"``:
            projection to 512, attention width 256, dropout 0.25), overriding
            ``hidden_dim``, ``attn_dim`` and ``dropout``; ``None`` keeps the arguments.

    Example:
        >>> head = CLAM(in_dim=32, num_classes=2, multi_branch=True)
        >>> out = head(torch.randn(20, 32), label=1)
        >>> out.attention.shape, out.instance_loss.shape
        (torch.Size([2, 20]), torch.Size([]))
        >>> loss = head.loss(out, 1)
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden_dim: int | None = None,
        attn_dim: int = 128,
        dropout: float = 0.0,
        multi_branch: bool = False,
        instance_samples: int = 8,
        bag_weight: float = 0.7,
        subtyping: bool = False,
        preset: str | None = None,
    ) -> None:
        super().__init__(in_dim, num_classes)
        if preset is not None:
            if preset not in PRESETS:
                raise ValueError(f"unknown CLAM preset {preset!r}; available: {', '.join(PRESETS)}")
            hidden_dim, attn_dim, dropout = PRESETS[preset]
        if instance_samples < 1:
            raise ValueError(f"instance_samples must be >= 1, got {instance_samples}")
        if not 0.0 <= bag_weight <= 1.0:
            raise ValueError(f"bag_weight must be in [0, 1], got {bag_weight}")
        self.multi_branch = multi_branch
        self.instance_samples = instance_samples
        self.bag_weight = bag_weight
        self.subtyping = subtyping
        self.fc, dim = projection(in_dim, hidden_dim, dropout)
        branches = num_classes if multi_branch else 1
        self.attention = AttentionNet(dim, attn_dim, branches=branches, gated=True, dropout=dropout)
        if multi_branch:
            self.classifiers = nn.ModuleList(nn.Linear(dim, 1) for _ in range(num_classes))
        else:
            self.classifiers = nn.ModuleList([nn.Linear(dim, num_classes)])
        self.instance_classifiers = nn.ModuleList(nn.Linear(dim, 2) for _ in range(num_classes))

    def pool(self, features: Tensor, label: Tensor | None) -> MILOutput:
        hidden = self.fc(features)  # (N, dim)
        attention = torch.softmax(self.attention(hidden), dim=1)  # (branches, N)
        embedding = attention @ hidden  # (branches, dim)
        if self.multi_branch:
            logits = torch.cat([clf(embedding[c]) for c, clf in enumerate(self.classifiers)])
        else:
            logits = self.classifiers[0](embedding[0])  # (num_classes,)
            attention, embedding = attention[0], embedding[0]  # (N,), (dim,)
        instance_loss = None if label is None else self._instance_loss(hidden, attention, label)
        return MILOutput(logits, attention, embedding, instance_loss)

    def _instance_loss(self, hidden: Tensor, attention: Tensor, label: Tensor) -> Tensor:
        n = hidden.shape[0]
        if n < 2:
            return hidden.sum() * 0.0  # no pseudo-labels in a one-instance bag
        scores = attention.detach().reshape(-1, n)  # (branches, N)
        losses = []
        for c, clf in enumerate(self.instance_classifiers):
            branch = scores[c if self.multi_branch else 0]
            if c == int(label):
                k = min(self.instance_samples, n // 2)
                top = torch.topk(branch, k).indices
                bottom = torch.topk(-branch, k).indices
                index = torch.cat([top, bottom])
                target = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(hidden.device)
            elif self.subtyping:
                k = min(self.instance_samples, n)
                index = torch.topk(branch, k).indices
                target = torch.zeros(k, dtype=torch.long, device=hidden.device)
            else:
                continue
            losses.append(F.cross_entropy(clf(hidden[index]), target))
        return torch.stack(losses).mean()

    def loss(self, out: MILOutput, label: Tensor | int) -> Tensor:
        """``bag_weight * bag cross-entropy + (1 - bag_weight) * instance loss``.

        Args:
            out: the head's output, computed with ``label`` so it has an instance loss.
            label: the bag's class index.

        Returns:
            A scalar loss.
        """
        bag = super().loss(out, label)
        if out.instance_loss is None:
            return bag
        return self.bag_weight * bag + (1.0 - self.bag_weight) * out.instance_loss
