"""Lazy inputs of the piecewise primitive: the :class:`InputSource` protocol, reading ahead
of the compute on a background thread, and what a step read (:class:`InputStats`).

A lazy input (a slide, decoded tile by tile) is read once per step when the input cache of
:func:`~gigastream.streaming.recompute.piecewise_recompute` allows: the forward pass keeps what
it read (the source's compact form, ``read_compact``/``expand``, e.g. uint8 pixels; or, for a
source with ``cache_reads = True``, the tensors) for the backward recompute.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from gigastream.read_order import next_ticket, run_with_ticket

Index = tuple[slice, ...]


@runtime_checkable
class InputSource(Protocol):
    """A lazy input: the full input is never materialised; pieces are read on demand.

    ``shape``, ``dtype`` and ``device`` describe the full input; ``read(index)`` returns
    ``full_input[index]`` as a tensor. No gradient flows into a source.

    A source may also offer a compact form of what it reads, for the input cache of
    :func:`piecewise_recompute`: ``read_compact(index)`` returns an object with ``nbytes``
    (e.g. the uint8 pixels) and ``expand(compact)`` the tensor that ``read(index)`` returns,
    bit for bit.
    """

    shape: torch.Size
    dtype: torch.dtype
    device: torch.device

    def read(self, index: Index) -> Tensor: ...


def _read(x: Tensor | InputSource, index: Index) -> Tensor:
    if isinstance(x, Tensor):
        return x[index]
    return x.read(index)


def _pixels(source: Tensor | InputSource, index: Index) -> int:
    """Spatial positions (``H x W`` of one image) that ``source[index]`` covers."""
    size = 1
    for axis, dim in ((-2, len(source.shape) - 2), (-1, len(source.shape) - 1)):
        sl = index[axis] if len(index) > dim else slice(None)
        start, stop, _ = sl.indices(source.shape[dim])
        size *= max(0, stop - start)
    return size


@dataclass
class InputStats:
    """What one step read from a lazy input (:func:`piecewise_recompute` with a source).

    Attributes:
        pieces: pieces of the input.
        pixels_forward: spatial positions read in the forward pass (tile margins included).
        pixels_backward: positions read again in the backward recompute (0 when every
            piece was cached or kept its graph).
        cached_pieces: pieces kept from the forward pass for the backward one.
        cached_bytes: the most bytes the kept pieces held at once.
        budget_bytes: the cache budget of the step.
        spilled_pieces: pieces beyond the budget kept in the spill file (``input_spill``).
        spilled_bytes: bytes written to the spill file.
        compact: whether pieces were kept in the source's compact form (e.g. uint8).
    """

    pieces: int = 0
    pixels_forward: int = 0
    pixels_backward: int = 0
    cached_pieces: int = 0
    cached_bytes: int = 0
    budget_bytes: int = 0
    spilled_pieces: int = 0
    spilled_bytes: int = 0
    compact: bool = False

    @property
    def pixels_read(self) -> int:
        """Positions decoded in the step (forward + backward)."""
        return self.pixels_forward + self.pixels_backward


def _compact_reader(source: Any) -> tuple[Callable[[Index], Any], Callable[[Any], Tensor]] | None:
    """``(read_compact, expand)`` of a source that offers a compact form, else ``None``."""
    read_compact = getattr(source, "read_compact", None)
    expand = getattr(source, "expand", None)
    if callable(read_compact) and callable(expand):
        return read_compact, expand
    return None


def _cacheable(source: Any) -> bool:
    """Whether a lazy input's reads are worth keeping for the recompute: it offers a
    compact form (a slide's uint8 pixels) or says so with ``cache_reads = True``. A
    source that generates its pixels cheaply (``ProceduralSource``) is read again."""
    return _compact_reader(source) is not None or bool(getattr(source, "cache_reads", False))


def _nbytes(item: Any) -> int:
    if isinstance(item, Tensor):
        return item.numel() * item.element_size()
    return int(item.nbytes)


def read_workers(source: Any) -> int:
    """How many threads may read ``source`` at once (its ``read_workers``, default 1)."""
    try:
        workers = int(getattr(source, "read_workers", 1))
    except (TypeError, ValueError):
        return 1
    return max(1, workers)


def _reads_ahead(
    source: Tensor | InputSource,
    indices: Sequence[Index],
    read: Callable[[Index], Any] | None = None,
) -> Iterator[Any]:
    """``source[index]`` for each index in order; a lazy source read on the host (a slide:
    decoding on the CPU) is read on background threads, ahead of its use, so reading
    overlaps the compute.

    A source says so with ``read_ahead = True`` (``SlideSource`` does, whatever its device);
    without the attribute, sources on the CPU are read ahead. ``read_workers`` threads
    (the source's attribute, default 1) read the next pieces in the order they are used,
    at most that many pieces ahead; with one thread a source is never read by two threads
    at once, with more the source must allow it (``SlideSource`` does). A tensor, or a
    source that generates its pixels on an accelerator (``ProceduralSource`` on CUDA), is
    read in the caller's thread: its reads are queued device work already. ``read``: what
    to call per index instead of ``source.read`` (e.g. a read that also keeps the compact
    form)."""
    ahead = not isinstance(source, Tensor) and getattr(
        source, "read_ahead", torch.device(source.device).type == "cpu"
    )
    if read is None:
        read = (lambda index: _read(source, index)) if isinstance(source, Tensor) else source.read
    if not ahead or len(indices) < 2:
        for index in indices:
            yield read(index)
        return
    workers = min(read_workers(source), len(indices))
    with ThreadPoolExecutor(workers, thread_name_prefix="gigastream-read") as pool:
        # each piece's ticket, drawn in the stream's order: a source that cuts a piece into
        # bands for a shared pool of readers decodes the earlier piece's bands first
        pending = deque(
            pool.submit(run_with_ticket, next_ticket(), read, indices[k]) for k in range(workers)
        )
        submitted = workers
        try:
            while pending:
                current = pending.popleft().result()
                if submitted < len(indices):
                    pending.append(
                        pool.submit(run_with_ticket, next_ticket(), read, indices[submitted])
                    )
                    submitted += 1
                yield current
        finally:  # an error or an abandoned stream: reads not started are not made
            for future in pending:
                future.cancel()
