"""What to tell the user when no plan can be made: the smallest estimates, and what would help."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from gigastream.streaming.geometry import StreamingError
from gigastream.streaming.planner.budget import format_bytes
from gigastream.streaming.planner.cost import TrunkCosts
from gigastream.streaming.planner.tiles import smallest_extent


def check_tile_size(costs: TrunkCosts, tile_size: int | None) -> None:
    """Raise :class:`StreamingError` if the first segment cannot stream at ``tile_size``."""
    first_streams = [
        o for (j, _), opts in costs.options.items() if j == 0 for o in opts if o.mode == "stream"
    ]
    if tile_size is None or first_streams:
        return
    first = costs.spans[(0, costs.ends_from(0)[0])]
    g = first.geometry
    in_hw, out_hw = first.in_shape[-2:], first.out_shape[-2:]
    need = max(smallest_extent(g.h, in_hw[0], out_hw[0]), smallest_extent(g.w, in_hw[1], out_hw[1]))
    raise StreamingError(
        f"tile_size={tile_size} px is too small for segment [{'+'.join(first.names)}]: its "
        f"receptive field is {max(g.receptive_field)} px, so a tile needs at least {need} input "
        f"pixels. Use tile_size >= {need} or cut the trunk into more segments (segments=...)."
    )


def no_plan_message(
    search: Callable,
    budget: float,
    host_budget: float,
    input_shape: Sequence[int],
    bytes_per_elem: int,
    offload: bool | str,
    fixed_cuts: bool,
) -> str:
    """Why no plan fits, with the smallest estimates, and what would help here.

    ``search(budget, key, host_limit)`` is :meth:`~.search.Search.run` of the failed search.
    """

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
