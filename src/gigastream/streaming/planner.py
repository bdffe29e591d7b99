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
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from gigastream.streaming.geometry import Geometry, StreamingError, describe
from gigastream.streaming.recompute import Piece

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12,
          "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


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


def axis_tiles(
    axis, in_size: int, out_size: int, n_tiles: int
) -> list[tuple[int, int, int, int]]:
    """``(out_start, out_stop, in_start, in_stop)`` per tile along one axis."""
    bounds = axis_bounds(out_size, n_tiles)
    tiles = []
    for o0, o1 in itertools.pairwise(bounds):
        a, b = axis.input_span(o0, o1, in_size)
        tiles.append((o0, o1, a, b))
    return tiles


def tiles_for_extent(axis, in_size: int, out_size: int, max_extent: int) -> int | None:
    """Fewest tiles along an axis whose input extents are all ``<= max_extent`` (None: impossible)."""
    if out_size <= 0:
        return None
    lo, hi = 1, out_size
    if max(b - a for _, _, a, b in axis_tiles(axis, in_size, out_size, hi)) > max_extent:
        return None
    # extents shrink (weakly) as tiles get more numerous; binary search the smallest count
    while lo < hi:
        mid = (lo + hi) // 2
        if max(b - a for _, _, a, b in axis_tiles(axis, in_size, out_size, mid)) <= max_extent:
            hi = mid
        else:
            lo = mid + 1
    # balanced rounding is not perfectly monotone: step up until it fits
    n = lo
    while max(b - a for _, _, a, b in axis_tiles(axis, in_size, out_size, n)) > max_extent:
        n += 1
    return n


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
                    crop=(full, full, slice(o0 - a // sh, o1 - a // sh), slice(p0 - c // sw, p1 - c // sw)),
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


def profile_segments(segments: Sequence[Segment], input_shape: Sequence[int]) -> list[_Profile]:
    """Shapes, activation sizes and FLOPs of each segment, from a forward pass on ``meta``."""
    profiles = []
    x = torch.empty(tuple(input_shape), device="meta")
    for seg in segments:
        meta = copy.deepcopy(seg.module).to(device="meta", dtype=torch.float32)
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
    """How one segment runs. Sizes in elements of the segment's input unless said otherwise."""

    names: list[str]
    mode: str  # "stream" or "keep"
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    stride: tuple[int, int]
    receptive_field: tuple[int, int]
    tiles: tuple[int, int] = (1, 1)
    max_tile: tuple[int, int] = (0, 0)  # largest tile input (h, w), segment-input pixels
    overlap: float = 1.0  # sum of tile input areas / input area
    est_graph_bytes: int = 0  # kept: whole graph; streamed: one tile's graph
    est_flops: float = 0.0  # forward + backward, including recomputation and overlap


@dataclass
class StreamingPlan:
    """The plan for one input shape; ``str(plan)`` is a table for logs."""

    input_shape: tuple[int, ...]
    segments: list[SegmentPlan]
    est_peak_bytes: int
    est_flops: float
    conventional_flops: float
    conventional_bytes: int
    checkpoint_bytes: int  # estimated peak of torch.utils.checkpoint on the same segments
    memory_budget: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"StreamingPlan for input {tuple(self.input_shape)}: est. peak "
            f"{format_bytes(self.est_peak_bytes)} (conventional {format_bytes(self.conventional_bytes)}), "
            f"est. compute {self.est_flops / max(self.conventional_flops, 1):.2f}x conventional"
        ]
        for s in self.segments:
            what = (
                f"stream {s.tiles[0]}x{s.tiles[1]} tiles <= {s.max_tile[0]}x{s.max_tile[1]} px, "
                f"overlap {s.overlap:.2f}"
                if s.mode == "stream"
                else "keep graph"
            )
            lines.append(
                f"  [{'+'.join(s.names)}] {tuple(s.in_shape)} -> {tuple(s.out_shape)}, "
                f"RF {s.receptive_field[0]}, stride {s.stride[0]}: {what}, "
                f"graph {format_bytes(s.est_graph_bytes)}"
            )
        return "\n".join(lines)


# Empirical factors of the cost model (CPU, float32, torchvision ResNets); the estimate is
# for tensors, not for the process (add ~0.5 GiB for the Python/torch runtime).
_GRAPH_FACTOR = 1.0  # bytes of saved tensors per byte of leaf outputs
_WORK_FACTOR = 2.0  # a tile in backward holds its graph plus gradients of similar size
_MAX_STREAM_OPTIONS = 8
_MAX_AUTO_OVERLAP = 2.5  # tile_size-only plans: deeper segments stream only below this overlap
_DEFAULT_FRACTION = 0.3  # default budget (tile_size only): this fraction of the conventional estimate  # tile sizes tried per segment


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _candidate_extents(in_size: int, min_extent: int) -> list[int]:
    out = []
    e = in_size
    while e >= min_extent:
        out.append(e)
        e = int(e / 1.25)
    return out


@dataclass
class _Option:
    mode: str
    tiles: tuple[int, int]
    max_tile: tuple[int, int]
    overlap: float
    graph_bytes: int
    flops: float


def _segment_options(
    seg: Segment,
    prof: _Profile,
    in_stride: int,
    bytes_per_elem: int,
    max_tile_image_px: int | None,
    allow_keep: bool,
) -> list[_Option]:
    """The ways a segment can run: keep, or streamed at a range of tile sizes."""
    full_graph = int(prof.activation_elems * bytes_per_elem * _GRAPH_FACTOR)
    options = []
    if allow_keep:
        options.append(_Option("keep", (1, 1), tuple(prof.in_shape[-2:]), 1.0, full_graph, 3 * prof.flops))
    if seg.geometry is None:
        return options
    g = seg.geometry
    in_hw = prof.in_shape[-2:]
    out_hw = prof.out_shape[-2:]
    if min(out_hw) <= 0:
        return options
    min_ext = max(g.h.receptive_field, g.w.receptive_field)
    extents = _candidate_extents(max(in_hw), max(1, min(min_ext, min(in_hw))))
    if max_tile_image_px is not None:
        extents = [e for e in extents if e * in_stride <= max_tile_image_px]
        extents.insert(0, max_tile_image_px // in_stride)
    seen = set()
    for ext in extents:
        if len(seen) >= _MAX_STREAM_OPTIONS:
            break
        nh = tiles_for_extent(g.h, in_hw[0], out_hw[0], ext)
        nw = tiles_for_extent(g.w, in_hw[1], out_hw[1], ext)
        if nh is None or nw is None or (nh, nw) in seen:
            continue
        seen.add((nh, nw))
        ys = axis_tiles(g.h, in_hw[0], out_hw[0], nh)
        xs = axis_tiles(g.w, in_hw[1], out_hw[1], nw)
        th = max(b - a for *_, a, b in ys)
        tw = max(b - a for *_, a, b in xs)
        overlap = (sum(b - a for *_, a, b in ys) * sum(b - a for *_, a, b in xs)) / (in_hw[0] * in_hw[1])
        area = th * tw / (in_hw[0] * in_hw[1])
        options.append(
            _Option("stream", (nh, nw), (th, tw), overlap, int(full_graph * area), 4 * prof.flops * overlap)
        )
    return options


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
) -> StreamingPlan:
    """Choose how each segment runs.

    Args:
        segments: from :func:`split_segments`.
        input_shape: (B, C, H, W) of the input.
        bytes_per_elem: 4 for float32, 2 under bf16/fp16 autocast, 8 for float64.
        tile_size: the largest tile of the first (highest-resolution) segment, in input
            pixels. Without a memory budget, the budget becomes the estimated peak of
            streaming the first segment at this tile size and the others at their leanest;
            that budget may grow to 30% of the conventional estimate (so deep,
            low-resolution segments keep their graphs) but not past half of
            ``available_bytes``. The planner then picks the fastest plan within it. Give
            ``memory_budget`` to bound memory explicitly.
        memory_budget: bytes or a string like ``"4GiB"``: the fastest plan whose estimated
            peak tensor memory fits.
        input_requires_grad: whether an input gradient is needed (adds one input-sized map).
        lazy_input: the input is an :class:`InputSource`; the first segment must stream.
        available_bytes: memory free on the device; caps the default budget at half of it.

    Returns:
        The plan. Raises :class:`StreamingError` if no plan fits or a tile is too small.
    """
    if tile_size is None and memory_budget is None:
        raise StreamingError("give tile_size (pixels) or memory_budget (e.g. '4GiB') to plan streaming")
    profiles = profile_segments(segments, input_shape)
    strides = [1]
    for seg in segments[:-1]:
        s = seg.geometry.stride[0] if seg.geometry is not None else 1
        strides.append(strides[-1] * s)
    per_segment = []
    for i, (seg, prof) in enumerate(zip(segments, profiles, strict=True)):
        opts = _segment_options(
            seg,
            prof,
            strides[i],
            bytes_per_elem,
            tile_size if i == 0 else None,
            allow_keep=not (lazy_input and i == 0),
        )
        if tile_size is not None and seg.geometry is not None and not any(o.mode == "stream" for o in opts):
            in_hw, out_hw = prof.in_shape[-2:], prof.out_shape[-2:]
            g = seg.geometry
            need = max(
                max(b - a for *_, a, b in axis_tiles(g.h, in_hw[0], out_hw[0], max(out_hw[0], 1))),
                max(b - a for *_, a, b in axis_tiles(g.w, in_hw[1], out_hw[1], max(out_hw[1], 1))),
            )
            raise StreamingError(
                f"tile_size={tile_size} px is too small for segment [{'+'.join(seg.names)}]: its "
                f"receptive field is {max(g.receptive_field)} px at stride {strides[i]} of the input, "
                f"so a tile needs at least {need * strides[i]} input pixels. Use tile_size >= "
                f"{need * strides[i]} or cut the trunk into more segments (segments=...)."
            )
        if not opts:
            raise StreamingError(f"segment [{'+'.join(seg.names)}] can neither stream nor keep its graph")
        per_segment.append(opts)

    if memory_budget is None:
        # without an explicit budget, deep segments do not stream with heavily overlapping
        # tiles (their recomputation would cost more than the memory it saves)
        for i in range(1, len(per_segment)):
            lean_enough = [o for o in per_segment[i] if o.mode == "keep" or o.overlap <= _MAX_AUTO_OVERLAP]
            if lean_enough:
                per_segment[i] = lean_enough

    map_bytes = [_numel(p.in_shape) * bytes_per_elem for p in profiles] + [
        _numel(profiles[-1].out_shape) * bytes_per_elem
    ]

    def evaluate(choice: Sequence[_Option]) -> tuple[int, float]:
        peak = 0
        # forward: input, stored maps / graphs accumulate
        held = []
        for i, opt in enumerate(choice):
            held.append(opt.graph_bytes if opt.mode == "keep" else map_bytes[i])
        # the final output is held too
        base_out = map_bytes[-1]
        # backward, from the last segment to the first
        for k in range(len(choice) - 1, -1, -1):
            stored = sum(held[: k + 1]) + base_out
            grad_out = map_bytes[k + 1]
            grad_in = map_bytes[k] if (k > 0 or input_requires_grad) else 0
            work = _WORK_FACTOR * choice[k].graph_bytes if choice[k].mode == "stream" else choice[k].graph_bytes
            peak = max(peak, stored + grad_out + grad_in + int(work))
        flops = sum(o.flops for o in choice)
        return int(peak), flops

    full_graphs = [int(p.activation_elems * bytes_per_elem * _GRAPH_FACTOR) for p in profiles]
    conv_bytes, _ = evaluate([_Option("keep", (1, 1), (0, 0), 1.0, g, 0.0) for g in full_graphs])
    # checkpointing each segment = streaming it as one tile: inputs stored, whole graph rebuilt
    checkpoint_bytes, _ = evaluate([_Option("stream", (1, 1), (0, 0), 1.0, g, 0.0) for g in full_graphs])
    if memory_budget is None:
        # the first segment streamed at tile_size, the others at their leanest ...
        lean = []
        for i, opts in enumerate(per_segment):
            streams = [o for o in opts if o.mode == "stream"]
            if i == 0 and streams:
                lean.append(streams[0])
            else:
                lean.append(min(opts, key=lambda o: (_WORK_FACTOR if o.mode == "stream" else 1) * o.graph_bytes))
        lean_peak, _ = evaluate(lean)
        # ... may grow to 30% of the conventional estimate (deep segments keep their graphs),
        # but not past half of the memory available on the device.
        budget = max(lean_peak, int(_DEFAULT_FRACTION * conv_bytes))
        if available_bytes is not None:
            budget = max(lean_peak, min(budget, available_bytes // 2))
    else:
        budget = parse_bytes(memory_budget)

    best: tuple[float, int, tuple[_Option, ...]] | None = None
    fallback: tuple[int, float, tuple[_Option, ...]] | None = None
    if math.prod(len(o) for o in per_segment) > 500_000:
        raise StreamingError(
            f"too many segments ({len(segments)}) to search a plan; cut the trunk into at most 6"
        )
    for choice in itertools.product(*per_segment):
        peak, flops = evaluate(choice)
        if peak <= budget and (best is None or (flops, peak) < (best[0], best[1])):
            best = (flops, peak, choice)
        if fallback is None or peak < fallback[0]:
            fallback = (peak, flops, choice)
    notes = []
    if best is None:
        assert fallback is not None
        if memory_budget is not None:
            raise StreamingError(
                f"no plan fits memory_budget={format_bytes(budget)} for input {tuple(input_shape)}: "
                f"the smallest estimate is {format_bytes(fallback[0])}. Raise the budget, cut the "
                "trunk into more segments, or use a smaller batch."
            )
        best = (fallback[1], fallback[0], fallback[2])
        notes.append("no plan met the tile-size budget; using the lowest-memory plan")
    flops, peak, choice = best
    conventional_flops = sum(3 * p.flops for p in profiles)
    seg_plans = []
    for seg, prof, opt in zip(segments, profiles, choice, strict=True):
        g = seg.geometry
        seg_plans.append(
            SegmentPlan(
                names=list(seg.names),
                mode=opt.mode,
                in_shape=tuple(prof.in_shape),
                out_shape=tuple(prof.out_shape),
                stride=g.stride if g is not None else (0, 0),
                receptive_field=g.receptive_field if g is not None else (0, 0),
                tiles=opt.tiles,
                max_tile=tuple(int(v) for v in opt.max_tile),
                overlap=round(opt.overlap, 4),
                est_graph_bytes=opt.graph_bytes,
                est_flops=opt.flops,
            )
        )
    return StreamingPlan(
        input_shape=tuple(input_shape),
        segments=seg_plans,
        est_peak_bytes=peak,
        est_flops=flops,
        conventional_flops=conventional_flops,
        conventional_bytes=conv_bytes,
        checkpoint_bytes=checkpoint_bytes,
        memory_budget=budget,
        notes=notes,
    )
