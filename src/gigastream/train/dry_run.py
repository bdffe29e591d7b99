"""``train --dry-run``: the streaming plan of a run's slides and what a step will cost.

For a patch-bag model (``model.kind: patches``) :func:`dry_run` gives a
:class:`PatchDryRunReport` instead: the tissue patches of the largest and the median slide,
the chunks a training step encodes and the activation memory of the strategy (measured on
one patch).

:func:`dry_run` opens every slide of a prepared run (nothing is written, no trunk weights
are loaded, the configured device need not be present), plans the streaming of the largest
and the median slide on the configured device (and, on a machine without a GPU, on a GPU
and on this CPU), and returns a :class:`DryRunReport`: the device memory the planner
bounds, the host memory of offloaded maps, and the seconds per slide expected at the
throughput measured for the device and precision
(:func:`~gigastream.streaming.throughput.expected_seconds`).

Example:
    >>> prepared = prepare(config, check_plan=False, check_device=False)  # doctest: +SKIP
    >>> report = dry_run(prepared)  # doctest: +SKIP
    >>> print(report)  # doctest: +SKIP
    precision 32; trunk vgg_small; tiles/budget from model settings
    largest slide: synth_003 256x256 px at 1.0 um/px
    ...
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace

from gigastream import precision as precisions
from gigastream.streaming.planner import StreamingPlan, format_bytes
from gigastream.train.preparation import PreparedRun, build_model
from gigastream.wsi.reader import SlideError, SlideReader

#: ``(1, 3, H, W)`` input shape and slide id of a readable slide.
Shape = tuple[tuple[int, ...], str]


@dataclass
class DeviceEstimate:
    """The plan of one slide on one device.

    Attributes:
        device: ``cuda`` (a GPU) or ``cpu`` (this machine's CPU).
        peak_bytes: device memory, the planner's upper bound.
        host_bytes: host memory of offloaded maps (0: none).
        seconds: expected seconds of forward + backward (``None``: nothing measured).
        measured_on: where the throughput behind ``seconds`` was measured.
        epoch_seconds: trunk compute of one epoch over the training slides at this
            slide's speed (the median slide only).
    """

    device: str
    peak_bytes: int
    host_bytes: int
    seconds: float | None = None
    measured_on: str | None = None
    epoch_seconds: float | None = None

    def line(self) -> str:
        where = "a GPU" if self.device == "cuda" else "this machine's CPU"
        line = (
            f"  on {where}: device memory <= {format_bytes(self.peak_bytes)} (planner upper bound)"
        )
        if self.host_bytes:
            line += f", host memory {format_bytes(self.host_bytes)}"
        if self.seconds is not None:
            line += f", ~{self.seconds:.3g} s per slide (forward+backward; at the throughput "
            line += f"measured on {self.measured_on})"
            if self.epoch_seconds is not None:
                line += f"; ~{self.epoch_seconds / 60:.3g} min of trunk compute per epoch"
        return line


@dataclass
class SlidePlan:
    """The plans of one slide (``role``: ``largest`` or ``median``) on every planned device."""

    role: str
    slide_id: str
    shape: tuple[int, ...]
    plan: StreamingPlan  # on the first planned device
    estimates: list[DeviceEstimate]


@dataclass
class DryRunReport:
    """What :func:`dry_run` found; ``str(report)`` is what ``train --dry-run`` prints.

    Attributes:
        precision: the run's precision (Lightning's name).
        arch: the trunk.
        mpp: the resolution the slides stream at.
        unreadable: one reason per slide that could not be opened.
        slides: the plans of the largest and the median slide (empty: no readable slide).
        pixels: input pixels of every readable slide.
    """

    precision: str
    arch: str
    mpp: float
    unreadable: list[str] = field(default_factory=list)
    slides: list[SlidePlan] = field(default_factory=list)
    pixels: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """At least one slide was readable and planned."""
        return bool(self.slides)

    def __str__(self) -> str:
        lines = [f"unreadable: {reason}" for reason in self.unreadable]
        if not self.slides:
            return "\n".join([*lines, "no readable slide"])
        lines.append(
            f"precision {self.precision}; trunk {self.arch}; tiles/budget from model settings"
        )
        for slide in self.slides:
            height, width = slide.shape[2], slide.shape[3]
            lines.append(
                f"{slide.role} slide: {slide.slide_id} {height}x{width} px at {self.mpp} um/px"
            )
            if slide.role == "largest":
                lines.append(str(slide.plan))
            lines += [estimate.line() for estimate in slide.estimates]
        lines.append(
            f"{len(self.pixels)} slides: {statistics.median(self.pixels) / 1e6:.1f} Mpx median, "
            f"{max(self.pixels) / 1e6:.1f} Mpx largest (estimates scale with the pixels; other "
            "trunks and GPUs run at other speeds)"
        )
        return "\n".join(lines)


def _slide_shapes(prepared: PreparedRun) -> tuple[list[Shape], list[str]]:
    """The input shapes of the readable slides (smallest first) and the unreadable ones
    (also those whose input is under a pixel or over ``data.max_input_pixels``)."""
    from gigastream.train.data import check_slide_input
    from gigastream.wsi.source import SlideSource

    data = prepared.config.data
    shapes, unreadable = [], []
    for row in prepared.train_rows + prepared.val_rows:
        try:
            with SlideReader.open(row.path, mpp=row.mpp, backend=data.backend) as slide:
                check_slide_input(slide, row.slide_id, data)  # training would skip it
                shapes.append((tuple(SlideSource(slide, mpp=data.mpp).shape), row.slide_id))
        except SlideError as exc:
            unreadable.append(str(exc))
    shapes.sort(key=lambda s: s[0][2] * s[0][3])
    return shapes, unreadable


@dataclass
class PatchBagPlan:
    """The bag of one slide (``role``: ``largest`` or ``median``) of a patch-bag run."""

    role: str
    slide_id: str
    shape: tuple[int, ...]  # (1, 3, H, W) of the slide at the run's mpp
    patches: int  # tissue patches (instances); 0 when ``error``
    grid: tuple[int, int]
    error: str | None = None


@dataclass
class PatchDryRunReport:
    """What :func:`dry_run` found for a patch-bag model; ``str(report)`` is what it prints.

    Attributes:
        encoder: the encoder's name; ``out_dim`` its feature size; ``trainable`` and
            ``parameters`` its trainable and total parameter counts.
        patch_size, mpp, strategy, chunk_size, sample_size, preload_pixels: the settings.
        bytes_per_patch: activation bytes autograd keeps per patch (float32, measured).
        unreadable: one reason per slide that could not be opened.
        slides: the bags of the largest and the median slide.
    """

    encoder: str
    out_dim: int
    trainable: int
    parameters: int
    patch_size: int
    mpp: float
    strategy: str
    chunk_size: int
    sample_size: int
    preload_pixels: int
    bytes_per_patch: int
    unreadable: list[str] = field(default_factory=list)
    slides: list[PatchBagPlan] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """At least one slide was readable and has tissue patches."""
        return any(slide.patches for slide in self.slides)

    def step(self, patches: int) -> str:
        """What one training step on a bag of ``patches`` encodes and keeps."""
        size = self.patch_size
        chunks = -(-patches // self.chunk_size)
        if self.strategy == "accumulate":
            graph, what = min(patches, self.chunk_size), f"{chunks} chunks of {self.chunk_size}"
        elif self.strategy == "sample":
            graph = min(patches, self.sample_size)
            what = f"{graph} sampled patches"
        elif self.strategy == "frozen":
            graph = 0
            what = f"the head only (features: {chunks} chunks without a graph, once, then cached)"
        else:
            graph, what = patches, "the whole bag in one graph"
        pixels = patches * size * size
        held = "read by the worker" if pixels <= self.preload_pixels else "lazy, read per chunk"
        return (
            f"  a training step: {what}; activations ~{format_bytes(graph * self.bytes_per_patch)}"
            f" (float32); pixels {format_bytes(3 * pixels)} ({held}); evaluation: "
            f"{chunks} chunks without a graph"
        )

    def __str__(self) -> str:
        lines = [f"unreadable: {reason}" for reason in self.unreadable]
        lines.append(
            f"patch model: encoder {self.encoder} ({self.out_dim} features, "
            f"{self.trainable:,} of {self.parameters:,} parameters train); {self.patch_size} px "
            f"patches at {self.mpp} um/px; strategy {self.strategy}; "
            f"~{format_bytes(self.bytes_per_patch)} of activations per patch (float32)"
        )
        if not self.slides:
            return "\n".join([*lines, "no readable slide"])
        for slide in self.slides:
            height, width = slide.shape[2], slide.shape[3]
            head = f"{slide.role} slide: {slide.slide_id} {height}x{width} px at {self.mpp} um/px"
            if slide.error is not None:
                lines += [f"{head}: {slide.error}"]
                continue
            rows, cols = slide.grid
            lines.append(f"{head}: {slide.patches} tissue patches of a {rows}x{cols} grid")
            lines.append(self.step(slide.patches))
        return "\n".join(lines)


def _patch_bag(prepared: PreparedRun, role: str, shape: Shape) -> PatchBagPlan:
    from gigastream.train.patch_data import slide_patch_grid

    config = prepared.config
    row = next(r for r in prepared.train_rows + prepared.val_rows if r.slide_id == shape[1])
    try:
        with SlideReader.open(row.path, mpp=row.mpp, backend=config.data.backend) as slide:
            grid = slide_patch_grid(slide, row.slide_id, config.data, config.patches, False)
    except SlideError as exc:
        return PatchBagPlan(role, row.slide_id, shape[0], 0, (0, 0), str(exc))
    return PatchBagPlan(role, row.slide_id, shape[0], len(grid), grid.grid_shape)


def patch_dry_run(prepared: PreparedRun) -> PatchDryRunReport:
    """The bags of the largest and the median slide of a patch-bag run (tissue masks are
    computed, not written) and the activation memory of one patch."""
    import torch

    from gigastream.mil.chunked import activation_bytes

    config = prepared.config
    patches = config.patches
    encoder_config = replace(patches.encoder, weights=None)
    model = build_model(replace(config, patches=replace(patches, encoder=encoder_config)), 2)
    encoder = model.encoder
    params = list(encoder.parameters())
    size = patches.patch_size
    sample = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    per_patch = activation_bytes(encoder, sample, {p.data_ptr() for p in params})
    report = PatchDryRunReport(
        patches.encoder.name,
        encoder.out_dim,
        sum(p.numel() for p in params if p.requires_grad),
        sum(p.numel() for p in params),
        size,
        config.data.mpp,
        patches.strategy,
        patches.chunk_size,
        patches.sample_size,
        config.data.preload_pixels,
        per_patch,
    )
    shapes, report.unreadable = _slide_shapes(prepared)
    if shapes:
        roles = [("largest", shapes[-1]), ("median", shapes[len(shapes) // 2])]
        report.slides = [_patch_bag(prepared, role, shape) for role, shape in roles]
    return report


def dry_run(prepared: PreparedRun) -> DryRunReport | PatchDryRunReport:
    """Plan the largest and the median slide of a run (see the module docstring).

    Args:
        prepared: from :func:`~gigastream.train.preparation.prepare` (``check_device=False``
            plans for a device this machine lacks).
    """
    from gigastream.streaming.throughput import expected_seconds

    if prepared.config.model.kind == "patches":
        return patch_dry_run(prepared)
    if prepared.config.model.kind == "features":
        from gigastream.train.feature_data import feature_dry_run

        return feature_dry_run(prepared.config, prepared.train_rows + prepared.val_rows)
    config = prepared.config
    precision = config.train.precision
    report = DryRunReport(precision, config.model.arch, config.data.mpp)
    shapes, report.unreadable = _slide_shapes(prepared)
    if not shapes:
        return report
    report.pixels = [s[0][2] * s[0][3] for s in shapes]
    train_ids = {row.slide_id for row in prepared.train_rows}
    train_pixels = sum(s[0][2] * s[0][3] for s in shapes if s[1] in train_ids)
    model = build_model(replace(config, model=replace(config.model, weights=None)), 2)
    dtype = precisions.compute_dtype(precision)
    # the configured device; on a machine without one, also this CPU
    devices = ["cuda"] if prepared.accelerator == "gpu" else ["cuda", "cpu"]
    for role, (shape, slide_id) in (("largest", shapes[-1]), ("median", shapes[len(shapes) // 2])):
        plans = [model.trunk.plan(shape, dtype, lazy_input=True, device=d) for d in devices]
        estimates = []
        for device, plan in zip(devices, plans, strict=True):
            estimate = DeviceEstimate(device, plan.est_peak_bytes, plan.est_host_bytes)
            expected = expected_seconds(plan, device, precision, config.model.arch)
            if expected is not None:
                estimate.seconds, measured = expected
                estimate.measured_on = measured.measured_on
                if role == "median":
                    estimate.epoch_seconds = estimate.seconds * train_pixels / (shape[2] * shape[3])
            estimates.append(estimate)
        report.slides.append(SlidePlan(role, slide_id, shape, plans[0], estimates))
    return report


__all__ = [
    "DeviceEstimate",
    "DryRunReport",
    "PatchBagPlan",
    "PatchDryRunReport",
    "SlidePlan",
    "dry_run",
    "patch_dry_run",
]
