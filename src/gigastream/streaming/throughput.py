"""Time per step from a plan: the planner's compute estimate over a measured throughput.

The planner counts the floating-point work of a plan (``plan.est_flops``: forward and
backward, recomputation, tile overlap and per-tile overhead included). Dividing it by the
throughput that streamed trunks were *measured* to reach gives an expected time per step
(one slide, forward + backward through the trunk). The throughputs below are the lower ends
of what ``gigastream bench streaming`` measured (``est_flops / seconds``; JSON in
``benchmarks/results/``) for a streamed torchvision ResNet-34 trunk:

- NVIDIA H200, torch 2.11 / CUDA 13.0, bf16 autocast, channels_last, cuDNN autotuning:
  120.6-143.5 TFLOP/s at 8192² to 65536² (2026-11-23);
- the same GPU, fp32 with TF32 off: 21.8-26.8 TFLOP/s at 4096² to 12288²;
- this project's 2-core CPU (AMD EPYC, torch 2.14.1), fp32: 0.21 TFLOP/s at 3072².

Trunks measured on their own (:data:`MEASURED_TRUNKS`) use their figure; the small
``vgg_small`` (few channels: memory-bound, not compute-bound) reached only 0.022 TFLOP/s on
the same CPU (2048² and 1024², tile 1024, 2026-12-01), a tenth of ResNet-34's, so a dry
run that priced it at ResNet-34's rate predicted a tenth of the time.

Other trunks, GPUs and input sizes run at other speeds: the result is an estimate to plan
with, labelled as such wherever it is printed.
"""

from __future__ import annotations

from dataclasses import dataclass

from gigastream import precision as precisions
from gigastream.streaming.planner import StreamingPlan


@dataclass(frozen=True)
class Throughput:
    """A measured effective throughput (planner FLOPs per second) and where it was measured."""

    flops_per_second: float
    measured_on: str


# (device type, kind of arithmetic: gigastream.precision.kind) -> measured throughput
MEASURED: dict[tuple[str, str], Throughput] = {
    ("cuda", "bf16"): Throughput(120e12, "an NVIDIA H200, bf16, streamed ResNet-34"),
    ("cuda", "fp32"): Throughput(21.8e12, "an NVIDIA H200, fp32 (TF32 off), streamed ResNet-34"),
    ("cpu", "fp32"): Throughput(0.21e12, "2 CPU cores, fp32, streamed ResNet-34"),
}

# (device type, kind of arithmetic, trunk) -> its own measured throughput
MEASURED_TRUNKS: dict[tuple[str, str, str], Throughput] = {
    ("cpu", "fp32", "vgg_small"): Throughput(0.021e12, "2 CPU cores, fp32, streamed vgg_small"),
}


def expected_seconds(
    plan: StreamingPlan, device_type: str, precision: str, arch: str | None = None
) -> tuple[float, Throughput] | None:
    """Expected seconds for one forward + backward of ``plan`` (None: nothing measured).

    ``arch``: the trunk, whose own figure is used where it was measured
    (:data:`MEASURED_TRUNKS`); otherwise streamed ResNet-34's, which the returned
    :class:`Throughput` names.

    ``precision`` is Lightning's name (:mod:`gigastream.precision`). float16 autocast
    (``16-mixed``) was not measured: bf16's throughput stands for it (the same tensor-core
    rate). On the CPU only fp32 was measured: its throughput stands for every precision there.

    Example:
        >>> import torch, torchvision
        >>> from gigastream.streaming import StreamingModule
        >>> trunk = torch.nn.Sequential(*list(torchvision.models.resnet34().children())[:-2])
        >>> plan = StreamingModule(trunk.eval(), memory_budget="40GiB").plan(
        ...     (1, 3, 65536, 65536), torch.bfloat16, lazy_input=True, device="cuda",
        ...     available_bytes=139 * 2**30, available_host_bytes=100 * 2**30)
        >>> seconds, where = expected_seconds(plan, "cuda", "bf16-mixed")
        >>> 15 < seconds < 30  # measured: 21.8 s
        True
    """
    kind = precisions.kind(precision)
    if kind == "fp16":
        kind = "bf16"
    if device_type == "cpu":
        kind = "fp32"  # the only precision measured on the CPU
    measured = MEASURED_TRUNKS.get((device_type, kind, arch or "")) or MEASURED.get(
        (device_type, kind)
    )
    if measured is None and device_type == "cpu":
        measured = MEASURED[("cpu", "fp32")]
    if measured is None:
        return None
    return plan.est_flops / measured.flops_per_second, measured
