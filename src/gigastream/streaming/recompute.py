"""The piecewise-recompute primitive shared by streaming and MIL gradient accumulation.

Streaming convolution (Pinckaers et al., TPAMI 2020) splits an image *in space*; end-to-end
MIL with gradient accumulation (Andersson et al., 2022) splits a bag *over instances*. Both
are the same computation:

1. forward: run ``fn`` on every piece of the input **without** an autograd graph and write
   the part of each piece's output that the piece *owns* into the full output;
2. the rest of the network runs normally and gives ``dL/d(output)``;
3. backward: recompute every piece **with** a graph and back-propagate the slice of
   ``dL/d(output)`` it owns. Input and parameter gradients are summed over pieces.

Because every output position is owned by exactly one piece, the summed gradients equal
those of running ``fn`` on the whole input (chain rule), while memory holds one piece's
activations. Parameter gradients are returned once per backward (as gradients of the
autograd function's inputs), so ``DistributedDataParallel`` hooks fire once per parameter.

Pieces may instead *keep* their graph from the forward pass (no recomputation), which
trades memory for time; a planner decides which.

A lazy input (an :class:`InputSource`, e.g. a slide decoded tile by tile) is read once per
step when ``input_cache_bytes`` allows: the forward pass keeps what it read for the backward
recompute (the source's compact form, e.g. uint8 pixels, when it has
``read_compact``/``expand``; else the tensors), up to that many bytes; pieces beyond the
budget are written to a memory-mapped spill file when ``input_spill`` names a folder
(:class:`~gigastream.streaming.spill.SpillFile`), else read again. :class:`InputStats`
counts the pixels read in both passes.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gigastream.streaming.input import (
    Index,
    InputSource,
    InputStats,
    _cacheable,
    _compact_reader,
    _nbytes,
    _pixels,
    _reads_ahead,
)
from gigastream.streaming.memory import release_free_memory
from gigastream.streaming.spill import SpillFile

__all__ = ["Index", "InputSource", "InputStats", "Piece", "piecewise_recompute"]


@dataclass(frozen=True)
class Piece:
    """One piece of a piecewise computation.

    Attributes:
        in_index: slices selecting the piece's input from the full input.
        out_index: slices of the full output that the piece owns.
        crop: slices of the piece's own output that hold the owned values; the cropped
            tensor has the shape of ``full_output[out_index]``.
        keep_graph: keep the forward graph of this piece instead of recomputing it in
            backward (faster, costs the piece's activation memory until backward).
    """

    in_index: Index
    out_index: Index
    crop: Index
    keep_graph: bool = False


def _is_stochastic(m: nn.Module) -> bool:
    """A module that draws random numbers in training: dropout, or a drop-path / stochastic
    depth / drop-block layer (timm's ``DropPath``, torchvision's ``StochasticDepth``)."""
    if not m.training:
        return False
    if isinstance(m, nn.modules.dropout._DropoutNd):
        return m.p > 0
    name = type(m).__name__
    if "Drop" in name or "Stochastic" in name:
        rate = next((getattr(m, a) for a in ("drop_prob", "p", "drop_rate") if hasattr(m, a)), None)
        return rate is None or float(rate) > 0
    return False


def _has_stochastic(module: nn.Module | None) -> bool:
    if module is None:
        return True  # unknown function: be safe
    return any(_is_stochastic(m) for m in module.modules())


class _RngState:
    """CPU (and the piece's CUDA device) RNG state, so a recompute replays dropout masks."""

    def __init__(self, device: torch.device) -> None:
        self.cpu = torch.get_rng_state()
        self.device = device if device.type == "cuda" else None
        self.cuda = torch.cuda.get_rng_state(device) if self.device is not None else None

    @contextlib.contextmanager
    def restored(self):
        devices = [self.device] if self.device is not None else []
        with torch.random.fork_rng(devices=devices, enabled=True):
            torch.set_rng_state(self.cpu)
            if self.device is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


@dataclass
class _AutocastState:
    device_type: str
    enabled: bool
    dtype: torch.dtype

    @classmethod
    def capture(cls, device: torch.device) -> _AutocastState:
        device_type = device.type if device.type in ("cuda", "cpu", "xpu", "mps") else "cpu"
        enabled = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type)
        return cls(device_type, enabled, dtype)

    def __call__(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)


class _Transfer:
    """Copies between host memory (offloaded maps) and the compute device.

    On CUDA, loads run on a side stream from pinned staging buffers, one piece ahead of the
    compute (prefetch), and stores go device -> pinned staging on the side stream and are
    written (or added) into the host map by the CPU up to two pieces later, so copies
    overlap the compute. Elsewhere (CPU) the same calls are plain synchronous copies.

    The host maps themselves are ordinary (pageable) memory: every copy goes through a
    tile-sized pinned staging buffer anyway, and torch's pinned-memory allocator would keep
    each freed map cached (sizes rounded up to a power of two) for the rest of the process,
    so the host memory held would exceed what the planner budgets (``est_host_bytes``).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.pending: deque = deque()

    @staticmethod
    def host_empty(shape: Sequence[int], dtype: torch.dtype) -> Tensor:
        """An uninitialised host map (pageable; see the class docstring)."""
        return torch.empty(tuple(shape), dtype=dtype)

    @staticmethod
    def host_zeros(like: Tensor) -> Tensor:
        return torch.zeros(like.shape, dtype=like.dtype)

    def start_load(self, host: Tensor) -> tuple[Tensor, Any]:
        """Begin copying ``host`` (a view of a host map) to the device."""
        if not self.cuda:
            return host.to(self.device, copy=True), None
        staging = torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
        staging.copy_(host)
        assert self.stream is not None
        with torch.cuda.stream(self.stream):
            dev = staging.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        return dev, event

    def finish_load(self, loaded: tuple[Tensor, Any]) -> Tensor:
        dev, event = loaded
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            dev.record_stream(current)
        return dev

    def store(self, value: Tensor, host: Tensor, add: bool = False) -> None:
        """``host.copy_(value)`` (or ``add_``), asynchronously on CUDA."""
        if not self.cuda:
            if add:
                host.add_(value.to(host.device))
            else:
                host.copy_(value)
            return
        assert self.stream is not None
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            staging = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
            staging.copy_(value, non_blocking=True)
            value.record_stream(self.stream)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.pending.append((event, staging, host, add))
        self.drain(keep=2)

    def drain(self, keep: int = 0) -> None:
        """Finish stores until at most ``keep`` are in flight."""
        while len(self.pending) > keep:
            event, staging, host, add = self.pending.popleft()
            event.synchronize()
            if add:
                host.add_(staging)
            else:
                host.copy_(staging)


def _prefetched(items: Sequence[Any], load: Callable[[Any], Any]) -> Iterator[tuple[int, Any]]:
    """``(i, load(items[i]))``, starting each load one item ahead of its use."""
    nxt = load(items[0]) if items else None
    for i in range(len(items)):
        cur = nxt
        nxt = load(items[i + 1]) if i + 1 < len(items) else None
        yield i, cur


class _Runner:
    """Holds everything one application of the primitive needs between forward and backward."""

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        pieces: Sequence[Piece],
        out_shape: Sequence[int],
        params: Sequence[Tensor],
        replay_rng: bool,
        progress: Callable[[int], Any] | None,
        device: torch.device | None,
        offload_input: bool,
        offload_output: bool,
        source: InputSource | None,
        release_memory: bool = False,
        input_cache_bytes: int = 0,
        stats: InputStats | None = None,
        label: str | None = None,
        input_spill: str | os.PathLike | None = None,
    ) -> None:
        self.fn = fn
        self.input_spill = input_spill  # folder of the spill file (None: re-read instead)
        self.spill: SpillFile | None = None
        self.spilled: dict[int, Any] = {}  # piece -> its key in the spill file
        self.label = label  # profiler scope name of its passes (None: none)
        self.release_memory = release_memory
        self.input_cache_bytes = max(0, int(input_cache_bytes))
        self.stats = stats if stats is not None else InputStats()
        self.cache: dict[int, Any] = {}  # piece -> what the forward read (compact or tensor)
        self.device = device  # where fn runs (None: where the input lives)
        self.offload_input = offload_input
        self.offload_output = offload_output
        self.source = source  # a lazy input (None: the input is a tensor argument)
        self.pieces = list(pieces)
        self.out_shape = tuple(out_shape)
        self.params = list(params)
        self.replay_rng = replay_rng
        self.progress = progress
        self.rng: list[_RngState | None] = []
        self.kept: dict[int, tuple[Tensor | None, Tensor]] = {}
        self.autocast: _AutocastState | None = None
        self.transfer: _Transfer | None = None

    def close_spill(self) -> None:
        """Free the spill file of the step (nothing is left on disk)."""
        self.spilled.clear()
        if self.spill is not None:
            self.spill.close()
            self.spill = None


def _scope(label: str | None, phase: str) -> contextlib.AbstractContextManager:
    """A ``torch.profiler`` scope ``"<label> <phase>"`` (nothing without a label): a profile's
    table then lists each streamed segment's forward and backward time."""
    if label is None:
        return contextlib.nullcontext()
    return torch.profiler.record_function(f"{label} {phase}")


class _PiecewiseFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, runner: _Runner, x: Tensor | None, *params: Tensor) -> Tensor:
        with _scope(runner.label, "forward"):
            return _PiecewiseFunction._forward(ctx, runner, x, *params)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        with _scope(ctx.runner.label, "backward"):
            return _PiecewiseFunction._backward(ctx, grad_out)

    @staticmethod
    def _forward(ctx, runner: _Runner, x: Tensor | None, *params: Tensor) -> Tensor:
        source = runner.source if x is None else x
        assert source is not None
        device = runner.device if runner.device is not None else source.device
        runner.autocast = _AutocastState.capture(device)
        xfer = runner.transfer = (
            _Transfer(device) if (runner.offload_input or runner.offload_output) else None
        )

        lazy = x is None
        compact = _compact_reader(source) if lazy else None
        stats = runner.stats
        budget = runner.input_cache_bytes if lazy and _cacheable(source) else 0
        budget_spill = lazy and _cacheable(source) and runner.input_spill is not None
        if lazy:
            stats.pieces = len(runner.pieces)
            stats.budget_bytes = budget
            stats.compact = compact is not None

        def read_piece(index: Index) -> tuple[Tensor, Any]:
            if compact is None:
                return source.read(index), None
            item = compact[0](index)
            return compact[1](item), item

        reads = _reads_ahead(
            source, [piece.in_index for piece in runner.pieces], read_piece if lazy else None
        )
        cached_bytes = 0
        position = 0  # pieces load in order

        def load(piece: Piece) -> Any:
            nonlocal cached_bytes, position
            i, position = position, position + 1
            if not lazy:
                xin = next(reads)
                return xfer.start_load(xin) if runner.offload_input else xin
            xin, item = next(reads)
            stats.pixels_forward += _pixels(source, piece.in_index)
            keep = item if item is not None else xin
            size = _nbytes(keep)
            # a kept graph is not recomputed: its input is not needed again
            if not piece.keep_graph and cached_bytes + size <= budget:
                # a tensor is kept in host memory, as a copy (fn may change its input)
                runner.cache[i] = keep if item is not None else xin.to("cpu", copy=True)
                cached_bytes += size
            elif not piece.keep_graph and budget_spill:
                if runner.spill is None:
                    runner.spill = SpillFile(runner.input_spill)
                if runner.spill.fits(size):
                    key = runner.spill.put(keep)
                    if key is not None:
                        runner.spilled[i] = key
            return xfer.start_load(xin) if runner.offload_input else xin

        out: Tensor | None = None
        for i, loaded in _prefetched(runner.pieces, load):
            piece = runner.pieces[i]
            runner.rng.append(_RngState(device) if runner.replay_rng else None)
            xin = xfer.finish_load(loaded) if runner.offload_input else loaded.to(device)
            if piece.keep_graph:
                with torch.enable_grad():
                    xin_leaf = xin.detach()
                    if x is not None and x.requires_grad:
                        xin_leaf.requires_grad_(True)
                    y = runner.fn(xin_leaf)[piece.crop]
                runner.kept[i] = (xin_leaf if xin_leaf.requires_grad else None, y)
                y = y.detach()
            else:
                y = runner.fn(xin)[piece.crop]
            if out is None:
                if runner.offload_output:
                    out = xfer.host_empty(runner.out_shape, y.dtype)
                else:
                    memory_format = (
                        torch.channels_last
                        if y.dim() == 4
                        and y.is_contiguous(memory_format=torch.channels_last)
                        and not y.is_contiguous()
                        else torch.contiguous_format
                    )
                    out = torch.empty(
                        runner.out_shape,
                        dtype=y.dtype,
                        device=y.device,
                        memory_format=memory_format,
                    )
            if runner.offload_output:
                xfer.store(y, out[piece.out_index])
            else:
                out[piece.out_index] = y
            del xin, y, loaded
            if runner.progress is not None:
                runner.progress(1)
        assert out is not None, "piecewise_recompute needs at least one piece"
        if lazy:
            stats.cached_pieces, stats.cached_bytes = len(runner.cache), cached_bytes
            stats.spilled_pieces = len(runner.spilled)
            stats.spilled_bytes = runner.spill.bytes if runner.spill is not None else 0
        if xfer is not None:
            xfer.drain()
        if runner.release_memory:
            release_free_memory()
        ctx.runner = runner
        ctx.has_input = x is not None
        ctx.save_for_backward(x if x is not None else torch.empty(0))
        return out

    @staticmethod
    def _backward(ctx, grad_out: Tensor):
        runner: _Runner = ctx.runner
        (x,) = ctx.saved_tensors
        source = x if ctx.has_input else runner.source
        want_x = ctx.has_input and ctx.needs_input_grad[1]
        want_p = [ctx.needs_input_grad[2 + k] for k in range(len(runner.params))]
        params = [p for p, w in zip(runner.params, want_p, strict=True) if w]
        if not want_x and not params:
            runner.kept.clear()
            runner.cache.clear()
            runner.close_spill()
            return (None, None, *([None] * len(want_p)))
        device = runner.device if runner.device is not None else source.device
        xfer = runner.transfer
        if want_x:
            grad_x = xfer.host_zeros(x) if runner.offload_input else torch.zeros_like(x)
        else:
            grad_x = None
        grad_p: list[Tensor | None] = [None] * len(params)

        lazy = not ctx.has_input
        compact = _compact_reader(source) if lazy else None
        cache = runner.cache
        reread = [
            p.in_index
            for i, p in enumerate(runner.pieces)
            if i not in runner.kept and i not in cache and i not in runner.spilled
        ]
        reads = _reads_ahead(source, reread)
        if lazy:
            runner.stats.pixels_backward += sum(_pixels(source, index) for index in reread)

        def load(item: tuple[int, Piece]) -> Any:
            i, piece = item
            g = grad_out[piece.out_index]
            g = xfer.start_load(g) if runner.offload_output else g
            if i in runner.kept:
                return g, None
            if i in cache:  # decoded in the forward pass: expanded, not read again
                kept = cache.pop(i)
                xin = compact[1](kept) if compact is not None else kept
            elif i in runner.spilled:  # decoded in the forward pass, kept on disk
                assert runner.spill is not None
                kept = runner.spill.get(runner.spilled.pop(i))
                xin = compact[1](kept) if compact is not None else kept
            else:
                xin = next(reads)
            return g, (xfer.start_load(xin) if runner.offload_input else xin)

        for i, (g, loaded) in _prefetched(list(enumerate(runner.pieces)), load):
            piece = runner.pieces[i]
            g = xfer.finish_load(g) if runner.offload_output else g.to(device)
            if i in runner.kept:
                xin_leaf, y = runner.kept.pop(i)
            else:
                xin = xfer.finish_load(loaded) if runner.offload_input else loaded.to(device)
                xin = xin.detach()
                xin_leaf = xin.requires_grad_(True) if want_x else None
                rng = runner.rng[i]
                rng_ctx = rng.restored() if rng is not None else contextlib.nullcontext()
                assert runner.autocast is not None
                with torch.enable_grad(), rng_ctx, runner.autocast():
                    y = runner.fn(xin_leaf if xin_leaf is not None else xin)[piece.crop]
            inputs = ([xin_leaf] if want_x else []) + params
            if not y.requires_grad:
                continue  # this piece's output does not depend on anything that wants a gradient
            grads = torch.autograd.grad(y, inputs, g.to(y.dtype), allow_unused=True)
            offset = 0
            if want_x:
                assert grad_x is not None
                gx = grads[0]
                if gx is not None:
                    if runner.offload_input:
                        xfer.store(gx, grad_x[piece.in_index], add=True)
                    else:
                        grad_x[piece.in_index] += gx
                offset = 1
            for k, gp in enumerate(grads[offset:]):
                if gp is None:
                    continue
                grad_p[k] = gp if grad_p[k] is None else grad_p[k].add_(gp)
            del y, grads, g, loaded
        if xfer is not None:
            xfer.drain()
        runner.kept.clear()
        runner.cache.clear()
        runner.close_spill()
        if runner.release_memory:
            release_free_memory()
        it = iter(grad_p)
        param_grads = [next(it) if w else None for w in want_p]
        return (None, grad_x, *param_grads)


