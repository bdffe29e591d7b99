"""A small MIL training loop: one bag at a time, gradients accumulated over ``bags_per_step``.

Works with any instance encoder, any registered MIL head and any strategy of
:mod:`gigastream.train.mil_strategies`. Bags come from any sequence of ``(bag, label)``
pairs with ``bag`` of shape ``(N, *instance_shape)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn
from tqdm.auto import tqdm

from gigastream.mil.base import MILHead
from gigastream.train.mil_strategies import BagEncoder

logger = logging.getLogger(__name__)

Bags = Sequence[tuple[Tensor, int]]


@dataclass
class EpochStats:
    """What one training epoch measured.

    Attributes:
        loss: mean training loss per bag.
        seconds: wall time of the training steps (forward, backward, optimiser).
        bags: number of bags trained on.
    """

    loss: float
    seconds: float
    bags: int


def train_epoch(
    bag_encoder: BagEncoder, head: MILHead, bags: Bags, optimizer: torch.optim.Optimizer,
    *, bags_per_step: int = 1, generator: torch.Generator | None = None,
    order: Sequence[int] | None = None, device: torch.device | str = "cpu",
    progress: bool = True, description: str = "train",
) -> EpochStats:
    """Train for one pass over ``bags``.

    The loss of each bag is divided by ``bags_per_step`` and back-propagated at once (so at
    most one bag's graph is alive); the optimiser steps every ``bags_per_step`` bags and
    after the last bag, giving an effective batch of ``bags_per_step`` bags.

    Args:
        bag_encoder: the encoder wrapped in its training strategy.
        head: the MIL head.
        bags: ``(bag, label)`` pairs.
        optimizer: optimiser over the encoder's and head's parameters.
        bags_per_step: bags per optimiser step.
        generator: random source of the ``sample`` strategy.
        order: the order to visit the bags in (default: as given).
        device: where to compute.
        progress: show a tqdm progress bar.
        description: progress bar label.

    Returns:
        The epoch's :class:`EpochStats`.
    """
    if bags_per_step < 1:
        raise ValueError(f"bags_per_step must be >= 1, got {bags_per_step}")
    generator = generator if generator is not None else torch.Generator()
    order = list(order) if order is not None else list(range(len(bags)))
    bag_encoder.encoder.train()
    head.train()
    optimizer.zero_grad(set_to_none=True)
    total_loss, seconds = 0.0, 0.0
    bar = tqdm(order, desc=description, disable=not progress, leave=False, unit="bag")
    for step, i in enumerate(bar):
        bag, label = bags[i]
        bag = bag.to(device)
        start = time.perf_counter()
        features = bag_encoder.train_features(bag, generator)  # (N or k, D)
        out = head(features, label=label)
        loss = head.loss(out, label)
        (loss / bags_per_step).backward()
        if (step + 1) % bags_per_step == 0 or step + 1 == len(order):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - start
        total_loss += float(loss.detach())
        bar.set_postfix(loss=f"{total_loss / (step + 1):.4f}")
    return EpochStats(total_loss / max(1, len(order)), seconds, len(order))


@torch.no_grad()
def predict(bag_encoder: BagEncoder, head: MILHead, bags: Bags, *,
            device: torch.device | str = "cpu", progress: bool = False,
            description: str = "eval") -> np.ndarray:
    """Positive-class probabilities of every bag, using all of its instances.

    Args:
        bag_encoder: the encoder wrapped in its strategy (evaluation is chunked, no graph).
        head: the MIL head.
        bags: ``(bag, label)`` pairs.
        device: where to compute.
        progress: show a tqdm progress bar.
        description: progress bar label.

    Returns:
        ``(num_bags,)`` probabilities of class 1 (softmax of the logits).
    """
    bag_encoder.encoder.eval()
    head.eval()
    probs = []
    for i in tqdm(range(len(bags)), desc=description, disable=not progress, leave=False):
        bag, _ = bags[i]
        logits = head(bag_encoder.eval_features(bag.to(device))).logits  # (num_classes,)
        probs.append(float(torch.softmax(logits.double(), dim=0)[1]))
    return np.asarray(probs)


def bag_auc(labels: Sequence[int], probs: np.ndarray) -> float:
    """ROC AUC of bag predictions (NaN if only one class is present)."""
    if len(set(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(list(labels), probs))


def evaluate_auc(bag_encoder: BagEncoder, head: MILHead, bags: Bags, labels: Sequence[int],
                 **kwargs) -> float:
    """ROC AUC of the model on ``bags`` (see :func:`predict` for the keyword arguments)."""
    return bag_auc(labels, predict(bag_encoder, head, bags, **kwargs))


def model_parameters(*modules: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of several modules, each once."""
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        for p in module.parameters():
            if p.requires_grad:
                seen.setdefault(id(p), p)
    return list(seen.values())
