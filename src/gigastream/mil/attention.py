"""Attention-based MIL pooling (Ilse, Tomczak, Welling, ICML 2018).

For a bag of instance features ``h_1 .. h_N`` the attention weights are::

    a_i = softmax_i( w^T tanh(V h_i) )                       # "abmil"
    a_i = softmax_i( w^T (tanh(V h_i) * sigmoid(U h_i)) )    # "gated_abmil"

and the bag embedding ``z = sum_i a_i h_i`` goes through a linear classifier.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gigastream.mil.base import MILHead, MILOutput, projection


class AttentionNet(nn.Module):
    """Instance attention scores, optionally gated, with one or more branches.

    Args:
        in_dim: instance feature size.
        attn_dim: size of the hidden attention layer.
        branches: number of attention branches (one score per instance and branch).
        gated: use the gated form ``tanh(V h) * sigmoid(U h)``.
        dropout: dropout on the hidden attention layer.

    Example:
        >>> net = AttentionNet(in_dim=16, attn_dim=8, branches=2, gated=True)
        >>> net(torch.randn(5, 16)).shape
        torch.Size([2, 5])
    """

    def __init__(
        self,
        in_dim: int,
        attn_dim: int = 128,
        branches: int = 1,
        gated: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.value = nn.Linear(in_dim, attn_dim)
        self.gate = nn.Linear(in_dim, attn_dim) if gated else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.score = nn.Linear(attn_dim, branches)

    def forward(self, features: Tensor) -> Tensor:
        """Raw (pre-softmax) scores.

        Args:
            features: shape ``(N, in_dim)``.

        Returns:
            Scores of shape ``(branches, N)``.
        """
        hidden = torch.tanh(self.value(features))  # (N, attn_dim)
        if self.gate is not None:
            hidden = hidden * torch.sigmoid(self.gate(features))
        return self.score(self.dropout(hidden)).transpose(0, 1)  # (branches, N)


class AttentionMIL(MILHead):
    """Attention MIL head (registered as ``abmil`` and, with ``gated=True``, ``gated_abmil``).

    Args:
        in_dim: instance feature size.
        num_classes: number of bag classes.
        hidden_dim: optional per-instance projection size before pooling (``None``: none).
        attn_dim: size of the hidden attention layer.
        gated: gated attention.
        dropout: dropout after the projection and in the attention network.

    Example:
        >>> head = AttentionMIL(in_dim=32, num_classes=2, gated=True)
        >>> out = head(torch.randn(10, 32))
        >>> out.logits.shape, out.attention.shape
        (torch.Size([2]), torch.Size([10]))
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden_dim: int | None = None,
        attn_dim: int = 128,
        gated: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_dim, num_classes)
        self.fc, dim = projection(in_dim, hidden_dim, dropout)
        self.attention = AttentionNet(dim, attn_dim, branches=1, gated=gated, dropout=dropout)
        self.classifier = nn.Linear(dim, num_classes)

    def pool(self, features: Tensor, label: Tensor | None) -> MILOutput:
        hidden = self.fc(features)  # (N, dim)
        attention = torch.softmax(self.attention(hidden)[0], dim=0)  # (N,)
        embedding = attention @ hidden  # (dim,)
        return MILOutput(self.classifier(embedding), attention, embedding)
