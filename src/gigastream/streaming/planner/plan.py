"""The result of planning: :class:`StreamingPlan` and its :class:`SegmentPlan` rows."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from gigastream.streaming.planner.budget import format_bytes


@dataclass
class SegmentPlan:
    """How one segment runs. Tile sizes are in pixels of the segment's input map.

    Attributes:
        names: the trunk's top-level children in this segment.
        mode: ``"stream"`` (tile by tile, recomputed in backward) or ``"keep"`` (graph kept).
        span: ``[start, stop)`` indices of those children in the trunk.
        offload_input: the segment's input map and its gradient accumulator live in host
            memory; tiles are copied to the device on demand (via pinned staging on CUDA).
        est_graph_bytes: kept: the whole graph; streamed: one tile's graph.
        est_flops: forward + backward, including recomputation, overlap and per-tile overhead.
    """

    names: list[str]
    mode: str  # "stream" or "keep"
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    stride: tuple[int, int]
    receptive_field: tuple[int, int]
    tiles: tuple[int, int] = (1, 1)
    max_tile: tuple[int, int] = (0, 0)  # largest tile input (h, w), segment-input pixels
    overlap: float = 1.0  # sum of tile input areas / input area
    est_graph_bytes: int = 0
    est_flops: float = 0.0
    span: tuple[int, int] = (0, 0)
    offload_input: bool = False

    def __str__(self) -> str:
        what = (
            f"stream {self.tiles[0]}x{self.tiles[1]} tiles <= "
            f"{self.max_tile[0]}x{self.max_tile[1]} px, overlap {self.overlap:.2f}"
            if self.mode == "stream"
            else "keep graph"
        )
        where = ", input in host memory" if self.offload_input else ""
        return (
            f"[{'+'.join(self.names)}] {tuple(self.in_shape)} -> {tuple(self.out_shape)}, "
            f"RF {self.receptive_field[0]}, stride {self.stride[0]}: {what}{where}, "
            f"graph {format_bytes(self.est_graph_bytes)}"
        )


@dataclass
class StreamingPlan:
    """The plan for one input shape; ``str(plan)`` is a table for logs.

    ``est_peak_bytes`` is the estimated peak of device tensor memory (no runtime);
    ``est_host_bytes`` the estimated peak of host memory held by offloaded maps and their
    gradient accumulators, within ``host_memory_budget`` (``None``: no limit was set).
    ``offloaded`` names the segments (by their first child) whose input map is in host memory.

    Example:
        >>> import torch, torchvision
        >>> from gigastream.streaming import StreamingModule
        >>> trunk = torch.nn.Sequential(*list(torchvision.models.resnet18().children())[:-2])
        >>> plan = StreamingModule(trunk.eval(), tile_size=512).plan((1, 3, 2048, 2048))
        >>> plan.segments[0].mode, plan.to_dict()["input_shape"]
        ('stream', (1, 3, 2048, 2048))
    """

    input_shape: tuple[int, ...]
    segments: list[SegmentPlan]
    est_peak_bytes: int
    est_flops: float
    conventional_flops: float
    conventional_bytes: int
    checkpoint_bytes: int  # estimated peak of torch.utils.checkpoint on the same segments
    memory_budget: int | None = None
    offloaded: list[str] = field(default_factory=list)
    est_host_bytes: int = 0
    host_memory_budget: int | None = None
    bytes_per_elem: int = 4
    lazy_input: bool = False
    cuts: str = "planned"  # "planned" (the planner chose them) or "fixed" (given by the user)
    planning_seconds: float = 0.0
    #: a lazy input: host bytes of the decoded pixels the forward keeps for the backward
    #: (3 bytes per position read, tile margins included), and the cache budget when
    #: planned (:class:`~gigastream.streaming.module.StreamingModule`'s ``input_cache``)
    input_cache_bytes: int = 0
    input_cache_budget: int | None = None
    #: the folder of the spill file that holds what does not fit the cache budget
    #: (``input_spill``; ``None``: it is decoded again), and the bytes it will hold
    input_spill_dir: str | None = None
    input_spill_bytes: int = 0

    @property
    def input_decoded_once(self) -> bool:
        """A lazy input is decoded once per step: its kept pixels fit the cache budget."""
        return self.input_cache_budget is not None and (
            self.input_cache_bytes <= self.input_cache_budget + self.input_spill_bytes
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        host_budget = (
            format_bytes(self.host_memory_budget)
            if self.host_memory_budget is not None
            else "unlimited"
        )
        header = (
            f"StreamingPlan for input {tuple(self.input_shape)}: est. peak "
            f"{format_bytes(self.est_peak_bytes)} (conventional {format_bytes(self.conventional_bytes)}"
            + (f", budget {format_bytes(self.memory_budget)}" if self.memory_budget else "")
            + f"), est. compute {self.est_flops / max(self.conventional_flops, 1):.2f}x conventional, "
            f"{len(self.segments)} segment(s), {self.cuts} cuts; host memory "
            f"{format_bytes(self.est_host_bytes)} (budget {host_budget})"
        )
        lines = [header, *(f"  {s}" for s in self.segments)]
        if self.lazy_input and self.input_cache_budget is not None:
            kept = format_bytes(self.input_cache_bytes)
            budget = format_bytes(self.input_cache_budget)
            if self.input_decoded_once and self.input_spill_bytes:
                in_memory = format_bytes(self.input_cache_bytes - self.input_spill_bytes)
                lines.append(
                    f"  input: decoded once per step, {kept} of pixels kept for backward: "
                    f"{in_memory} in memory (input cache {budget}), "
                    f"{format_bytes(self.input_spill_bytes)} in a memory-mapped file in "
                    f"{self.input_spill_dir}"
                )
            elif self.input_decoded_once:
                lines.append(
                    f"  input: decoded once per step, {kept} of pixels kept for backward "
                    f"(input cache {budget})"
                )
            else:
                spill = (
                    f" (the spill folder {self.input_spill_dir} has room for "
                    f"{format_bytes(self.input_spill_bytes)})"
                    if self.input_spill_dir
                    else " (input_spill: a folder to keep it on disk instead)"
                )
                lines.append(
                    f"  input: {kept} of pixels would be kept for backward, over the input "
                    f"cache ({budget}): what does not fit is decoded again in backward{spill}"
                )
        return "\n".join(lines)
