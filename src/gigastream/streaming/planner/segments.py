"""Cutting a trunk into segments by rule: at its stages, nowhere, or before named children.

These are *fixed* cuts, known without an input shape. The cuts that
:class:`~gigastream.streaming.module.StreamingModule` makes by default
(``segments="auto"``) are *planned* per input shape by
:func:`~gigastream.streaming.planner.plan_trunk`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from gigastream.streaming.geometry import Geometry, StreamingError, describe


@dataclass
class Segment:
    """Consecutive top-level children of the trunk, run as one unit."""

    names: list[str]
    module: nn.Module
    geometry: Geometry | None  # None when the segment cannot be streamed (must be kept)


def stage_cuts(
    units: Sequence[tuple[str, nn.Module]], geometries: Sequence[Geometry] | None = None
) -> list[int]:
    """Indices of the units that begin a stage: every unit after the first that is itself a
    container with stride > 1 (for a torchvision ResNet: stem+layer1 | layer2 | layer3 | layer4).

    Args:
        units: ``(name, module)`` pairs, the trunk's top-level children.
        geometries: each unit's geometry (default: :func:`describe`; a unit whose geometry
            is unknown begins no stage).
    """
    cuts = []
    for i, (name, module) in enumerate(units):
        if i == 0 or not list(module.children()):
            continue
        if geometries is not None:
            geometry = geometries[i]
        else:
            try:
                geometry = describe(module, name)
            except StreamingError:
                continue
        if geometry.stride != (1, 1):
            cuts.append(i)
    return cuts


def split_segments(trunk: nn.Module, cuts: str | Sequence[str] | None = "stages") -> list[Segment]:
    """Cut a trunk into segments.

    Args:
        trunk: the trunk; only an ``nn.Sequential`` can be cut, anything else is one segment.
        cuts: ``"stages"`` cuts before every stage (:func:`stage_cuts`); ``None`` or
            ``"none"`` keeps one segment; a list of child names cuts before each.

    Example:
        >>> import torchvision
        >>> trunk = nn.Sequential(*list(torchvision.models.resnet18().children())[:-2]).eval()
        >>> [s.names for s in split_segments(trunk, "stages")]
        [['0', '1', '2', '3', '4'], ['5'], ['6'], ['7']]
    """
    if not isinstance(trunk, nn.Sequential):
        return [Segment([type(trunk).__name__], trunk, describe(trunk))]
    children = list(trunk.named_children())
    if not children:
        raise StreamingError("the trunk is an empty nn.Sequential: there is nothing to stream")
    names = [n for n, _ in children]
    if cuts is None or cuts == "none":
        cut_set: set[str] = set()
    elif cuts == "stages":
        cut_set = {names[i] for i in stage_cuts(children)}
    elif isinstance(cuts, str):
        raise StreamingError(
            f"split_segments cuts must be 'stages', 'none' or a list of child names, got {cuts!r}"
            + (
                " ('auto' cuts are planned per input shape: StreamingModule(segments='auto'))"
                if cuts == "auto"
                else ""
            )
        )
    else:
        cut_set = set(cuts)
        unknown = cut_set - set(names)
        if unknown:
            raise StreamingError(
                f"cannot cut the trunk before {sorted(unknown)}: its top-level children are {names}"
            )
    groups: list[list[tuple[str, nn.Module]]] = [[]]
    for n, c in children:
        if n in cut_set and groups[-1]:
            groups.append([])
        groups[-1].append((n, c))
    segments = []
    for g in groups:
        module = g[0][1] if len(g) == 1 else nn.Sequential(OrderedDict(g))
        geometry = Geometry.chain(*(describe(c, n) for n, c in g))
        segments.append(Segment([n for n, _ in g], module, geometry))
    return segments
