"""``plan_trunk``: the fastest plan for a trunk at one input shape within the memory budgets."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from torch import nn

from gigastream.streaming.geometry import Geometry, StreamingError
from gigastream.streaming.planner.advice import check_tile_size, no_plan_message
from gigastream.streaming.planner.budget import host_budget as resolve_host_budget
from gigastream.streaming.planner.budget import parse_bytes
from gigastream.streaming.planner.cost import TrunkCosts, trunk_costs
from gigastream.streaming.planner.plan import SegmentPlan, StreamingPlan
from gigastream.streaming.planner.search import OFFLOAD_TOLERANCE, Label, Search
from gigastream.streaming.planner.segments import stage_cuts

DEFAULT_FRACTION = (
    0.3  # default budget (tile_size only): this fraction of the conventional estimate
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

    The search (:mod:`~gigastream.streaming.planner.search`) estimates every plan's device
    and host peaks and compute (:mod:`~gigastream.streaming.planner.cost`); among the plans
    within both budgets the fastest is chosen, or one that keeps less in host memory if it
    is at most 5% slower by the estimate.

    Args:
        units: ``(name, module)`` pairs run one after the other.
        input_shape: (B, C, H, W) of the input.
        geometries: each unit's geometry (default: :func:`describe`).
        cuts: ``"planned"`` (any subset of unit boundaries) or the boundary indices
            (``0 < i < len(units)``) to cut at, exactly.
        bytes_per_elem: 4 for float32, 2 under bf16/fp16 autocast, 8 for float64.
        tile_size: the largest tile of the first segment (which then always streams), in
            input pixels. Without a memory budget, the budget becomes the lowest estimated
            peak with the first segment at this tile size (its largest tiles), raised to 30%
            of the conventional estimate (so cheap segments keep their graphs) but not past
            half of ``available_bytes``.
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
    _check_arguments(units, tile_size, memory_budget, offload)
    costs = trunk_costs(
        units, input_shape, geometries=geometries, cuts=cuts, bytes_per_elem=bytes_per_elem,
        tile_size=tile_size, memory_budget=memory_budget,
        input_requires_grad=input_requires_grad, lazy_input=lazy_input,
    )  # fmt: skip
    check_tile_size(costs, tile_size)
    host_budget = resolve_host_budget(host_memory_budget, available_host_bytes)
    search = Search(costs, offload)
    conv_bytes = costs.fixed_plan_bytes("keep", [0, costs.n_units])
    if memory_budget is None:
        budget = _default_budget(search, host_budget, conv_bytes, available_bytes)
    else:
        budget = parse_bytes(memory_budget)
    best = _best(search, budget, host_budget, input_shape, offload)
    plan = _make_plan(costs, units, best, input_shape, conv_bytes, budget, host_budget)
    plan.planning_seconds = round(time.perf_counter() - t_start, 4)
    return plan


def _check_arguments(
    units: Sequence[tuple[str, nn.Module]],
    tile_size: int | None,
    memory_budget: int | str | None,
    offload: bool | str,
) -> None:
    if tile_size is None and memory_budget is None:
        raise StreamingError(
            "give tile_size (pixels) or memory_budget (e.g. '4GiB') to plan streaming"
        )
    if offload not in (True, False, "auto"):
        raise StreamingError(f"offload must be True, False or 'auto', got {offload!r}")
    if len(units) == 0:
        raise StreamingError("the trunk is empty: there is nothing to stream")


def _best(
    search: Search,
    budget: float,
    host_budget: float,
    input_shape: Sequence[int],
    offload: bool | str,
) -> Label:
    """The fastest plan within the budgets, or one that keeps less in host memory and is
    at most ``OFFLOAD_TOLERANCE`` slower; :class:`StreamingError` saying why if none fits."""
    best = search.best(budget, "flops", host_budget)
    if best is None:
        costs = search.costs
        raise StreamingError(
            no_plan_message(
                search.run,
                budget,
                host_budget,
                input_shape,
                costs.bytes_per_elem,
                offload,
                costs.fixed,
            )  # fmt: skip
        )
    if best.host_peak > 0:
        frugal = search.run(
            budget, "host", host_budget, max_flops=best.flops * (1 + OFFLOAD_TOLERANCE)
        )
        if frugal is not None and frugal.host_peak < best.host_peak:
            best = frugal
    return best


def _make_plan(
    costs: TrunkCosts,
    units: Sequence[tuple[str, nn.Module]],
    best: Label,
    input_shape: Sequence[int],
    conv_bytes: int,
    budget: float,
    host_budget: float,
) -> StreamingPlan:
    m = costs.n_units
    # torch.utils.checkpoint on the given cuts, or on the trunk's stages
    bounds = costs.boundaries if costs.fixed else [0, *stage_cuts(units, costs.geometries), m]
    segments = _segment_plans(best, costs)
    return StreamingPlan(
        input_shape=tuple(input_shape),
        segments=segments,
        est_peak_bytes=int(best.peak),
        est_flops=best.flops,
        conventional_flops=costs.conventional_flops,
        conventional_bytes=conv_bytes,
        checkpoint_bytes=costs.fixed_plan_bytes("stream", bounds),
        memory_budget=int(budget),
        offloaded=[s.names[0] for s in segments if s.offload_input],
        est_host_bytes=int(best.host_peak),
        host_memory_budget=int(host_budget) if host_budget < math.inf else None,
        bytes_per_elem=costs.bytes_per_elem,
        lazy_input=costs.lazy_input,
        cuts="fixed" if costs.fixed else "planned",
    )


def _default_budget(
    search: Search, host_budget: float, conv_bytes: int, available_bytes: int | None
) -> float:
    """The device budget of a ``tile_size``-only plan (see :func:`plan_trunk`)."""
    lowest = search.best(math.inf, "peak", host_budget, first_at_tile_size=True)
    if lowest is None:
        return math.inf
    budget = max(lowest.peak, int(DEFAULT_FRACTION * conv_bytes))
    if available_bytes is not None:
        budget = max(lowest.peak, min(budget, available_bytes // 2))
    return budget


def _segment_plans(best: Label, costs: TrunkCosts) -> list[SegmentPlan]:
    """The segments of the plan that ends in ``best``, in order."""
    plans = []
    for lb in best.path():
        j, stop, opt, off_in = lb.step
        span = costs.spans[(j, stop)]
        plans.append(
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
    return plans
