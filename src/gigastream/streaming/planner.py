"""Planning a streamed run: segments, tiles, and which segments keep their graph.

A trunk (an ``nn.Sequential``) is cut at top-level layer boundaries into *segments*. Each
segment is either

- ``stream``: run tile by tile without a graph, recomputed tile by tile in backward
  (memory: its input map plus one tile's activations; time: about 4/3 of its ordinary
  cost times the tile-overlap factor), or
- ``keep``: run normally with its autograd graph (memory: all its activations; time: the
  ordinary cost).

The deep, low-resolution segments of a CNN are cheap to keep; the shallow, high-resolution
ones dominate memory and are streamed with small margins (the receptive field of a shallow
segment is small). The planner estimates peak memory and compute from the layers' shapes
(found with a forward pass on the ``meta`` device: no memory, no time) and picks the
fastest plan within the budget.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from gigastream.streaming.geometry import Geometry, StreamingError, describe
from gigastream.streaming.recompute import Piece

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1e3,
    "kb": 1e3,
    "m": 1e6,
    "mb": 1e6,
    "g": 1e9,
    "gb": 1e9,
    "t": 1e12,
    "tb": 1e12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(value: int | float | str) -> int:
    """``"4GiB"``, ``"512 MiB"``, ``"2e9"`` or a number of bytes -> bytes."""
    if isinstance(value, int | float):
        return int(value)
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", value)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read memory size {value!r}; write it like '4GiB' or '512MiB'")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


# ------------------------------------------------------------------------- tiles


def axis_bounds(out_size: int, n_tiles: int) -> list[int]:
    """Balanced partition of ``out_size`` output positions into ``n_tiles`` contiguous runs."""
    return [round(i * out_size / n_tiles) for i in range(n_tiles + 1)]


def axis_tiles(axis, in_size: int, out_size: int, n_tiles: int) -> list[tuple[int, int, int, int]]:
    """``(out_start, out_stop, in_start, in_stop)`` per tile along one axis."""
    bounds = axis_bounds(out_size, n_tiles)
    tiles = []
    for o0, o1 in itertools.pairwise(bounds):
        a, b = axis.input_span(o0, o1, in_size)
        tiles.append((o0, o1, a, b))
    return tiles


def make_pieces(
    geometry: Geometry, in_hw: tuple[int, int], out_hw: tuple[int, int], n_tiles: tuple[int, int]
) -> list[Piece]:
    """Tiles of a segment as pieces for :func:`~gigastream.streaming.recompute.piecewise_recompute`."""
    ys = axis_tiles(geometry.h, in_hw[0], out_hw[0], n_tiles[0])
    xs = axis_tiles(geometry.w, in_hw[1], out_hw[1], n_tiles[1])
    sh, sw = geometry.stride
    full = slice(None)
    pieces = []
    for o0, o1, a, b in ys:
        for p0, p1, c, d in xs:
            pieces.append(
                Piece(
                    in_index=(full, full, slice(a, b), slice(c, d)),
                    out_index=(full, full, slice(o0, o1), slice(p0, p1)),
                    crop=(
                        full,
                        full,
                        slice(o0 - a // sh, o1 - a // sh),
                        slice(p0 - c // sw, p1 - c // sw),
                    ),
                )
            )
    return pieces


# ------------------------------------------------------------------------- segments


@dataclass
class Segment:
    """Consecutive top-level children of the trunk, run as one unit."""

    names: list[str]
    module: nn.Module
    geometry: Geometry | None  # None when the segment cannot be streamed (must be kept)


def split_segments(trunk: nn.Module, cuts: str | Sequence[str] | None = "auto") -> list[Segment]:
    """Cut a trunk into segments.

    Args:
        trunk: the trunk; only an ``nn.Sequential`` can be cut, anything else is one segment.
        cuts: ``"auto"`` cuts before every top-level child that is itself a container with
            stride > 1 (for a torchvision ResNet: stem+layer1 | layer2 | layer3 | layer4);
            ``None`` or ``"none"`` keeps one segment; a list of child names cuts before each.
    """
    if not isinstance(trunk, nn.Sequential):
        return [Segment([type(trunk).__name__], trunk, describe(trunk))]
    children = list(trunk.named_children())
    if not children:
        raise StreamingError("the trunk is an empty nn.Sequential: there is nothing to stream")
    names = [n for n, _ in children]
    if cuts is None or cuts == "none":
        cut_set: set[str] = set()
    elif cuts == "auto":
        cut_set = set()
        for i, (n, c) in enumerate(children):
            if i == 0 or not list(c.children()):
                continue
            try:
                g = describe(c, n)
            except StreamingError:
                continue
            if g.stride != (1, 1):
                cut_set.add(n)
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


@dataclass
class _Profile:
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    activation_elems: int  # elements of all leaf outputs for the whole input (graph size proxy)
    flops: float  # multiply-adds x2 of convolutions for the whole input


def _profile_modules(modules: Sequence[nn.Module], input_shape: Sequence[int]) -> list[_Profile]:
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
        profiles.append(_Profile(tuple(x.shape), tuple(y.shape), stats["elems"], stats["flops"]))
        x = torch.empty(y.shape, device="meta")
    return profiles


# ------------------------------------------------------------------------- plans


@dataclass
class SegmentPlan:
    """How one segment runs. Tile sizes are in pixels of the segment's input map.

    Attributes:
        names: the trunk's top-level children in this segment.
        mode: ``"stream"`` (tile by tile, recomputed in backward) or ``"keep"`` (graph kept).
        span: ``[start, stop)`` indices of those children in the trunk.
        offload_input: the segment's input map and its gradient accumulator live in host
            memory; tiles are copied to the device on demand (via pinned staging on CUDA).
        est_graph_bytes: kept: the whole graph; streamed: one tile's graph.
        est_flops: forward + backward, including recomputation, overlap and per-tile overhead.
    """

    names: list[str]
    mode: str  # "stream" or "keep"
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    stride: tuple[int, int]
    receptive_field: tuple[int, int]
    tiles: tuple[int, int] = (1, 1)
    max_tile: tuple[int, int] = (0, 0)  # largest tile input (h, w), segment-input pixels
    overlap: float = 1.0  # sum of tile input areas / input area
    est_graph_bytes: int = 0
    est_flops: float = 0.0
    span: tuple[int, int] = (0, 0)
    offload_input: bool = False


@dataclass
class StreamingPlan:
    """The plan for one input shape; ``str(plan)`` is a table for logs.

    ``est_peak_bytes`` is the estimated peak of device tensor memory (no runtime);
    ``est_host_bytes`` the estimated peak of host memory held by offloaded maps and their
    gradient accumulators, within ``host_memory_budget`` (``None``: no limit was set).
    ``offloaded`` names the segments (by their first child) whose input map is in host memory.
    """

    input_shape: tuple[int, ...]
    segments: list[SegmentPlan]
    est_peak_bytes: int
    est_flops: float
    conventional_flops: float
    conventional_bytes: int
    checkpoint_bytes: int  # estimated peak of torch.utils.checkpoint on the same segments
    memory_budget: int | None = None
    offloaded: list[str] = field(default_factory=list)
    est_host_bytes: int = 0
    host_memory_budget: int | None = None
    bytes_per_elem: int = 4
    lazy_input: bool = False
    cuts: str = "planned"  # "planned" (the planner chose them) or "fixed" (given by the user)
    planning_seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"StreamingPlan for input {tuple(self.input_shape)}: est. peak "
            f"{format_bytes(self.est_peak_bytes)} (conventional {format_bytes(self.conventional_bytes)}"
            + (f", budget {format_bytes(self.memory_budget)}" if self.memory_budget else "")
            + f"), est. compute {self.est_flops / max(self.conventional_flops, 1):.2f}x conventional, "
            f"{len(self.segments)} segment(s), {self.cuts} cuts; host memory "
            f"{format_bytes(self.est_host_bytes)} (budget "
            + (
                format_bytes(self.host_memory_budget)
                if self.host_memory_budget is not None
                else "unlimited"
            )
            + ")"
        ]
        for s in self.segments:
            what = (
                f"stream {s.tiles[0]}x{s.tiles[1]} tiles <= {s.max_tile[0]}x{s.max_tile[1]} px, "
                f"overlap {s.overlap:.2f}"
                if s.mode == "stream"
                else "keep graph"
            )
            where = ", input in host memory" if s.offload_input else ""
            lines.append(
                f"  [{'+'.join(s.names)}] {tuple(s.in_shape)} -> {tuple(s.out_shape)}, "
                f"RF {s.receptive_field[0]}, stride {s.stride[0]}: {what}{where}, "
                f"graph {format_bytes(s.est_graph_bytes)}"
            )
        return "\n".join(lines)


# Factors of the cost model. Memory: fitted on CPU, float32, torchvision ResNets; the
# estimate is for tensors, not for the process (add ~0.5-1 GiB for the torch runtime).
# Time: in multiply-add FLOPs; the per-tile and transfer terms are rough guesses that only
# break ties between otherwise similar plans (unmeasured on GPU).
_GRAPH_FACTOR = 1.0  # bytes of saved tensors per byte of leaf outputs
_WORK_FACTOR = 2.0  # a tile in backward holds its graph plus gradients of similar size
_TILE_OVERHEAD_FLOPS = 2e8  # per tile and pass (launches, Python, slicing)
_TRANSFER_FLOPS_PER_BYTE = 20.0  # host <-> device copies, mostly overlapped with compute
_MAX_AUTO_OVERLAP = 2.5  # tile_size-only plans: deeper segments stream only below this overlap
_DEFAULT_FRACTION = (
    0.3  # default budget (tile_size only): this fraction of the conventional estimate
)
_EXTENT_RATIO = 1.25  # successive candidate tile extents differ by this factor
_EXACT_TILES = 64  # up to this many tiles per axis, tile extents are computed tile by tile
# a plan that keeps less in host memory is preferred unless its estimated compute exceeds the
# fastest plan's by more than this fraction (host memory is shared with the rest of the
# process, and transfers are only roughly priced by _TRANSFER_FLOPS_PER_BYTE)
_OFFLOAD_TOLERANCE = 0.05


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _axis_const(axis) -> int:
    """Input extent of an interior tile owning one output, minus one stride."""
    return axis.hi + 1 - (axis.lo // axis.stride) * axis.stride


def axis_stats(axis, in_size: int, out_size: int, n_tiles: int) -> tuple[int, int]:
    """(largest tile extent, sum of tile extents) along one axis; exact up to 64 tiles,
    a tight upper bound beyond (the few clipped border tiles are counted as interior)."""
    if n_tiles <= _EXACT_TILES:
        ext = [b - a for *_, a, b in axis_tiles(axis, in_size, out_size, n_tiles)]
        return max(ext), sum(ext)
    s, k = axis.stride, _axis_const(axis)
    longest = -(-out_size // n_tiles)
    return min(in_size, (longest - 1) * s + k), (out_size - n_tiles) * s + n_tiles * k


def tiles_for_extent(axis, in_size: int, out_size: int, max_extent: int) -> int | None:
    """Fewest tiles along an axis whose input extents are all ``<= max_extent`` (None: impossible)."""
    if out_size <= 0:
        return None
    if max_extent >= in_size:
        return 1
    s, k = axis.stride, _axis_const(axis)
    per_tile = (max_extent - k) // s + 1  # outputs an interior tile of this extent can own
    if per_tile < 1:
        # only tiles clipped by the image border could be this small
        n = out_size if out_size <= _EXACT_TILES else None
        if n is None or axis_stats(axis, in_size, out_size, n)[0] > max_extent:
            return None
        per_tile = 1
    n = min(out_size, -(-out_size // per_tile))
    if n > _EXACT_TILES:
        return n
    while n < out_size and axis_stats(axis, in_size, out_size, n)[0] > max_extent:
        n += 1
    if axis_stats(axis, in_size, out_size, n)[0] > max_extent:
        return None
    while n > 1 and axis_stats(axis, in_size, out_size, n - 1)[0] <= max_extent:
        n -= 1  # border tiles are clipped: sometimes fewer suffice
    return n


@dataclass
class _Option:
    mode: str
    tiles: tuple[int, int]
    max_tile: tuple[int, int]
    overlap: float
    graph_bytes: int  # keep: whole graph; stream: one tile's graph
    work_bytes: int  # extra device bytes while the segment runs backward
    flops: float


@dataclass
class _Span:
    names: list[str]
    geometry: Geometry
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    activation_elems: int
    flops: float
    max_unit_elems: int  # leaf outputs of the largest unit (a kept graph's backward work)


def _span_options(
    span: _Span,
    in_stride: int,
    bytes_per_elem: int,
    max_tile_image_px: int | None,
    allow_keep: bool,
    max_overlap: float | None,
) -> list[_Option]:
    """The ways a segment can run: keep, or streamed with tile grids from one tile to the smallest."""
    full_graph = int(span.activation_elems * bytes_per_elem * _GRAPH_FACTOR)
    options = []
    if allow_keep:
        options.append(
            # backward frees the graph unit by unit; gradients in flight ~ the largest unit's graph
            _Option(
                "keep",
                (1, 1),
                tuple(span.in_shape[-2:]),
                1.0,
                full_graph,
                int(span.max_unit_elems * bytes_per_elem * _GRAPH_FACTOR),
                3 * span.flops,
            )
        )
    g = span.geometry
    in_hw, out_hw = span.in_shape[-2:], span.out_shape[-2:]
    if min(out_hw) <= 0:
        return options
    batch, c_in, c_out = span.in_shape[0], span.in_shape[1], span.out_shape[1]
    min_ext = max(1, min(max(g.h.receptive_field, g.w.receptive_field), min(in_hw)))
    extents = []
    e = max(in_hw)
    while e >= min_ext:
        extents.append(e)
        e = int(e / _EXTENT_RATIO)
    if max_tile_image_px is not None:
        cap = max_tile_image_px // in_stride
        extents = [cap] + [e for e in extents if e < cap]
    seen = set()
    for ext in extents:
        nh = tiles_for_extent(g.h, in_hw[0], out_hw[0], ext)
        nw = tiles_for_extent(g.w, in_hw[1], out_hw[1], ext)
        if nh is None or nw is None or (nh, nw) in seen:
            continue
        seen.add((nh, nw))
        th, sum_h = axis_stats(g.h, in_hw[0], out_hw[0], nh)
        tw, sum_w = axis_stats(g.w, in_hw[1], out_hw[1], nw)
        overlap = sum_h * sum_w / (in_hw[0] * in_hw[1])
        if max_overlap is not None and overlap > max_overlap:
            continue
        area = th * tw / (in_hw[0] * in_hw[1])
        tile_graph = int(full_graph * area)
        out_tile = -(-out_hw[0] // nh) * -(-out_hw[1] // nw)
        # the tile's input and its gradient, the owned output crop and its gradient
        tile_io = 2 * batch * bytes_per_elem * (c_in * th * tw + c_out * out_tile)
        flops = 4 * span.flops * overlap + 2 * nh * nw * _TILE_OVERHEAD_FLOPS
        options.append(
            _Option(
                "stream",
                (nh, nw),
                (th, tw),
                overlap,
                tile_graph,
                int(_WORK_FACTOR * tile_graph) + tile_io,
                flops,
            )
        )
    return options


@dataclass
class _Label:
    stored: int  # device bytes held for backward by the segments so far
    peak: int  # device peak so far
    flops: float
    parent: _Label | None
    step: tuple | None  # (start, stop, option, offload_input)
    host_stored: int = 0  # host bytes of the offloaded maps so far (held until their backward)
    host_peak: int = 0  # host peak so far


# what a search minimises (then breaks ties on), per key
_CRITERIA = {
    "flops": ("flops", "host_peak", "peak"),
    "peak": ("peak", "flops"),
    "host": ("host_peak", "flops"),
}


def _prune(labels: list[_Label], key: str) -> list[_Label]:
    """Pareto front: drop labels that hold at least as much on the device and in host memory
    (which is all that decides what can follow) and are no better by any criterion of ``key``.

    Labels are visited in lexicographic order of their dimensions, so a label can only be
    dominated by one already on the front; the dominance test is one vectorised comparison
    against the whole front (the planner's hot loop: 10-20x faster than pairwise tuples).
    """
    if len(labels) <= 1:
        return labels
    criteria = _CRITERIA[key]
    rows = [(*(getattr(lb, c) for c in criteria), lb.stored, lb.host_stored) for lb in labels]
    order = sorted(range(len(labels)), key=rows.__getitem__)
    dims = np.asarray(rows, dtype=np.float64)  # bytes < 2**53: exact as float64
    front = np.empty_like(dims)
    kept: list[int] = []
    for i in order:
        d = dims[i]
        if kept and (front[: len(kept)] <= d).all(axis=1).any():
            continue
        front[len(kept)] = d
        kept.append(i)
    return [labels[i] for i in kept]


def _no_plan_message(
    search,
    budget: float,
    host_budget: float,
    input_shape: Sequence[int],
    bytes_per_elem: int,
    offload: bool | str,
    fixed_cuts: bool,
) -> str:
    """Why no plan fits, with the smallest estimates, and what would help here."""

    def fmt(n: float) -> str:
        return format_bytes(n) if n < math.inf else "unlimited"

    # the smallest device peak within the host budget, the smallest host peak within the
    # device budget, and the smallest device peak whatever the host memory
    dev = search(math.inf, "peak", host_budget)
    host = search(budget, "host", math.inf) if host_budget < math.inf else None
    free = search(math.inf, "peak", math.inf) if host_budget < math.inf else None
    if free is not None and dev is not None and free.peak >= dev.peak:
        free = None  # the host budget does not limit the device estimate
    found = []
    if dev is not None:
        found.append(f"within the host budget the smallest device estimate is {fmt(dev.peak)}")
    else:
        found.append("no plan keeps its offloaded maps within the host budget")
    if host is not None:
        found.append(
            f"within the device budget the smallest host estimate is {fmt(host.host_peak)}"
        )
    elif free is not None:
        found.append(
            f"even with unlimited host memory the smallest device estimate is {fmt(free.peak)} "
            f"(with {fmt(free.host_peak)} in host memory)"
        )
    advice = []
    if dev is not None:
        advice.append(f"raise memory_budget to at least {fmt(dev.peak)}")
    if host is not None:
        advice.append(f"raise host_memory_budget to at least {fmt(host.host_peak)}")
    if offload is False:
        advice.append("let feature maps go to host memory (offload='auto', on CUDA)")
    elif offload is True:
        advice.append("offload only where the device budget demands (offload='auto')")
    if fixed_cuts:
        advice.append("let the planner choose the cuts (segments='auto')")
    if bytes_per_elem > 2:
        advice.append("use a lower precision (bf16 autocast halves every feature map)")
    if input_shape[0] > 1:
        advice.append("use a smaller batch")
    return (
        f"no plan fits memory_budget={fmt(budget)} (device) and "
        f"host_memory_budget={fmt(host_budget)} for input {tuple(input_shape)}: "
        + "; ".join(found)
        + ". To fit: "
        + ", or ".join(advice)
        + ". (Smaller tiles cannot help: the planner already tries every tile grid down to "
        "the receptive field.)"
    )


def plan_trunk(
    units: Sequence[tuple[str, nn.Module]],
    input_shape: Sequence[int],
    *,
    geometries: Sequence[Geometry] | None = None,
    cuts: str | Sequence[int] = "planned",
    bytes_per_elem: int = 4,
    tile_size: int | None = None,
    memory_budget: int | str | None = None,
    input_requires_grad: bool = False,
    lazy_input: bool = False,
    available_bytes: int | None = None,
    offload: bool | str = False,
    host_memory_budget: int | str | None = None,
    available_host_bytes: int | None = None,
) -> StreamingPlan:
    """Plan a trunk made of consecutive ``units`` (top-level children): cuts, tiles, graphs, offload.

    A dynamic programme over the unit boundaries: a state is a boundary (and whether the map
    there is in host memory, and how the segment before it ran); a label carries the device
    and host bytes the segments so far hold for backward, the device and host peaks so far
    and the compute so far. Every segment choice (where it ends, keep or stream with which tile grid, whether
    its output map is offloaded) extends the labels; labels that hold at least as much and
    are no better are dropped. Estimated peak of the backward pass of segment ``k``::

        device: held by segments <= k (stored input maps, kept graphs) + final output
                + gradient of k's output map + gradient accumulator of k's input map + k's work
        host:   offloaded maps at k's input and before (later ones are freed by then)
                + k's output gradient and input gradient accumulator, where offloaded

    where a map or gradient offloaded to host memory counts nothing on the device. Among
    the plans within both budgets the fastest is chosen, or one that keeps less in host
    memory if it is at most 5% slower by the estimate.

    Args:
        units: ``(name, module)`` pairs run one after the other.
        input_shape: (B, C, H, W) of the input.
        geometries: each unit's geometry (default: :func:`describe`).
        cuts: ``"planned"`` (any subset of unit boundaries) or the boundary indices
            (``0 < i < len(units)``) to cut at, exactly.
        bytes_per_elem: 4 for float32, 2 under bf16/fp16 autocast, 8 for float64.
        tile_size: the largest tile of the first segment (which then always streams), in
            input pixels. Without a
            memory budget, the budget becomes the lowest estimated peak with the first
            segment at this tile size (its largest tiles), raised to 30% of the conventional
            estimate (so
            cheap segments keep their graphs) but not past half of ``available_bytes``.
        memory_budget: bytes or a string like ``"4GiB"``: the fastest plan whose estimated
            peak device tensor memory fits.
        input_requires_grad: whether an input gradient is needed.
        lazy_input: the input is an :class:`InputSource` (read tile by tile, never whole on
            the device); the first segment must stream.
        available_bytes: memory free on the device; caps the default budget at half of it.
        offload: ``False`` never keeps maps in host memory; ``"auto"`` lets the planner do
            it where the budget demands; ``True`` offloads every map between two streamed
            segments (on CPU a separate buffer: exercises the path).
        host_memory_budget: bytes or a string like ``"64GiB"``: the most host memory the
            offloaded maps and their gradient accumulators may take at any time (default:
            ``available_host_bytes``).
        available_host_bytes: host memory available; the host budget when
            ``host_memory_budget`` is not given (both ``None``: no limit).

    Returns:
        The plan. Raises :class:`StreamingError` if no plan fits or a tile is too small.
    """
    t_start = time.perf_counter()
    if tile_size is None and memory_budget is None:
        raise StreamingError(
            "give tile_size (pixels) or memory_budget (e.g. '4GiB') to plan streaming"
        )
    if offload not in (True, False, "auto"):
        raise StreamingError(f"offload must be True, False or 'auto', got {offload!r}")
    m = len(units)
    if m == 0:
        raise StreamingError("the trunk is empty: there is nothing to stream")
    names = [n for n, _ in units]
    geoms = list(geometries) if geometries is not None else [describe(mod, n) for n, mod in units]
    profiles = _profile_modules([mod for _, mod in units], input_shape)
    if cuts == "planned":
        allowed = set(range(1, m))
        fixed = False
    else:
        allowed = set(int(c) for c in cuts)
        if not allowed <= set(range(1, m)):
            raise StreamingError(f"cut positions {sorted(allowed)} are not inside 1..{m - 1}")
        fixed = True
    boundaries = [0, *sorted(allowed), m]

    def ends_from(j: int) -> list[int]:
        if fixed:
            return [boundaries[boundaries.index(j) + 1]]
        return [b for b in boundaries if b > j]

    map_bytes = [_numel(p.in_shape) * bytes_per_elem for p in profiles] + [
        _numel(profiles[-1].out_shape) * bytes_per_elem
    ]
    in_stride = [1]
    for g in geoms:
        in_stride.append(in_stride[-1] * g.h.stride)

    spans: dict[tuple[int, int], _Span] = {}
    for j in boundaries[:-1]:
        for stop in ends_from(j):
            spans[(j, stop)] = _Span(
                names[j:stop],
                Geometry.chain(*geoms[j:stop]),
                profiles[j].in_shape,
                profiles[stop - 1].out_shape,
                sum(p.activation_elems for p in profiles[j:stop]),
                sum(p.flops for p in profiles[j:stop]),
                max(p.activation_elems for p in profiles[j:stop]),
            )
    options: dict[tuple[int, int], list[_Option]] = {}
    for (j, stop), span in spans.items():
        options[(j, stop)] = _span_options(
            span,
            in_stride[j],
            bytes_per_elem,
            tile_size if j == 0 else None,
            # a lazy input is never whole on the device; a tile_size is a promise of tiles
            allow_keep=not ((lazy_input or tile_size is not None) and j == 0),
            max_overlap=_MAX_AUTO_OVERLAP if (memory_budget is None and j > 0) else None,
        )
    first_streams = [
        o for (j, _), opts in options.items() if j == 0 for o in opts if o.mode == "stream"
    ]
    if tile_size is not None and not first_streams:
        first = spans[(0, ends_from(0)[0])]
        g = first.geometry
        in_hw, out_hw = first.in_shape[-2:], first.out_shape[-2:]
        need = max(
            axis_stats(g.h, in_hw[0], out_hw[0], max(out_hw[0], 1))[0]
            if out_hw[0] <= _EXACT_TILES
            else _axis_const(g.h),
            axis_stats(g.w, in_hw[1], out_hw[1], max(out_hw[1], 1))[0]
            if out_hw[1] <= _EXACT_TILES
            else _axis_const(g.w),
        )
        raise StreamingError(
            f"tile_size={tile_size} px is too small for segment [{'+'.join(first.names)}]: its "
            f"receptive field is {max(g.receptive_field)} px, so a tile needs at least {need} input "
            f"pixels. Use tile_size >= {need} or cut the trunk into more segments (segments=...)."
        )
    allow_offload = offload in (True, "auto")
    force_offload = offload is True
    out_term = map_bytes[m]
    if host_memory_budget is not None:
        host_budget: float = parse_bytes(host_memory_budget)
    elif available_host_bytes is not None:
        host_budget = int(available_host_bytes)
    else:
        host_budget = math.inf

    def search(
        budget: float,
        key: str,
        host_limit: float,
        first_at_tile_size: bool = False,
        max_flops: float = math.inf,
        use_offload: bool = True,
    ) -> _Label | None:
        """Best plan within ``budget`` (device) and ``host_limit`` (host), by ``_CRITERIA[key]``:
        min compute ("flops"), min device peak ("peak") or min host peak ("host"), the last
        among plans of compute <= ``max_flops``.

        ``first_at_tile_size``: the first segment streams with the largest tiles allowed.
        ``use_offload=False``: no map goes to host memory (unless ``offload=True`` forces it)."""
        fronts: dict[tuple, list[_Label]] = {(0, False, "input"): [_Label(0, 0, 0.0, None, None)]}
        finals: list[_Label] = []
        for j in boundaries[:-1]:
            for state in [s for s in fronts if s[0] == j]:
                labels = _prune(fronts.pop(state), key)
                _, off_j, prev = state
                stored_j = (
                    0 if (off_j or (j == 0 and lazy_input) or prev == "keep") else map_bytes[j]
                )
                grad_in = 0 if off_j or (j == 0 and not input_requires_grad) else map_bytes[j]
                # an offloaded input map's gradient is accumulated in host memory
                host_grad_in = map_bytes[j] if off_j else 0
                for stop in ends_from(j):
                    opts = options[(j, stop)]
                    if first_at_tile_size and j == 0:
                        opts = [o for o in opts if o.mode == "stream"][:1]
                    for opt in opts:
                        if opt.mode == "keep" and off_j:
                            continue
                        if (
                            force_offload
                            and prev == "stream"
                            and opt.mode == "stream"
                            and not off_j
                        ):
                            continue
                        can_off = (
                            allow_offload
                            and (use_offload or force_offload)
                            and opt.mode == "stream"
                            and stop < m
                        )
                        for off_out in (False, True) if can_off else (False,):
                            held = stored_j + (opt.graph_bytes if opt.mode == "keep" else 0)
                            grad_out = 0 if off_out else map_bytes[stop]
                            local = grad_out + grad_in + opt.work_bytes + out_term
                            host_map = map_bytes[stop] if off_out else 0
                            host_local = host_grad_in + host_map  # the gradients, in backward
                            flops = opt.flops
                            if off_out:
                                flops += _TRANSFER_FLOPS_PER_BYTE * 6 * map_bytes[stop]
                            nxt_state = (stop, off_out, opt.mode)
                            for lb in labels:
                                stored = lb.stored + held
                                peak = max(lb.peak, stored + local)
                                host_peak = max(
                                    lb.host_peak,
                                    lb.host_stored + host_local,
                                    lb.host_stored + host_map,  # forward: every map
                                )
                                total = lb.flops + flops
                                if peak > budget or host_peak > host_limit or total > max_flops:
                                    continue
                                new = _Label(
                                    stored,
                                    peak,
                                    total,
                                    lb,
                                    (j, stop, opt, off_j),
                                    lb.host_stored + host_map,
                                    host_peak,
                                )
                                if stop == m:
                                    finals.append(new)
                                else:
                                    fronts.setdefault(nxt_state, []).append(new)
                # keep fronts small as they fill
                for s in list(fronts):
                    if len(fronts[s]) > 256:
                        fronts[s] = _prune(fronts[s], key)
        if not finals:
            return None
        return min(finals, key=lambda lb: tuple(getattr(lb, c) for c in _CRITERIA[key]))

    def fixed_plan_bytes(mode: str, bounds: Sequence[int]) -> int:
        """Peak of running spans as kept graphs / as one-tile checkpoints (input held whole)."""
        peak, stored = 0, 0
        for j, stop in itertools.pairwise(bounds):
            span_graph = int(
                sum(p.activation_elems for p in profiles[j:stop]) * bytes_per_elem * _GRAPH_FACTOR
            )
            stored_j = 0 if (mode == "keep" and j > 0) else map_bytes[j]
            stored += stored_j + (span_graph if mode == "keep" else 0)
            grad_in = map_bytes[j] if (j > 0 or input_requires_grad) else 0
            unit = (
                max(p.activation_elems for p in profiles[j:stop]) * bytes_per_elem * _GRAPH_FACTOR
            )
            work = int(unit) if mode == "keep" else int(_WORK_FACTOR * span_graph)
            peak = max(peak, stored + map_bytes[stop] + grad_in + work + out_term)
        return peak

    conv_bytes = fixed_plan_bytes("keep", [0, m])
    # torch.utils.checkpoint on the given cuts, or on the heuristic ones (split_segments "auto")
    heuristic = [
        i for i in range(1, m) if list(units[i][1].children()) and geoms[i].stride != (1, 1)
    ]
    checkpoint_bytes = fixed_plan_bytes("stream", boundaries if fixed else [0, *heuristic, m])
    # offload="auto": the search over offloading choices is by far the largest (minutes for
    # trunks of many units), so the best plan without offload is searched first; offload is
    # then searched only among plans faster than it by more than the tolerance (labels
    # above that compute are dropped as they are made), and kept only if one exists.
    skip_offload_if_close = allow_offload and not force_offload

    def search_auto(budget: float, key: str, host_limit: float, **kwargs) -> _Label | None:
        if not skip_offload_if_close:
            return search(budget, key, host_limit, **kwargs)
        found = search(budget, key, host_limit, use_offload=False, **kwargs)
        if found is None:
            return search(budget, key, host_limit, **kwargs)
        if key != "flops":
            return found
        faster = search(
            budget, key, host_limit, max_flops=found.flops / (1 + _OFFLOAD_TOLERANCE), **kwargs
        )
        return faster if faster is not None else found

    if memory_budget is None:
        lowest = search_auto(math.inf, "peak", host_budget, first_at_tile_size=True)
        budget = math.inf
        if lowest is not None:
            budget = max(lowest.peak, int(_DEFAULT_FRACTION * conv_bytes))
            if available_bytes is not None:
                budget = max(lowest.peak, min(budget, available_bytes // 2))
    else:
        budget = parse_bytes(memory_budget)
    best = search_auto(budget, "flops", host_budget)
    if best is None:
        raise StreamingError(
            _no_plan_message(
                search, budget, host_budget, input_shape, bytes_per_elem, offload, fixed
            )
        )
    if best.host_peak > 0:
        frugal = search(
            budget, "host", host_budget, max_flops=best.flops * (1 + _OFFLOAD_TOLERANCE)
        )
        if frugal is not None and frugal.host_peak < best.host_peak:
            best = frugal
    chain = []
    lb = best
    while lb.parent is not None:
        chain.append(lb)
        lb = lb.parent
    chain.reverse()
    seg_plans = []
    for lb in chain:
        j, stop, opt, off_in = lb.step
        span = spans[(j, stop)]
        seg_plans.append(
            SegmentPlan(
                names=list(span.names),
                mode=opt.mode,
                in_shape=tuple(span.in_shape),
                out_shape=tuple(span.out_shape),
                stride=span.geometry.stride,
                receptive_field=span.geometry.receptive_field,
                tiles=opt.tiles,
                max_tile=tuple(int(v) for v in opt.max_tile),
                overlap=round(opt.overlap, 4),
                est_graph_bytes=opt.graph_bytes,
                est_flops=opt.flops,
                span=(j, stop),
                offload_input=off_in,
            )
        )
    return StreamingPlan(
        input_shape=tuple(input_shape),
        segments=seg_plans,
        est_peak_bytes=int(best.peak),
        est_flops=best.flops,
        conventional_flops=sum(3 * p.flops for p in profiles),
        conventional_bytes=conv_bytes,
        checkpoint_bytes=checkpoint_bytes,
        memory_budget=int(budget),
        offloaded=[s.names[0] for s in seg_plans if s.offload_input],
        est_host_bytes=int(best.host_peak),
        host_memory_budget=int(host_budget) if host_budget < math.inf else None,
        bytes_per_elem=bytes_per_elem,
        lazy_input=lazy_input,
        cuts="fixed" if fixed else "planned",
        planning_seconds=round(time.perf_counter() - t_start, 4),
    )


def plan_streaming(
    segments: Sequence[Segment],
    input_shape: Sequence[int],
    *,
    bytes_per_elem: int = 4,
    tile_size: int | None = None,
    memory_budget: int | str | None = None,
    input_requires_grad: bool = False,
    lazy_input: bool = False,
    available_bytes: int | None = None,
    offload: bool | str = False,
) -> StreamingPlan:
    """Plan fixed ``segments`` (from :func:`split_segments`): tiles, kept graphs, offload.

    The same search as :func:`plan_trunk` with a cut at every segment boundary; see there
    for the arguments.
    """
    units = [("+".join(s.names), s.module) for s in segments]
    geoms = [s.geometry if s.geometry is not None else describe(s.module) for s in segments]
    plan = plan_trunk(
        units,
        input_shape,
        geometries=geoms,
        cuts=list(range(1, len(segments))),
        bytes_per_elem=bytes_per_elem,
        tile_size=tile_size,
        memory_budget=memory_budget,
        input_requires_grad=input_requires_grad,
        lazy_input=lazy_input,
        available_bytes=available_bytes,
        offload=offload,
    )
    for seg_plan, seg in zip(plan.segments, segments, strict=True):
        seg_plan.names = list(seg.names)
    return plan
