"""What a synthetic slide's manifest ``label`` is (``SynthConfig.target``).

- ``class``: ``positive`` (the slide has lesions) or ``negative``: the binary task.
- ``subtype``: ``negative``, or the lesion subtype of a positive slide (``subtype_a``,
  ``subtype_b``, ...; every lesion of a slide has its subtype; the positive slides are dealt
  to the subtypes in turn, so they are balanced): a multi-class task.
- ``lesion_count``: the number of lesions (0 on a negative slide): a regression target.
- ``lesion_area``: the percentage of the slide's tissue that its lesions cover (0 on a
  negative slide): a regression target, the lesion burden.

Example:
    >>> from gigastream.wsi.synth import Lesion, SynthConfig
    >>> slide_label(SynthConfig(target="subtype"), [Lesion(10, 10, 4.0, subtype=1)], 0.5)
    'subtype_b'
    >>> slide_label(SynthConfig(target="lesion_count"), [Lesion(10, 10, 4.0)] * 3, 0.5)
    '3'
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gigastream.wsi.synth import Lesion, SynthConfig

#: ``SynthConfig.target``: what the manifest's label is.
TARGETS = ("class", "subtype", "lesion_count", "lesion_area")


def check_target(target: str, subtypes: int) -> None:
    """ValueError naming a target that is not one of :data:`TARGETS`, or a subtype count
    outside 2-26."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if not 2 <= subtypes <= len(string.ascii_lowercase):
        raise ValueError(f"subtypes must be in [2, 26], got {subtypes}")


def subtype_name(subtype: int) -> str:
    """``subtype_a`` for subtype 0, ``subtype_b`` for 1, ..."""
    return f"subtype_{string.ascii_lowercase[subtype]}"


def slide_subtypes(config: SynthConfig, positives: Sequence[int]) -> dict[int, int]:
    """The lesion subtype of each positive slide index (``target: subtype``; otherwise
    every slide's lesions are subtype 0): the positives in a seeded order, dealt to the
    subtypes in turn."""
    if config.target != "subtype":
        return {}
    order = np.random.default_rng([config.seed, 5]).permutation(len(positives))
    return {int(positives[i]): rank % config.subtypes for rank, i in enumerate(order)}


def slide_label(config: SynthConfig, lesions: Sequence[Lesion], tissue_fraction: float) -> str:
    """The manifest label of a slide with ``lesions`` whose tissue covers
    ``tissue_fraction`` of its area (see the module docstring)."""
    if config.target == "class":
        return "positive" if lesions else "negative"
    if config.target == "subtype":
        return subtype_name(lesions[0].subtype) if lesions else "negative"
    if config.target == "lesion_count":
        return str(len(lesions))
    tissue_px = max(tissue_fraction, 1e-9) * config.size**2
    lesion_px = sum(math.pi * lesion.radius**2 for lesion in lesions)
    return f"{100.0 * lesion_px / tissue_px:.4f}"


__all__ = ["TARGETS", "check_target", "slide_label", "slide_subtypes", "subtype_name"]
