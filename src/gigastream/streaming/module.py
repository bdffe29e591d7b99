"""``StreamingModule``: run a CNN trunk on an image of any size, exactly, in bounded memory.

Streaming convolution (Pinckaers, van Ginneken, Litjens, TPAMI 2020) with two refinements:

- **one-radius ownership**: every output position is back-propagated from exactly one
  tile (the one that owns it), so a tile needs one receptive-field radius of margin, and
  only on its sides that face another tile; tiles are balanced over the image and placed
  on the output-stride grid, so each computes exactly what the full image computes;
- **planned segmentation**: the trunk is cut at top-level layer boundaries into segments,
  chosen per input shape by the planner; each segment is streamed with its own (much
  smaller) margin and its own tile grid or, for deep low-resolution segments, runs with its
  graph kept. The (graph-free) feature map between segments is stored, on the device or,
  when the budget demands, in host memory; in backward its gradient is accumulated
  there and streamed back through the segment before.

The plan (cuts, tiles, kept graphs, offloaded maps, estimated peak memory and compute) is
chosen by :func:`gigastream.streaming.planner.plan_trunk` from ``tile_size`` and/or
``memory_budget`` and is available as :attr:`StreamingModule.last_plan`.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gigastream.streaming import memory
from gigastream.streaming.batchnorm import freeze_batchnorm as _freeze_batchnorm
from gigastream.streaming.batchnorm import training_batchnorms
from gigastream.streaming.folding import fold_batchnorm as _fold_batchnorm
from gigastream.streaming.geometry import Geometry, StreamingError, describe
from gigastream.streaming.memory import AUTO_TUNE_BYTES, available_memory, tune_cpu_allocator
from gigastream.streaming.planner import (
    StreamingPlan,
    make_pieces,
    parse_bytes,
    plan_trunk,
    split_segments,
)
from gigastream.streaming.recompute import InputSource, InputStats, piecewise_recompute
from gigastream.streaming.spill import spill_capacity

logger = logging.getLogger(__name__)


class StreamingModule(nn.Module):
    """Wrap a CNN trunk so it runs tile by tile with gradients equal to the ordinary ones.

    Args:
        trunk: the local part of the network (everything before global pooling), usually an
            ``nn.Sequential``. Supported layers: Conv2d (any kernel, stride, dilation,
            groups, zero padding incl. ``'same'``), MaxPool2d/AvgPool2d, BatchNorm2d in eval
            mode, pointwise modules (activations, Dropout), nested Sequentials, torchvision
            ResNet BasicBlock/Bottleneck, and custom modules that describe their geometry
            (see :mod:`gigastream.streaming.geometry`).
        tile_size: largest tile, in input-image pixels (margins included).
        memory_budget: bytes or e.g. ``"4GiB"``: the planner picks the fastest plan whose
            estimated peak tensor memory fits. With only ``tile_size`` the budget is what
            streaming every segment at that tile size needs.
        segments: ``"auto"``: the planner chooses the cuts (any subset of the trunk's
            top-level boundaries, per input shape); ``"none"``: one segment; or names of
            top-level children to cut before (exactly those cuts).
        freeze_batchnorm: replace the trunk's BatchNorm layers, in place, by frozen ones
            (:func:`gigastream.streaming.batchnorm.freeze_batchnorm`: running statistics
            whatever the mode, trainable affine parameters, same ``state_dict`` keys);
            otherwise a train-mode BatchNorm raises an error (it cannot stream exactly).
        fold_batchnorm: fold every frozen BatchNorm that follows a convolution into it
            (:func:`gigastream.streaming.folding.fold_batchnorm`: one convolution with
            ``w' = w·γ/σ``, ``b' = β − μ·γ/σ`` computed at every call and differentiated by
            autograd, so every parameter's gradient stays that of the unfolded trunk to
            rounding; the BatchNorm's own forward and backward pass disappear), in place,
            after ``freeze_batchnorm``. Checkpoint keys do not change.
        progress: show a progress bar over tiles.
        tune_allocator: on CPU, fix glibc's mmap threshold so freed tile buffers leave
            the resident set (see :func:`tune_cpu_allocator`): ``"auto"`` for inputs whose
            conventional computation would need more than 16 GiB, ``True`` always (lowest
            memory, slower), ``False`` never.
        offload: keep feature maps between streamed segments (and their gradient
            accumulators) in host memory: ``"auto"`` where the device budget demands it
            (CUDA only: on CPU host memory is the device memory), ``True`` between every two
            streamed segments (on CPU: a separate buffer, same results), ``False`` never.
        channels_last: run the tiles in ``torch.channels_last`` memory format (often faster
            convolutions on GPU; unmeasured here). Values are the same up to the
            convolution algorithm's rounding.
        release_memory: after each streamed segment's forward and backward pass, return the
            heap's free memory to the OS (glibc ``malloc_trim``; see
            :func:`~gigastream.streaming.memory.release_free_memory`): ``"auto"`` on CPU
            for inputs whose conventional computation would need more than 4 GiB
            (3072² ResNet-34: peak 3065 -> 2532 MiB at no measurable cost in time; on small
            inputs the trim costs ~20% per step and is skipped), ``True``/``False``
            always/never.
        host_memory_budget: bytes or e.g. ``"64GiB"``: the most host memory the offloaded
            maps and their gradient accumulators may take (``plan.est_host_bytes``); the
            planner only chooses plans within it. ``None``: the memory available on the
            machine when the plan is made (``MemAvailable``).
        input_cache: a lazy input (a slide) is decoded once per step: what the forward
            pass read is kept for the backward recompute, up to this many bytes (e.g.
            ``"2GiB"``; ``0``: read every tile again in backward); ``"auto"``: a quarter of
            the host memory available at each step. A ``SlideSource`` keeps uint8 pixels
            (3 bytes per position); :attr:`last_input_stats` says what was read.
        input_spill: a folder (e.g. a run folder's ``cache/``) where what a lazy input's
            forward read beyond ``input_cache`` goes: an unlinked temporary file,
            memory-mapped back in backward (:class:`~gigastream.streaming.spill.SpillFile`),
            so the input is still decoded once per step; ``None``: it is decoded again.
            The plan says which.

    Example:
        >>> import torchvision
        >>> trunk = nn.Sequential(*list(torchvision.models.resnet18().children())[:-2]).eval()
        >>> streamed = StreamingModule(trunk, tile_size=512)
        >>> image = torch.randn(1, 3, 700, 900)
        >>> fmap = streamed(image)
        >>> torch.allclose(fmap, trunk(image), atol=1e-5)
        True
    """

    def __init__(
        self,
        trunk: nn.Module,
        tile_size: int | None = None,
        memory_budget: int | str | None = None,
        *,
        segments: str | Sequence[str] | None = "auto",
        freeze_batchnorm: bool = False,
        fold_batchnorm: bool = False,
        progress: bool = False,
        tune_allocator: bool | str = "auto",
        offload: bool | str = "auto",
        channels_last: bool = False,
        host_memory_budget: int | str | None = None,
        release_memory: bool | str = "auto",
        input_cache: int | str = "auto",
        input_spill: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if tile_size is None and memory_budget is None:
            raise StreamingError(
                "StreamingModule needs tile_size (pixels, e.g. 2048) or memory_budget (e.g. '4GiB')"
            )
        if tile_size is not None and int(tile_size) < 1:
            raise StreamingError(f"tile_size must be a positive number of pixels, got {tile_size}")
        for budget in (memory_budget, host_memory_budget):
            if budget is not None:
                parse_bytes(budget)  # validate early
        if release_memory not in (True, False, "auto"):
            raise StreamingError(
                f"release_memory must be True, False or 'auto', got {release_memory!r}"
            )
        if offload not in (True, False, "auto"):
            raise StreamingError(f"offload must be True, False or 'auto', got {offload!r}")
        if freeze_batchnorm:
            trunk = _freeze_batchnorm(trunk)
        self.folded_batchnorms = _fold_batchnorm(trunk) if fold_batchnorm else 0
        self.trunk = trunk
        self.tile_size = int(tile_size) if tile_size is not None else None
        self.memory_budget = memory_budget
        self.host_memory_budget = host_memory_budget
        self.progress = progress
        self.tune_allocator = tune_allocator
        self.offload = offload
        self.channels_last = channels_last
        self.release_memory = release_memory
        if input_cache != "auto":
            parse_bytes(input_cache)  # validate early
        self.input_cache = input_cache
        self.input_spill = input_spill
        #: what the last forward read from a lazy input (InputStats; None: a tensor input)
        self.last_input_stats: InputStats | None = None
        # units: the trunk's top-level children (a non-Sequential trunk is one unit); the
        # segments built from them reference the trunk's own modules (no copies)
        if isinstance(trunk, nn.Sequential):
            self._units = list(trunk.named_children())
            if not self._units:
                raise StreamingError(
                    "the trunk is an empty nn.Sequential: there is nothing to stream"
                )
        else:
            self._units = [(type(trunk).__name__, trunk)]
        self._geometries = [describe(mod, name) for name, mod in self._units]
        if segments == "auto" or len(self._units) == 1:
            self._cuts: str | list[int] = "planned"
        elif segments is None or segments == "none":
            self._cuts = []
        elif isinstance(segments, str):
            raise StreamingError(
                f"segments must be 'auto' (planned cuts), 'none' or a list of the trunk's "
                f"top-level child names, got {segments!r}"
            )
        else:
            split_segments(trunk, segments)  # validates the names
            names = [n for n, _ in self._units]
            self._cuts = sorted({names.index(n) for n in segments} - {0})
        self._span_modules: dict[tuple[int, int], nn.Module] = {}
        self._plans: dict[tuple, StreamingPlan] = {}
        self.last_plan: StreamingPlan | None = None

    def _span_module(self, start: int, stop: int) -> nn.Module:
        """The trunk's children ``start..stop-1`` as one module (shares their parameters)."""
        key = (start, stop)
        if key not in self._span_modules:
            units = self._units[start:stop]
            self._span_modules[key] = (
                units[0][1] if len(units) == 1 else nn.Sequential(OrderedDict(units))
            )
        return self._span_modules[key]

    def _offload_setting(self, device: torch.device) -> bool | str:
        if self.offload == "auto":
            return "auto" if device.type == "cuda" else False
        return self.offload

    def plan(
        self,
        input_shape: Sequence[int],
        dtype: torch.dtype = torch.float32,
        *,
        input_requires_grad: bool = False,
        lazy_input: bool = False,
        device: torch.device | str = "cpu",
        available_bytes: int | None = None,
        available_host_bytes: int | None = None,
    ) -> StreamingPlan:
        """The plan for an input of ``input_shape`` (B, C, H, W), cached per shape.

        Planning needs no memory and no compute (shapes come from the ``meta`` device), so
        it works for any size, e.g. ``plan((1, 3, 65536, 65536), torch.bfloat16,
        lazy_input=True, device="cuda", available_bytes=80 * 2**30)`` on a machine without
        a GPU. ``available_bytes`` defaults to the free memory of ``device``;
        ``available_host_bytes`` (the host budget unless ``host_memory_budget`` was given)
        to the machine's available memory.
        """
        device = torch.device(device)
        key = (
            tuple(input_shape),
            dtype,
            input_requires_grad,
            lazy_input,
            device.type,
            available_bytes,
            available_host_bytes,
        )
        if key not in self._plans:
            itemsize = torch.empty((), dtype=dtype).element_size()
            if available_bytes is None and (device.type != "cuda" or torch.cuda.is_available()):
                available_bytes = available_memory(device)
            if available_host_bytes is None and self.host_memory_budget is None:
                available_host_bytes = available_memory(torch.device("cpu"))
            self._plans[key] = plan_trunk(
                self._units,
                input_shape,
                geometries=self._geometries,
                cuts=self._cuts,
                bytes_per_elem=itemsize,
                tile_size=self.tile_size,
                memory_budget=self.memory_budget,
                input_requires_grad=input_requires_grad,
                lazy_input=lazy_input,
                available_bytes=available_bytes,
                offload=self._offload_setting(device),
                host_memory_budget=self.host_memory_budget,
                available_host_bytes=available_host_bytes,
            )
            if lazy_input:
                self._plan_input_cache(self._plans[key])
            logger.info("%s", self._plans[key])
        return self._plans[key]

    def _plan_input_cache(self, plan: StreamingPlan) -> None:
        """Fill in what the input cache will hold: the first (streamed) segment's tile
        inputs as uint8 pixels (overlap x the input's positions x 3 bytes), and the budget
        in force now (``"auto"`` follows the memory available at each step)."""
        first = plan.segments[0]
        batch, _, height, width = plan.input_shape
        plan.input_cache_bytes = int(3 * batch * height * width * first.overlap)
        try:
            plan.input_cache_budget = self._input_cache_bytes()
        except ValueError:  # a bad budget is refused when the step runs
            plan.input_cache_budget = None
        over = plan.input_cache_bytes - (plan.input_cache_budget or 0)
        if self.input_spill is not None and plan.input_cache_budget is not None and over > 0:
            plan.input_spill_dir = os.fspath(self.input_spill)
            plan.input_spill_bytes = min(over, spill_capacity(self.input_spill))

    def _check_modes(self) -> None:
        names = training_batchnorms(self.trunk)
        if names:
            raise StreamingError(
                f"cannot stream {names[0]!r} (BatchNorm in train mode): batch statistics "
                "couple all positions of the image. Use StreamingModule(..., "
                "freeze_batchnorm=True) or call .eval() on the trunk."
            )

    def forward(self, x: Tensor | InputSource) -> Tensor:
        """Run the trunk on ``x`` (B, C, H, W) -> the trunk's output feature map.

        ``x`` may be a tensor (``requires_grad`` gives the input gradient) or an
        :class:`~gigastream.streaming.recompute.InputSource` that is read tile by tile.
        """
        lazy = not isinstance(x, Tensor)
        ndim = x.dim() if isinstance(x, Tensor) else len(x.shape)
        if ndim != 4:
            raise StreamingError(
                f"StreamingModule expects (B, C, H, W) input, got shape {tuple(x.shape)}"
            )
        self._check_modes()
        dtype = x.dtype
        device_type = x.device.type if x.device.type in ("cuda", "cpu") else "cpu"
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
        plan = self.plan(
            tuple(x.shape),
            dtype,
            input_requires_grad=(not lazy and x.requires_grad),
            lazy_input=lazy,
            device=x.device,
        )
        self.last_plan = plan
        if x.device.type == "cpu" and (
            self.tune_allocator is True
            or (self.tune_allocator == "auto" and plan.conventional_bytes > AUTO_TUNE_BYTES)
        ):
            tune_cpu_allocator()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            total = sum(s.tiles[0] * s.tiles[1] for s in plan.segments if s.mode == "stream")
            bar = tqdm(total=total, desc="streaming tiles", leave=False, disable=None)
        param = next(self.trunk.parameters(), None)
        compute_device = param.device if param is not None else x.device
        release = self.release_memory is True or (
            self.release_memory == "auto"
            and compute_device.type == "cpu"
            and plan.conventional_bytes > memory.AUTO_RELEASE_BYTES
        )
        try:
            h: Tensor | InputSource = x
            for seg_plan in plan.segments:
                start, stop = seg_plan.span
                module = self._span_module(start, stop)
                label = self._segment_label(start, stop, seg_plan.mode)
                if seg_plan.mode == "keep":
                    assert isinstance(h, Tensor)
                    with torch.profiler.record_function(f"{label} forward"):
                        h = module(self._format(h))
                    continue
                geometry = Geometry.chain(*self._geometries[start:stop])
                pieces = make_pieces(
                    geometry, seg_plan.in_shape[-2:], seg_plan.out_shape[-2:], seg_plan.tiles
                )
                out_offloaded = any(s.offload_input and s.span[0] == stop for s in plan.segments)
                source = not isinstance(h, Tensor)
                if source:
                    self.last_input_stats = InputStats()
                h = piecewise_recompute(
                    module if not self.channels_last else (lambda t, m=module: m(self._format(t))),
                    h,
                    pieces,
                    seg_plan.out_shape,
                    list(module.parameters()),
                    module=module,
                    progress=bar.update if bar is not None else None,
                    device=compute_device,
                    offload_input=seg_plan.offload_input,
                    offload_output=out_offloaded,
                    release_memory=release,
                    input_cache_bytes=self._input_cache_bytes() if source else 0,
                    stats=self.last_input_stats if source else None,
                    label=label,
                    input_spill=self.input_spill if source else None,
                )
        finally:
            if bar is not None:
                bar.close()
        assert isinstance(h, Tensor)
        return h

    def _segment_label(self, start: int, stop: int, mode: str) -> str:
        """The profiler scope name of units ``start:stop``, e.g. ``"gigastream stream
        0-4 (conv1..layer1)"``."""
        first, last = self._units[start][0], self._units[stop - 1][0]
        names = first if start == stop - 1 else f"{first}..{last}"
        return f"gigastream {mode} {start}-{stop - 1} ({names})"

    def _input_cache_bytes(self) -> int:
        """The budget of the lazy input's cache (``input_cache``): ``"auto"`` is a
        quarter of the host memory available now."""
        if self.input_cache == "auto":
            return (available_memory(torch.device("cpu")) or 0) // 4
        return parse_bytes(self.input_cache)

    def _format(self, t: Tensor) -> Tensor:
        if self.channels_last and t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        return t
