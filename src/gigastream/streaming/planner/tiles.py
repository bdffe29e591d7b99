"""Tile grids of one segment: balanced output runs, their input spans, and tile sizes.

Every output position of a segment is owned by exactly one tile; a tile's input span is
what its owned outputs need (one receptive-field radius of margin on the sides that face
another tile). Tiles are balanced over the output and placed on the output-stride grid.
"""

from __future__ import annotations

import functools
import itertools

from gigastream.streaming.geometry import Geometry
from gigastream.streaming.recompute import Piece

#: Up to this many tiles per axis, tile extents are computed tile by tile (exactly).
EXACT_TILES = 64


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


def axis_const(axis) -> int:
    """Input extent of an interior tile owning one output, minus one stride."""
    return axis.hi + 1 - (axis.lo // axis.stride) * axis.stride


@functools.lru_cache(maxsize=1 << 16)
def axis_stats(axis, in_size: int, out_size: int, n_tiles: int) -> tuple[int, int]:
    """(largest tile extent, sum of tile extents) along one axis; exact up to 64 tiles,
    a tight upper bound beyond (the few clipped border tiles are counted as interior).

    Memoized: a pure function of a frozen geometry and three integers, asked for the same
    grids by every span that shares an axis (most of a plan's cost model)."""
    if n_tiles <= EXACT_TILES:
        ext = [b - a for *_, a, b in axis_tiles(axis, in_size, out_size, n_tiles)]
        return max(ext), sum(ext)
    s, k = axis.stride, axis_const(axis)
    longest = -(-out_size // n_tiles)
    return min(in_size, (longest - 1) * s + k), (out_size - n_tiles) * s + n_tiles * k


def smallest_extent(axis, in_size: int, out_size: int) -> int:
    """The input extent a tile needs at least along one axis (one output per tile)."""
    if out_size <= EXACT_TILES:
        return axis_stats(axis, in_size, out_size, max(out_size, 1))[0]
    return axis_const(axis)


def tiles_for_extent(axis, in_size: int, out_size: int, max_extent: int) -> int | None:
    """Fewest tiles along an axis whose input extents are all ``<= max_extent`` (None: impossible)."""
    if out_size <= 0:
        return None
    if max_extent >= in_size:
        return 1
    s, k = axis.stride, axis_const(axis)
    per_tile = (max_extent - k) // s + 1  # outputs an interior tile of this extent can own
    if per_tile < 1:
        # only tiles clipped by the image border could be this small
        n = out_size if out_size <= EXACT_TILES else None
        if n is None or axis_stats(axis, in_size, out_size, n)[0] > max_extent:
            return None
        per_tile = 1
    n = min(out_size, -(-out_size // per_tile))
    if n > EXACT_TILES:
        return n
    while n < out_size and axis_stats(axis, in_size, out_size, n)[0] > max_extent:
        n += 1
    if axis_stats(axis, in_size, out_size, n)[0] > max_extent:
        return None
    while n > 1 and axis_stats(axis, in_size, out_size, n - 1)[0] <= max_extent:
        n -= 1  # border tiles are clipped: sometimes fewer suffice
    return n