def piecewise_recompute(
    fn: Callable[[Tensor], Tensor],
    x: Tensor | InputSource,
    pieces: Sequence[Piece],
    out_shape: Sequence[int],
    params: Sequence[Tensor] = (),
    *,
    module: nn.Module | None = None,
    progress: Callable[[int], Any] | None = None,
    device: torch.device | str | None = None,
    offload_input: bool = False,
    offload_output: bool = False,
    release_memory: bool = False,
    input_cache_bytes: int = 0,
    stats: InputStats | None = None,
    label: str | None = None,
    input_spill: str | os.PathLike | None = None,
) -> Tensor:
    """Apply ``fn`` piece by piece, exactly and in bounded memory (see the module docstring).

    Args:
        fn: the function applied to each piece's input (e.g. a conv trunk or an encoder).
        x: the full input tensor, or an :class:`InputSource` read piece by piece.
        pieces: the pieces; their ``out_index`` must partition the output.
        out_shape: shape of the full output.
        params: the tensors ``fn`` closes over that need gradients (usually
            ``module.parameters()``); they receive their gradient once per backward.
        module: the module behind ``fn`` if any; used to decide whether random state
            must be replayed (dropout). Without it the state is always replayed.
        progress: called with 1 after each piece of the forward pass.
        device: where ``fn`` runs (default: where ``x`` lives); pieces are copied there.
        offload_input: ``x`` is a map in host memory (e.g. written by an earlier call with
            ``offload_output``): pieces are copied to ``device`` one ahead of their use, and
            the input gradient is accumulated in host memory.
        offload_output: write the output into host memory (via pinned staging on CUDA; copies
            overlapped with compute on a side stream), not on ``device``.
        release_memory: after the forward and after the backward pass over all pieces,
            return the heap's free memory to the OS
            (:func:`~gigastream.streaming.memory.release_free_memory`; for CPU tensors).
        input_cache_bytes: a lazy ``x`` only: bytes of what the forward pass read that are
            kept for the backward recompute, so those pieces are decoded once per step (the
            source's ``read_compact`` form when it has one with ``expand``; else, for a
            source with ``cache_reads = True``, copies of the read tensors in host memory;
            other sources are read again); 0: every piece is read again in backward.
        stats: filled with what a lazy ``x`` cost to read (:class:`InputStats`).
        input_spill: a lazy ``x`` only: a folder where what the forward read beyond
            ``input_cache_bytes`` is written (an unlinked, memory-mapped temporary file, up
            to the disk's free space less 1 GiB) and read back in backward instead of being
            decoded again; ``None``: those pieces are read again.
        label: name of the ``torch.profiler`` scopes of the forward and the backward pass
            (``"<label> forward"``, ``"<label> backward"``); ``None``: no scope.

    Returns:
        The full output, identical to ``fn(x)`` (pieces must be chosen so that it is),
        connected to ``x`` and ``params`` for autograd.

    Example:
        >>> enc = torch.nn.Linear(4, 2)
        >>> x = torch.randn(10, 4)
        >>> pieces = [Piece((slice(i, i + 3),), (slice(i, i + 3),), (slice(None),))
        ...           for i in range(0, 10, 3)]
        >>> h = piecewise_recompute(enc, x, pieces, (10, 2), list(enc.parameters()))
        >>> torch.allclose(h, enc(x))
        True
    """
    params = [p for p in params if p.requires_grad]
    backward = torch.is_grad_enabled() and (
        bool(params) or (isinstance(x, Tensor) and x.requires_grad)
    )
    if not backward:  # no backward pass will read them: keep nothing (evaluation, no_grad)
        input_cache_bytes, input_spill = 0, None
    runner = _Runner(
        fn,
        pieces,
        out_shape,
        params,
        _has_stochastic(module),
        progress,
        torch.device(device) if device is not None else None,
        offload_input,
        offload_output,
        None if isinstance(x, Tensor) else x,
        release_memory,
        input_cache_bytes,
        stats,
        label,
        input_spill,
    )
    return _PiecewiseFunction.apply(runner, x if isinstance(x, Tensor) else None, *params)
