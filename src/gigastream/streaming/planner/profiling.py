"""Shapes, activation sizes and FLOPs of a trunk's units, from a forward pass on ``meta``.

The ``meta`` device has shapes but no data: profiling takes no memory and no time, so a
trunk is profiled at any input size (65536² and beyond) on any machine.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Profile:
    """One unit at one input shape."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    activation_elems: int  # elements of all leaf outputs for the whole input (graph size proxy)
    flops: float  # multiply-adds x2 of convolutions for the whole input


def profile_modules(modules: Sequence[nn.Module], input_shape: Sequence[int]) -> list[Profile]:
    """Shapes, activation sizes and FLOPs of consecutive modules, from a forward pass on ``meta``."""
    profiles = []
    x = torch.empty(tuple(input_shape), device="meta")
    for module in modules:
        meta = copy.deepcopy(module).to(device="meta", dtype=torch.float32)
        stats = {"elems": 0, "flops": 0.0}

        def hook(mod, inputs, output, stats=stats):
            if isinstance(output, torch.Tensor):
                stats["elems"] += output.numel()
                if isinstance(mod, nn.Conv2d):
                    k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
                    stats["flops"] += 2.0 * output.numel() * k

        handles = [m.register_forward_hook(hook) for m in meta.modules() if not list(m.children())]
        with torch.no_grad():
            y = meta(x)
        for h in handles:
            h.remove()
        profiles.append(Profile(tuple(x.shape), tuple(y.shape), stats["elems"], stats["flops"]))
        x = torch.empty(y.shape, device="meta")
    return profiles
