"""Resampling on a global pixel grid, so that any crop of a resized image is exact.

A slide read at a target resolution is a *virtual image*: the level image resized by a
factor ``scale`` (source pixels per target pixel). Streaming reads that virtual image
tile by tile, so a tile must equal the same crop of the whole resized image. Library
resizers (PIL, ``torch.nn.functional.interpolate``) place their sample points relative
to the crop they are given, which breaks that. Here every target pixel ``j`` is computed
from its *global* position: its centre lies at source coordinate ``(j + 0.5) * scale``,
and it is a triangle-filter (anti-aliased linear) average of the source pixels within
``max(scale, 1)`` of that centre, as PIL's bilinear filter does for a whole image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AxisPlan:
    """How to compute ``length`` target pixels along one axis.

    Attributes:
        src_start: first source pixel (global coordinate) that the taps touch.
        src_stop: one past the last source pixel the taps touch.
        index: ``(length, taps)`` source indices, relative to ``src_start``.
        weight: ``(length, taps)`` float32 weights; each row sums to 1.
    """

    src_start: int
    src_stop: int
    index: np.ndarray
    weight: np.ndarray


def plan_axis(start: float, length: int, scale: float) -> AxisPlan:
    """Plan the resampling of target pixels ``start .. start + length`` along one axis.

    Args:
        start: global coordinate of the first target pixel (may be fractional).
        length: number of target pixels.
        scale: source pixels per target pixel (> 1 shrinks).

    Returns:
        The source window and the taps of every target pixel.

    Example:
        >>> plan_axis(0, 2, 2.0).src_stop
        5
    """
    support = max(scale, 1.0)
    centres = (start + np.arange(length) + 0.5) * scale  # (length,) source coordinates
    first = np.floor(centres - support).astype(np.int64)  # first tap of each target pixel
    taps = int(math.ceil(2 * support)) + 1
    src = first[:, None] + np.arange(taps)[None, :]  # (length, taps) global source index
    weight = np.clip(1.0 - np.abs(src + 0.5 - centres[:, None]) / support, 0.0, None)
    src_start = int(src[weight > 0].min()) if length else 0
    src_stop = int(src[weight > 0].max()) + 1 if length else 0
    weight /= weight.sum(axis=1, keepdims=True)
    index = np.clip(src - src_start, 0, max(src_stop - src_start - 1, 0))
    return AxisPlan(src_start, src_stop, index, weight.astype(np.float32))


def apply_axis(image: np.ndarray, plan: AxisPlan, axis: int) -> np.ndarray:
    """Apply a planned resampling along ``axis`` of ``image`` (float32 result).

    ``image`` must hold exactly the source pixels ``plan.src_start .. plan.src_stop``
    along ``axis``.
    """
    moved = np.moveaxis(image, axis, 0).astype(np.float32, copy=False)
    out = np.zeros((plan.index.shape[0], *moved.shape[1:]), dtype=np.float32)
    for tap in range(plan.index.shape[1]):
        w = plan.weight[:, tap]
        if not w.any():
            continue
        out += moved[plan.index[:, tap]] * w.reshape(-1, *([1] * (moved.ndim - 1)))
    return np.moveaxis(out, 0, axis)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Round a float image to uint8 (0..255)."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def downsample2(image: np.ndarray) -> np.ndarray:
    """Halve an ``(H, W, C)`` uint8 image by 2x2 averaging (odd edges replicate).

    Example:
        >>> downsample2(np.zeros((5, 4, 3), np.uint8)).shape
        (3, 2, 3)
    """
    h, w = image.shape[:2]
    if h % 2 or w % 2:
        image = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    acc = (
        image[0::2, 0::2].astype(np.uint16)
        + image[1::2, 0::2]
        + image[0::2, 1::2]
        + image[1::2, 1::2]
    )
    return ((acc + 2) // 4).astype(np.uint8)
