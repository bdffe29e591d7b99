"""The cost model: device bytes and compute of every way a span of units can run.

A *span* is a candidate segment, units ``[start, stop)`` of the trunk. It can run

- ``keep``: normally, with its autograd graph (memory: all its activations; time: the
  ordinary cost, forward + backward = 3x the forward), or
- ``stream``: tile by tile without a graph, recomputed tile by tile in backward (memory:
  one tile's activations and gradients; time: 4x the forward times the tile-overlap
  factor, plus a per-tile overhead), with one option per tile grid.

The factors below are estimates. Memory: fitted on CPU, float32, torchvision ResNets; the
estimate is for tensors, not for the process (add ~0.5-1 GiB for the torch runtime). Time:
in multiply-add FLOPs; the per-tile and transfer terms are rough guesses that only break
ties between otherwise similar plans (unmeasured on GPU).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from gigastream.streaming.geometry import Geometry, StreamingError, describe
from gigastream.streaming.planner.profiling import Profile, profile_modules
from gigastream.streaming.planner.tiles import axis_stats, tiles_for_extent

GRAPH_FACTOR = 1.0  # bytes of saved tensors per byte of leaf outputs
WORK_FACTOR = 2.0  # a tile in backward holds its graph plus gradients of similar size
TILE_OVERHEAD_FLOPS = 2e8  # per tile and pass (launches, Python, slicing)
TRANSFER_FLOPS_PER_BYTE = 20.0  # host <-> device copies, mostly overlapped with compute
MAX_AUTO_OVERLAP = 2.5  # tile_size-only plans: deeper segments stream only below this overlap
EXTENT_RATIO = 1.25  # successive candidate tile extents differ by this factor


@dataclass
class Option:
    """One way to run a span, with its costs."""

    mode: str
    tiles: tuple[int, int]
    max_tile: tuple[int, int]
    overlap: float
    graph_bytes: int  # keep: whole graph; stream: one tile's graph
    work_bytes: int  # extra device bytes while the segment runs backward
    flops: float


@dataclass
class Span:
    """Units ``[start, stop)`` of the trunk at one input shape: a candidate segment."""

    names: list[str]
    geometry: Geometry
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    activation_elems: int
    flops: float
    max_unit_elems: int  # leaf outputs of the largest unit (a kept graph's backward work)


def _tile_extents(span: Span, max_extent: int | None) -> list[int]:
    """Candidate largest tile extents (segment-input pixels), from the whole map down to the
    receptive field, each ``EXTENT_RATIO`` below the one before; ``max_extent`` first, if given."""
    g = span.geometry
    in_hw = span.in_shape[-2:]
    min_ext = max(1, min(max(g.h.receptive_field, g.w.receptive_field), min(in_hw)))
    extents = []
    e = max(in_hw)
    while e >= min_ext:
        extents.append(e)
        e = int(e / EXTENT_RATIO)
    if max_extent is not None:
        extents = [max_extent] + [e for e in extents if e < max_extent]
    return extents


def _stream_option(
    span: Span, nh: int, nw: int, bytes_per_elem: int, max_overlap: float | None
) -> Option | None:
    """Streaming ``span`` on an ``nh`` x ``nw`` tile grid (None: more overlap than allowed)."""
    g = span.geometry
    in_hw, out_hw = span.in_shape[-2:], span.out_shape[-2:]
    batch, c_in, c_out = span.in_shape[0], span.in_shape[1], span.out_shape[1]
    full_graph = int(span.activation_elems * bytes_per_elem * GRAPH_FACTOR)
    th, sum_h = axis_stats(g.h, in_hw[0], out_hw[0], nh)
    tw, sum_w = axis_stats(g.w, in_hw[1], out_hw[1], nw)
    overlap = sum_h * sum_w / (in_hw[0] * in_hw[1])
    if max_overlap is not None and overlap > max_overlap:
        return None
    area = th * tw / (in_hw[0] * in_hw[1])
    tile_graph = int(full_graph * area)
    out_tile = -(-out_hw[0] // nh) * -(-out_hw[1] // nw)
    # the tile's input and its gradient, the owned output crop and its gradient
    tile_io = 2 * batch * bytes_per_elem * (c_in * th * tw + c_out * out_tile)
    flops = 4 * span.flops * overlap + 2 * nh * nw * TILE_OVERHEAD_FLOPS
    return Option(
        "stream",
        (nh, nw),
        (th, tw),
        overlap,
        tile_graph,
        int(WORK_FACTOR * tile_graph) + tile_io,
        flops,
    )


def span_options(
    span: Span,
    in_stride: int,
    bytes_per_elem: int,
    max_tile_image_px: int | None,
    allow_keep: bool,
    max_overlap: float | None,
) -> list[Option]:
    """The ways a segment can run: keep, or streamed with tile grids from one tile to the smallest."""
    full_graph = int(span.activation_elems * bytes_per_elem * GRAPH_FACTOR)
    options = []
    if allow_keep:
        options.append(
            # backward frees the graph unit by unit; gradients in flight ~ the largest unit's graph
            Option(
                "keep",
                (1, 1),
                tuple(span.in_shape[-2:]),
                1.0,
                full_graph,
                int(span.max_unit_elems * bytes_per_elem * GRAPH_FACTOR),
                3 * span.flops,
            )
        )
    g = span.geometry
    in_hw, out_hw = span.in_shape[-2:], span.out_shape[-2:]
    if min(out_hw) <= 0:
        return options
    cap = max_tile_image_px // in_stride if max_tile_image_px is not None else None
    seen = set()
    for ext in _tile_extents(span, cap):
        nh = tiles_for_extent(g.h, in_hw[0], out_hw[0], ext)
        nw = tiles_for_extent(g.w, in_hw[1], out_hw[1], ext)
        if nh is None or nw is None or (nh, nw) in seen:
            continue
        seen.add((nh, nw))
        option = _stream_option(span, nh, nw, bytes_per_elem, max_overlap)
        if option is not None:
            options.append(option)
    return options


@dataclass
class TrunkCosts:
    """A trunk at one input shape, as the search sees it: where it may be cut, the bytes of
    the feature map at every unit boundary, and the options of every span."""

    names: list[str]
    geometries: list[Geometry]
    profiles: list[Profile]
    boundaries: list[int]  # 0, the unit boundaries that may be cut, len(units)
    fixed: bool  # the cuts are given: every segment runs from one boundary to the next
    map_bytes: list[int]  # feature map at boundary i (0: the input, len(units): the output)
    spans: dict[tuple[int, int], Span]
    options: dict[tuple[int, int], list[Option]]
    bytes_per_elem: int
    input_requires_grad: bool
    lazy_input: bool

    @property
    def n_units(self) -> int:
        return len(self.names)

    @property
    def out_bytes(self) -> int:
        """The trunk's output map, alive on the device through the whole backward pass."""
        return self.map_bytes[self.n_units]

    @property
    def conventional_flops(self) -> float:
        return sum(3 * p.flops for p in self.profiles)

    def ends_from(self, j: int) -> list[int]:
        """Where a segment that starts at boundary ``j`` may end."""
        if self.fixed:
            return [self.boundaries[self.boundaries.index(j) + 1]]
        return [b for b in self.boundaries if b > j]

    def fixed_plan_bytes(self, mode: str, bounds: Sequence[int]) -> int:
        """Peak of running spans as kept graphs / as one-tile checkpoints (input held whole)."""
        profiles, map_bytes, bytes_per_elem = self.profiles, self.map_bytes, self.bytes_per_elem
        peak, stored = 0, 0
        for j, stop in itertools.pairwise(bounds):
            span_graph = int(
                sum(p.activation_elems for p in profiles[j:stop]) * bytes_per_elem * GRAPH_FACTOR
            )
            stored_j = 0 if (mode == "keep" and j > 0) else map_bytes[j]
            stored += stored_j + (span_graph if mode == "keep" else 0)
            grad_in = map_bytes[j] if (j > 0 or self.input_requires_grad) else 0
            unit = max(p.activation_elems for p in profiles[j:stop]) * bytes_per_elem * GRAPH_FACTOR
            work = int(unit) if mode == "keep" else int(WORK_FACTOR * span_graph)
            peak = max(peak, stored + map_bytes[stop] + grad_in + work + self.out_bytes)
        return peak


