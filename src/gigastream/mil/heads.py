"""The MIL head registry: ``create_mil_head(name, in_dim, num_classes, **options)``.

Every registered head shares the interface of :class:`gigastream.mil.base.MILHead`:
``out = head(H)`` / ``head(H, label=y)`` for ``H`` of shape ``(N, in_dim)`` gives a
:class:`~gigastream.mil.base.MILOutput`, and ``head.loss(out, y)`` the training loss.

Registered heads: ``abmil`` and ``gated_abmil`` (Ilse et al. 2018), ``clam_sb`` and
``clam_mb`` (Lu et al. 2021), ``mean`` and ``max`` pooling, ``topk`` instance-score
pooling (:mod:`gigastream.mil.topk`), ``fraction`` (the share of instances called positive:
a burden head for regression).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from gigastream.mil.attention import AttentionMIL
from gigastream.mil.base import MILHead
from gigastream.mil.clam import CLAM
from gigastream.mil.pooling import FractionMIL, MaxPoolMIL, MeanPoolMIL
from gigastream.mil.topk import TopKMIL
from gigastream.registry import Registry

HeadFactory = Callable[..., MILHead]

_HEADS: Registry[HeadFactory] = Registry(
    "MIL head",
    {
        "abmil": functools.partial(AttentionMIL, gated=False),
        "gated_abmil": functools.partial(AttentionMIL, gated=True),
        "clam_sb": functools.partial(CLAM, multi_branch=False),
        "clam_mb": functools.partial(CLAM, multi_branch=True),
        "mean": MeanPoolMIL,
        "max": MaxPoolMIL,
        "fraction": FractionMIL,
        "topk": TopKMIL,
    },
)


def register_mil_head(name: str, factory: HeadFactory) -> None:
    """Add a head to the registry.

    Args:
        name: the registry name; must be new.
        factory: called as ``factory(in_dim, num_classes, **options)``, returns a
            :class:`~gigastream.mil.base.MILHead`.

    Raises:
        ValueError: if the name is taken.
    """
    _HEADS.register(name, factory)


def list_mil_heads() -> list[str]:
    """Names of the registered MIL heads, sorted.

    Example:
        >>> list_mil_heads()
        ['abmil', 'clam_mb', 'clam_sb', 'fraction', 'gated_abmil', 'max', 'mean', 'topk']
    """
    return _HEADS.names()


def create_mil_head(name: str, in_dim: int, num_classes: int, **options) -> MILHead:
    """Build a registered MIL head.

    Args:
        name: one of :func:`list_mil_heads`.
        in_dim: instance feature size ``D`` of the bags ``(N, D)`` it will pool.
        num_classes: number of bag classes.
        **options: head options, e.g. ``attn_dim``, ``hidden_dim``, ``dropout``; for CLAM
            also ``instance_samples``, ``bag_weight``, ``subtyping``.

    Returns:
        The head.

    Raises:
        ValueError: for an unknown name.

    Example:
        >>> import torch
        >>> head = create_mil_head("gated_abmil", in_dim=64, num_classes=2, attn_dim=32)
        >>> head(torch.randn(100, 64)).logits.shape
        torch.Size([2])
    """
    factory = _HEADS.get(name)
    try:
        return factory(in_dim, num_classes, **options)
    except TypeError as exc:  # an option the head does not take
        import inspect

        target = getattr(factory, "func", factory)
        accepted = [
            p
            for p in inspect.signature(target).parameters
            if p not in ("self", "in_dim", "num_classes")
        ]
        raise ValueError(
            f"MIL head {name!r} does not take these options {sorted(options)}: {exc}; "
            f"its options are {', '.join(accepted)}"
        ) from None
