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

Modules, one concept each:

- :mod:`.trunk`: :func:`plan_trunk`, the entry point;
- :mod:`.search`: the dynamic programme over cuts, tile grids and offloading;
- :mod:`.cost`: the cost model (device bytes and compute of every way a span can run);
- :mod:`.profiling`: shapes and FLOPs of the units from a forward pass on ``meta``;
- :mod:`.tiles`: tile grids of one segment and the pieces they stream;
- :mod:`.segments`: fixed cuts by rule (:func:`split_segments`, :func:`stage_cuts`);
- :mod:`.plan`: :class:`StreamingPlan`, its dictionary and its table for logs;
- :mod:`.advice`: the errors when no plan can be made, with what would help;
- :mod:`.budget`: memory sizes (``"4GiB"``) and the host budget in force.
"""

from gigastream.streaming.planner.budget import format_bytes, parse_bytes
from gigastream.streaming.planner.plan import SegmentPlan, StreamingPlan
from gigastream.streaming.planner.segments import Segment, split_segments, stage_cuts
from gigastream.streaming.planner.tiles import (
    axis_bounds,
    axis_stats,
    axis_tiles,
    make_pieces,
    tiles_for_extent,
)
from gigastream.streaming.planner.trunk import plan_trunk

__all__ = [
    "Segment",
    "SegmentPlan",
    "StreamingPlan",
    "axis_bounds",
    "axis_stats",
    "axis_tiles",
    "format_bytes",
    "make_pieces",
    "parse_bytes",
    "plan_trunk",
    "split_segments",
    "stage_cuts",
    "tiles_for_extent",
]