def _boundaries(cuts: str | Sequence[int], m: int) -> tuple[list[int], bool]:
    """The boundaries a plan may cut at, and whether it must cut at each of them."""
    if cuts == "planned":
        allowed = set(range(1, m))
        fixed = False
    else:
        allowed = set(int(c) for c in cuts)
        if not allowed <= set(range(1, m)):
            raise StreamingError(f"cut positions {sorted(allowed)} are not inside 1..{m - 1}")
        fixed = True
    return [0, *sorted(allowed), m], fixed


def _pointwise(geoms: Sequence[Geometry], profiles: Sequence[Profile], i: int) -> bool:
    """Whether unit ``i`` is element-wise (BatchNorm, ReLU: one input pixel per output pixel,
    same shape), so a cut before it saves nothing that a cut after it would not: the map is
    the same size and the unit costs next to nothing. Planned cuts skip such boundaries
    (a VGG's 21 boundaries become 8 and its plan search about 30x smaller)."""
    if not 0 < i < len(geoms):
        return False
    g = geoms[i]
    return (
        (g.h.stride, g.h.lo, g.h.hi) == (1, 0, 0)
        and (g.w.stride, g.w.lo, g.w.hi) == (1, 0, 0)
        and tuple(profiles[i].in_shape) == tuple(profiles[i].out_shape)
    )


