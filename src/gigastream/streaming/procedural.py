"""A lazy procedural image: deterministic pseudo-random pixels computed per region.

:class:`ProceduralSource` implements :class:`~gigastream.streaming.recompute.InputSource`
for benchmarks at sizes no image could occupy in memory (65536^2 px and more): pixel
``(c, y, x)`` is an integer hash of its global coordinates and the seed, so any region is
generated on demand on the target device and equals the same window of the whole image.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gigastream.streaming.recompute import Index


class ProceduralSource:
    """A ``(B, C, H, W)`` image of pseudo-random values in ``[-1, 1)``, never materialised.

    Args:
        shape: (B, C, H, W).
        seed: changes every pixel.
        dtype: floating dtype of the pixels returned.
        device: where regions are generated.

    Example:
        >>> src = ProceduralSource((1, 3, 65536, 65536))
        >>> tile = src.read((slice(None), slice(None), slice(100, 164), slice(0, 64)))
        >>> tile.shape
        torch.Size([1, 3, 64, 64])
    """

    def __init__(
        self,
        shape: tuple[int, int, int, int],
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if len(shape) != 4:
            raise ValueError(f"ProceduralSource needs a (B, C, H, W) shape, got {shape}")
        self.shape = torch.Size(shape)
        self.seed = int(seed)
        self.dtype = dtype
        self.device = torch.device(device)
        self.reads = 0

    def read(self, index: Index) -> Tensor:
        """``full_image[index]`` for an index of step-1 slices."""
        index = tuple(index) + (slice(None),) * (4 - len(index))
        ranges = []
        for sl, n in zip(index, self.shape, strict=True):
            if not isinstance(sl, slice) or sl.step not in (None, 1):
                raise IndexError("ProceduralSource reads step-1 slices only")
            start, stop, _ = sl.indices(n)
            ranges.append(torch.arange(start, stop, device=self.device, dtype=torch.int64))
        self.reads += 1
        b, c, y, x = ranges
        h = (
            b.view(-1, 1, 1, 1) * 2654435761
            + c.view(1, -1, 1, 1) * 2246822519
            + y.view(1, 1, -1, 1) * 3266489917
            + x.view(1, 1, 1, -1) * 668265263
            + self.seed * 374761393
        )
        h = (h ^ (h >> 15)) * 2246822519
        h = (h ^ (h >> 13)) & 0xFFFF
        return (h.to(torch.float32) / 32768.0 - 1.0).to(self.dtype)


__all__ = ["ProceduralSource"]
