"""CLAM: clustering-constrained attention MIL (Lu et al., Nature Biomedical Engineering 2021).

Gated attention pooling (single branch, ``clam_sb``, or one branch per class, ``clam_mb``)
plus an instance-level clustering loss: per class, an instance classifier learns to separate
the ``B`` most attended instances (pseudo-label 1, "in class") from the ``B`` least attended
(pseudo-label 0) of bags of that class. With ``subtyping=True`` the most attended instances of
the other classes' branches are also pseudo-labelled 0. The training loss is
``bag_weight * bag_ce + (1 - bag_weight) * instance_loss``.

``instance_weight > 0`` adds a second, dense instance loss (not in the CLAM paper): a linear
classifier on every instance is trained to predict its bag's class, the loss of the
``topk`` recipe (:class:`~gigastream.mil.topk.TopKMIL`). The clustering loss trains only the
instances attention already picks, which from random initialisation are not yet the
lesion; the dense loss teaches the shared projection (and, in an end-to-end model, the
trunk) what differs between the classes' slides from the first step.

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
        instance_weight: weight of the dense instance loss (every instance trained to predict
            its bag's class; cross-entropy, mean over the bag), added to the loss above
            (0: off, CLAM as published; the classifier is then not built).
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
        instance_weight: float = 0.0,
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
        if instance_weight < 0:
            raise ValueError(f"instance_weight must be >= 0, got {instance_weight}")
        self.multi_branch = multi_branch
        self.instance_samples = instance_samples
        self.bag_weight = bag_weight
        self.subtyping = subtyping
        self.instance_weight = instance_weight
        self.fc, dim = projection(in_dim, hidden_dim, dropout)
        branches = num_classes if multi_branch else 1
        self.attention = AttentionNet(dim, attn_dim, branches=branches, gated=True, dropout=dropout)
        if multi_branch:
            self.classifiers = nn.ModuleList(nn.Linear(dim, 1) for _ in range(num_classes))
        else:
            self.classifiers = nn.ModuleList([nn.Linear(dim, num_classes)])
        self.instance_classifiers = nn.ModuleList(nn.Linear(dim, 2) for _ in range(num_classes))
        if instance_weight > 0:  # only then: checkpoints without it keep loading
            self.dense_classifier = nn.Linear(dim, num_classes)

    def pool(self, features: Tensor, label: Tensor | None) -> MILOutput:
        hidden = self.fc(features)  # (N, dim)
        attention = torch.softmax(self.attention(hidden), dim=1)  # (branches, N)
        embedding = attention @ hidden  # (branches, dim)
        if self.multi_branch:
            logits = torch.cat([clf(embedding[c]) for c, clf in enumerate(self.classifiers)])
        else:
            logits = self.classifiers[0](embedding[0])  # (num_classes,)
            attention, embedding = attention[0], embedding[0]  # (N,), (dim,)
        instance_loss = dense_loss = None
        if label is not None:
            instance_loss = self._instance_loss(hidden, attention, label)
            if self.instance_weight > 0:
                targets = label.long().expand(hidden.shape[0])  # (N,) the bag's class
                dense_loss = F.cross_entropy(self.dense_classifier(hidden), targets)
        return MILOutput(logits, attention, embedding, instance_loss, dense_loss=dense_loss)

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
        """``bag_weight * bag cross-entropy + (1 - bag_weight) * instance loss``, plus
        ``instance_weight * dense instance loss`` when that is on.

        Args:
            out: the head's output, computed with ``label`` so it has an instance loss.
            label: the bag's class index.

        Returns:
            A scalar loss.
        """
        bag = super().loss(out, label)
        if out.instance_loss is None:
            return bag
        loss = self.bag_weight * bag + (1.0 - self.bag_weight) * out.instance_loss
        if out.dense_loss is not None:
            loss = loss + self.instance_weight * out.dense_loss
        return loss
