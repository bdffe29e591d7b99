"""A slide's tissue cut into a grid of patches: the instances of a patch-bag MIL model.

:func:`patch_grid` lays a grid of ``patch_size`` px patches over the slide read at ``mpp``
(CLAM, TRIDENT and Andersson et al. 2022 use 224 or 256 px at 0.5 µm/px) and keeps a patch
when the fraction of its area that the tissue mask covers is at least ``min_tissue``. The
kept patches are an instance bag; :func:`read_patches` reads any subset of them (a chunk),
so a bag of 10^5 patches never has to be in memory as pixels at once.

Coordinates follow the CLAM/TRIDENT feature files: ``coords`` are the level-0 pixel
coordinates ``(x, y)`` of each patch's top-left corner.

Example:
    >>> import numpy as np
    >>> from gigastream.wsi.reader import SlideReader
    >>> slide = SlideReader.from_array(np.full((512, 512, 3), 200, np.uint8), mpp=0.5)
    >>> grid = patch_grid(slide, mpp=1.0, patch_size=64)  # no mask: every patch
    >>> len(grid), grid.coords[:2].tolist(), read_patches(slide, grid, [0, 5]).shape
    (16, [[0, 0], [128, 0]], (2, 64, 64, 3))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from gigastream.wsi.reader import SlideError, SlideReader
from gigastream.wsi.tissue import NoTissueError, TissueMask


@dataclass(frozen=True)
class PatchGrid:
    """The kept patches of one slide.

    Attributes:
        coords: ``(N, 2)`` int64 level-0 pixel ``(x, y)`` of each patch's top-left corner.
        cells: ``(N, 2)`` int64 ``(row, col)`` of each patch in the grid.
        grid_shape: ``(rows, cols)`` of the full grid (kept or not).
        patch_size: patch edge in pixels at ``mpp``.
        mpp: microns per pixel the patches are read at.
        level0_patch: patch edge in level-0 pixels.
        tissue: ``(N,)`` float32 tissue fraction of each kept patch (1.0 without a mask).
    """

    coords: np.ndarray
    cells: np.ndarray
    grid_shape: tuple[int, int]
    patch_size: int
    mpp: float
    level0_patch: float
    tissue: np.ndarray

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def layout(self, values: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """Per-patch ``values`` ``(N,)`` laid out on the grid ``(rows, cols)`` (e.g. attention)."""
        out = np.full(self.grid_shape, fill, dtype=np.float32)
        out[self.cells[:, 0], self.cells[:, 1]] = np.asarray(values, dtype=np.float32)
        return out


def _tissue_fractions(mask: TissueMask, rows: int, cols: int, cell_um: float) -> np.ndarray:
    """``(rows, cols)`` fraction of each grid cell (``cell_um`` microns square) on tissue."""
    ys = (np.arange(rows * 4) + 0.5) * cell_um / 4 / mask.mpp
    xs = (np.arange(cols * 4) + 0.5) * cell_um / 4 / mask.mpp
    h, w = mask.mask.shape
    inside_y, inside_x = ys < h, xs < w
    sub = np.zeros((rows * 4, cols * 4), dtype=bool)
    r = np.minimum(ys.astype(np.int64), h - 1)
    c = np.minimum(xs.astype(np.int64), w - 1)
    sub[np.ix_(inside_y, inside_x)] = mask.mask[np.ix_(r[inside_y], c[inside_x])]
    return sub.reshape(rows, 4, cols, 4).mean(axis=(1, 3))


def patch_grid(
    slide: SlideReader,
    mpp: float,
    patch_size: int,
    mask: TissueMask | None = None,
    min_tissue: float = 0.5,
) -> PatchGrid:
    """The grid of patches of ``slide`` at ``mpp`` whose tissue fraction is ``>= min_tissue``.

    Only whole patches are laid (the right and bottom remainders are dropped); the tissue
    fraction of a patch is measured on a 4x4 sampling of the mask over it.

    Raises:
        SlideError: ``patch_size`` larger than the slide at ``mpp`` (the message gives both
            sizes and the fix), or a bad ``mpp``/``min_tissue``.
        NoTissueError: no patch reaches ``min_tissue``.
    """
    if patch_size < 1:
        raise SlideError(f"patch_size must be >= 1 px, got {patch_size}")
    if not 0.0 <= min_tissue <= 1.0:
        raise SlideError(f"min_tissue must be a fraction in [0, 1], got {min_tissue}")
    res = slide.resolution(mpp)
    width, height = res.dimensions
    cols, rows = width // patch_size, height // patch_size
    if rows == 0 or cols == 0:
        raise SlideError(
            f"{slide.name}: a {patch_size} px patch is larger than the slide at {mpp} µm/px "
            f"({width}x{height} px); choose a smaller --patch-size or a finer --mpp"
        )
    exact_mpp = res.mpp or mpp
    level0_patch = patch_size * exact_mpp / slide.require_mpp()
    if mask is None:
        fractions = np.ones((rows, cols), dtype=np.float32)
    else:
        fractions = _tissue_fractions(mask, rows, cols, patch_size * exact_mpp)
    keep = fractions >= min_tissue - 1e-9 if mask is not None else fractions > 0
    cells = np.argwhere(keep).astype(np.int64)
    if len(cells) == 0:
        raise NoTissueError(
            f"{slide.name}: no {patch_size} px patch at {mpp} µm/px has a tissue fraction "
            f">= {min_tissue} (tissue covers {mask.tissue_fraction:.1%} of the slide); "
            "lower --min-tissue or check the tissue mask"
        )
    coords = np.stack(
        [np.floor(cells[:, 1] * level0_patch), np.floor(cells[:, 0] * level0_patch)], axis=1
    ).astype(np.int64)
    return PatchGrid(
        coords=coords,
        cells=cells,
        grid_shape=(rows, cols),
        patch_size=int(patch_size),
        mpp=float(mpp),
        level0_patch=float(level0_patch),
        tissue=fractions[keep].astype(np.float32),
    )


def coords_spacing(coords: np.ndarray) -> float | None:
    """The smallest positive step between the level-0 ``x`` or ``y`` of ``coords`` ``(N, 2)``
    (a grid's patch edge in level-0 px), or ``None`` when every patch has the same ``x``
    and the same ``y`` (one patch)."""
    steps = []
    for axis in (0, 1):
        values = np.unique(np.asarray(coords)[:, axis])
        if len(values) > 1:
            steps.append(float(np.diff(values).min()))
    return min(steps) if steps else None


def grid_from_coords(
    coords: np.ndarray, level0_patch: float, patch_size: int = 0, mpp: float = float("nan")
) -> PatchGrid:
    """The :class:`PatchGrid` of patches given by their level-0 top-left ``coords`` ``(N, 2)``
    ``(x, y)`` (a feature file's), with cells of ``level0_patch`` level-0 px from the origin.

    A patch's cell is its corner divided by ``level0_patch``, rounded: exact for the grids
    of :func:`patch_grid`, within half a patch for patches laid from another origin (CLAM's
    contours); of patches that fall in one cell (overlapping patches) the last one is
    shown by :meth:`PatchGrid.layout`.

    Raises:
        SlideError: ``level0_patch`` not positive, or ``coords`` not ``(N, 2)`` with N >= 1.
    """
    coords = np.asarray(coords, dtype=np.int64)
    if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) == 0:
        raise SlideError(f"coords must be (N, 2) with N >= 1, got shape {coords.shape}")
    if not level0_patch > 0:
        raise SlideError(f"the level-0 patch edge must be positive, got {level0_patch}")
    cols = np.floor(coords[:, 0] / level0_patch + 0.5).astype(np.int64)
    rows = np.floor(coords[:, 1] / level0_patch + 0.5).astype(np.int64)
    cells = np.stack([rows, cols], axis=1).clip(min=0)
    grid_shape = (int(cells[:, 0].max()) + 1, int(cells[:, 1].max()) + 1)
    return PatchGrid(
        coords=coords,
        cells=cells,
        grid_shape=grid_shape,
        patch_size=int(patch_size),
        mpp=float(mpp),
        level0_patch=float(level0_patch),
        tissue=np.ones(len(coords), dtype=np.float32),
    )


def read_patches(slide: SlideReader, grid: PatchGrid, indices) -> np.ndarray:
    """The patches ``indices`` of ``grid`` as uint8 ``(n, patch_size, patch_size, 3)``.

    Each patch is read at the grid's mpp from its grid cell, so a patch is the same pixels
    as the same window of the whole slide read at that mpp.
    """
    res = slide.resolution(grid.mpp)
    size = grid.patch_size
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    out = np.empty((len(indices), size, size, 3), dtype=np.uint8)
    if len(indices) == 0:
        return out
    cells = grid.cells[indices]  # (n, 2) row, col
    top, left = cells.min(axis=0)
    rows, cols = cells.max(axis=0) - (top, left) + 1
    if len(indices) > 1 and rows * cols <= 4 * len(indices):
        # dense patches (a bag read whole, a chunk): one read of their bounding box, at
        # most 4x their pixels; the same pixels, as a pixel depends on its position only
        box = slide.read_scaled(res, left * size, top * size, cols * size, rows * size)
        for k, (row, col) in enumerate(cells - (top, left)):
            out[k] = box[row * size : (row + 1) * size, col * size : (col + 1) * size]
        return out
    for k, (row, col) in enumerate(cells):
        out[k] = slide.read_scaled(res, col * size, row * size, size, size)
    return out


class PatchBag:
    """A slide's patches as a lazy bag ``(N, 3, patch_size, patch_size)`` uint8.

    An :class:`~gigastream.streaming.recompute.InputSource`: ``read((slice(a, b),))``
    reads patches ``a:b`` from the slide, so
    :class:`~gigastream.mil.chunked.ChunkedEncoder` holds one chunk of pixels at a time.

    Args:
        slide: the open slide (kept open while the bag is used, backward included).
        grid: its :func:`patch_grid`.
        device: where chunks are put.
    """

    dtype = torch.uint8

    def __init__(self, slide: SlideReader, grid: PatchGrid, device: torch.device | str = "cpu"):
        self.slide = slide
        self.grid = grid
        self.device = torch.device(device)
        size = grid.patch_size
        self.shape = torch.Size((len(grid), 3, size, size))

    def read(self, index: tuple[slice, ...]) -> Tensor:
        """Patches ``index[0]`` as uint8 ``(n, 3, P, P)`` on :attr:`device`."""
        first = index[0] if index else slice(None)
        indices = range(len(self.grid))[first]
        pixels = read_patches(self.slide, self.grid, list(indices))
        out = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
        rest = tuple(index[1:])
        if rest:
            out = out[(slice(None), *rest)]
        return out.to(self.device)

    def take(self, indices) -> Tensor:
        """Patches ``indices`` (any order) as uint8 ``(k, 3, P, P)`` on :attr:`device`; only
        those are read (the ``sample`` strategy's subset)."""
        indices = np.asarray(torch.as_tensor(indices).cpu(), dtype=np.int64).reshape(-1)
        pixels = read_patches(self.slide, self.grid, indices)
        return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().to(self.device)

    def load(self) -> Tensor:
        """The whole bag as one tensor (for small bags)."""
        return self.read((slice(None),))

    def __repr__(self) -> str:
        return f"PatchBag({self.slide.name}, {tuple(self.shape)})"


__all__ = [
    "NoTissueError",
    "PatchBag",
    "PatchGrid",
    "coords_spacing",
    "grid_from_coords",
    "patch_grid",
    "read_patches",
]
