"""``train --dry-run``: the streaming plan of a run's slides and what a step will cost.

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
    """The input shapes of the readable slides (smallest first) and the unreadable ones."""
    from gigastream.wsi.source import SlideSource

    data = prepared.config.data
    shapes, unreadable = [], []
    for row in prepared.train_rows + prepared.val_rows:
        try:
            with SlideReader.open(row.path, mpp=row.mpp, backend=data.backend) as slide:
                shapes.append((tuple(SlideSource(slide, mpp=data.mpp).shape), row.slide_id))
        except SlideError as exc:
            unreadable.append(str(exc))
    shapes.sort(key=lambda s: s[0][2] * s[0][3])
    return shapes, unreadable


def dry_run(prepared: PreparedRun) -> DryRunReport:
    """Plan the largest and the median slide of a run (see the module docstring).

    Args:
        prepared: from :func:`~gigastream.train.preparation.prepare` (``check_device=False``
            plans for a device this machine lacks).
    """
    from gigastream.streaming.throughput import expected_seconds

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
            expected = expected_seconds(plan, device, precision)
            if expected is not None:
                estimate.seconds, measured = expected
                estimate.measured_on = measured.measured_on
                if role == "median":
                    estimate.epoch_seconds = estimate.seconds * train_pixels / (shape[2] * shape[3])
            estimates.append(estimate)
        report.slides.append(SlidePlan(role, slide_id, shape, plans[0], estimates))
    return report


__all__ = ["DeviceEstimate", "DryRunReport", "SlidePlan", "dry_run"]