def trunk_costs(
    units: Sequence[tuple[str, nn.Module]],
    input_shape: Sequence[int],
    *,
    geometries: Sequence[Geometry] | None,
    cuts: str | Sequence[int],
    bytes_per_elem: int,
    tile_size: int | None,
    memory_budget: int | str | None,
    input_requires_grad: bool,
    lazy_input: bool,
) -> TrunkCosts:
    """Profile ``units`` at ``input_shape`` and price every span that ``cuts`` allows (see
    :func:`~gigastream.streaming.planner.plan_trunk` for the arguments)."""
    m = len(units)
    names = [n for n, _ in units]
    geoms = list(geometries) if geometries is not None else [describe(mod, n) for n, mod in units]
    profiles = profile_modules([mod for _, mod in units], input_shape)
    boundaries, fixed = _boundaries(cuts, m)
    if not fixed:
        boundaries = [b for b in boundaries if not _pointwise(geoms, profiles, b)]
    map_bytes = [math.prod(p.in_shape) * bytes_per_elem for p in profiles] + [
        math.prod(profiles[-1].out_shape) * bytes_per_elem
    ]
    in_stride = [1]
    for g in geoms:
        in_stride.append(in_stride[-1] * g.h.stride)
    costs = TrunkCosts(
        names, geoms, profiles, boundaries, fixed, map_bytes, {}, {}, bytes_per_elem,
        input_requires_grad, lazy_input,
    )  # fmt: skip
    for j in boundaries[:-1]:
        for stop in costs.ends_from(j):
            costs.spans[(j, stop)] = Span(
                names[j:stop],
                Geometry.chain(*geoms[j:stop]),
                profiles[j].in_shape,
                profiles[stop - 1].out_shape,
                sum(p.activation_elems for p in profiles[j:stop]),
                sum(p.flops for p in profiles[j:stop]),
                max(p.activation_elems for p in profiles[j:stop]),
            )
    for (j, stop), span in costs.spans.items():
        costs.options[(j, stop)] = span_options(
            span,
            in_stride[j],
            bytes_per_elem,
            tile_size if j == 0 else None,
            # a lazy input is never whole on the device; a tile_size is a promise of tiles
            allow_keep=not ((lazy_input or tile_size is not None) and j == 0),
            max_overlap=MAX_AUTO_OVERLAP if (memory_budget is None and j > 0) else None,
        )
    return costs
