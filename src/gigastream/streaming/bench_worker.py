"""The per-mode worker of the streaming benchmark: one mode, one process, one JSON result.

:func:`run_worker` builds the seeded trunk and input, runs the mode (``conventional``,
``checkpoint`` or ``streaming``) for the warm-up and the timed repeats, and returns its times,
memory and gradients file; :mod:`gigastream.streaming.benchmark` starts it as
``python -m gigastream.streaming.benchmark --worker JSON`` (the JSON holds its arguments).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from gigastream import host_counters
from gigastream import precision as precisions
from gigastream.streaming.memory import (
    peak_rss_mib,
    tune_cpu_allocator,
)

if TYPE_CHECKING:
    from gigastream.streaming.planner import StreamingPlan
    from gigastream.streaming.procedural import ProceduralSource


logger = logging.getLogger(__name__)


def check_precision(precision: str, tf32: bool, device: torch.device) -> str:
    """The canonical name of ``precision``; ValueError if it or ``tf32`` cannot run on ``device``."""
    precision = precisions.check(precision, "--precision")
    if tf32 and device.type != "cuda":
        raise ValueError("--tf32 needs --device cuda (TF32 is a CUDA tensor-core mode)")
    if precisions.needs_cuda(precision) and device.type != "cuda":
        raise ValueError(
            f"--precision {precision} needs --device cuda (float16 autocast); on the CPU use "
            "bf16-mixed"
        )
    return precision


def build_trunk(arch: str, seed: int) -> nn.Sequential:
    """A torchvision ResNet/VGG-style trunk (random init, BatchNorm frozen), everything before pooling."""
    import torchvision

    torch.manual_seed(seed)
    factory = getattr(torchvision.models, arch, None)
    if factory is None:
        raise ValueError(
            f"unknown torchvision architecture {arch!r} (try resnet18, resnet34, resnet50)"
        )
    net = factory(weights=None)
    if arch.startswith("resnet"):
        trunk = nn.Sequential(*list(net.children())[:-2])
    elif hasattr(net, "features"):
        trunk = nn.Sequential(*list(net.features.children()))
    else:
        raise ValueError(f"do not know how to take the trunk of {arch!r}")
    return trunk.eval()


#: the modes that stream the trunk (``streaming-folded``: BatchNorm folded into the convs)
STREAMED = ("streaming", "streaming-folded")


def run_worker(
    mode: str,
    arch: str,
    size: int,
    seed: int,
    repeats: int,
    tile_size: int | None,
    memory_budget: str | None,
    grads_out: str | None,
    tune_allocator: bool = True,
    device: str = "cpu",
    precision: str = "32",
    lazy: bool = False,
    warmup: int = 0,
    channels_last: bool = False,
    cudnn_benchmark: bool = False,
    profile_out: str | None = None,
    host_memory_budget: str | None = None,
    release_memory: bool | None = None,
    tf32: bool = False,
) -> dict:
    """One mode, in this process: returns timing, peak memory and (optionally) saves gradients.

    ``warmup`` untimed forward+backward runs come first (cuDNN autotuning, allocator warm-up);
    ``profile_out``: a ``torch.profiler`` table of one extra run is written there.
    ``precision``: Lightning's name; ``tf32``: TF32 on (CUDA only; off otherwise).
    """
    dev = torch.device(device)
    precision = _configure_worker(dev, precision, tf32, tune_allocator, cudnn_benchmark)
    param_dtype = precisions.param_dtype(precision)
    trunk, image = _worker_inputs(
        arch, size, seed, dev, param_dtype, channels_last, lazy_image=lazy and mode in STREAMED
    )
    model: nn.Module = trunk
    plan = None
    if mode in STREAMED:
        model, plan = _worker_streaming_model(
            trunk,
            image,
            size,
            precision,
            dev,
            tile_size=tile_size,
            memory_budget=memory_budget,
            tune_allocator=tune_allocator,
            channels_last=channels_last,
            host_memory_budget=host_memory_budget,
            release_memory=release_memory,
            fold=mode == "streaming-folded",
        )
    step = _training_step(mode, trunk, model, image, seed, dev, precision)
    times, peak_cuda, host = _time_steps(step, dev, warmup, repeats)
    if profile_out:
        _profile_step(step, dev, profile_out)
    result = _worker_result(times, image, peak_cuda, plan)
    result["host"] = host  # per timed step: CPU use, other processes, steal, page faults
    result["host_summary"] = host_counters.summary(host)
    if grads_out:
        torch.save([p.grad.detach().cpu() for p in trunk.parameters()], grads_out)
    return result


def _configure_worker(
    dev: torch.device, precision: str, tf32: bool, tune_allocator: bool, cudnn_benchmark: bool
) -> str:
    """Check ``precision`` and set this process's TF32, allocator and cuDNN switches."""
    precision = check_precision(precision, tf32, dev)
    if dev.type == "cuda":
        precisions.set_tf32(tf32)
    if tune_allocator and dev.type == "cpu":
        tune_cpu_allocator()  # every mode gets the same allocator setting (fair comparison)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark
    return precision


def _worker_inputs(
    arch: str,
    size: int,
    seed: int,
    dev: torch.device,
    param_dtype: torch.dtype,
    channels_last: bool,
    lazy_image: bool,
) -> tuple[nn.Sequential, torch.Tensor | ProceduralSource]:
    """The seeded trunk on ``dev`` and the (1, 3, size, size) image: a tensor, or the source."""
    from gigastream.streaming.procedural import ProceduralSource

    trunk = build_trunk(arch, seed).to(dev, param_dtype)
    if channels_last:
        trunk = trunk.to(memory_format=torch.channels_last)
    source = ProceduralSource((1, 3, size, size), seed=seed + 1, dtype=param_dtype, device=dev)
    image = source if lazy_image else source.read((slice(None),) * 4)
    if channels_last and isinstance(image, torch.Tensor):
        image = image.contiguous(memory_format=torch.channels_last)
    return trunk, image


def _worker_streaming_model(
    trunk: nn.Sequential,
    image: torch.Tensor | ProceduralSource,
    size: int,
    precision: str,
    dev: torch.device,
    tile_size: int | None,
    memory_budget: str | None,
    tune_allocator: bool,
    channels_last: bool,
    host_memory_budget: str | None,
    release_memory: bool | None,
    fold: bool = False,
) -> tuple[nn.Module, StreamingPlan]:
    """``trunk`` wrapped in a :class:`StreamingModule`, and its plan for ``image``; ``fold``:
    its (eval-mode) BatchNorms frozen and folded into the convolutions before them."""
    from gigastream.streaming.module import StreamingModule

    model = StreamingModule(
        trunk,
        freeze_batchnorm=fold,
        fold_batchnorm=fold,
        tile_size=tile_size,
        memory_budget=memory_budget,
        tune_allocator=tune_allocator,
        channels_last=channels_last,
        host_memory_budget=host_memory_budget,
        release_memory="auto" if release_memory is None else release_memory,
    )
    plan = model.plan(
        (1, 3, size, size),
        precisions.compute_dtype(precision),
        lazy_input=not isinstance(image, torch.Tensor),
        device=dev,
    )
    return model, plan


def _training_step(
    mode: str,
    trunk: nn.Sequential,
    model: nn.Module,
    image: torch.Tensor | ProceduralSource,
    seed: int,
    dev: torch.device,
    precision: str,
) -> Callable[[], None]:
    """One forward+backward of ``mode``: trunk, global average pool, fixed linear head, loss."""
    from torch.utils.checkpoint import checkpoint

    from gigastream.streaming.planner import split_segments

    param_dtype = precisions.param_dtype(precision)
    autocast_dtype = precisions.autocast_dtype(precision)
    segments = split_segments(trunk, "stages")
    head_weight = None
    label = torch.tensor([1], device=dev)

    def step() -> None:
        nonlocal head_weight
        trunk.zero_grad(set_to_none=True)
        with torch.autocast(
            dev.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            if mode == "checkpoint":
                fmap = image
                for seg in segments:  # one checkpoint per stage of the trunk
                    fmap = checkpoint(seg.module, fmap, use_reentrant=False)
            else:
                fmap = model(image)
        fmap = fmap.to(param_dtype)  # autocast's output back in the parameters' dtype
        if head_weight is None:
            gen = torch.Generator().manual_seed(seed + 2)
            head_weight = (torch.randn(2, fmap.shape[1], generator=gen) / fmap.shape[1] ** 0.5).to(
                dev, param_dtype
            )
        logits = fmap.mean(dim=(2, 3)) @ head_weight.T  # (1, 2): global average pool + linear
        loss = torch.nn.functional.cross_entropy(logits, label)
        loss.backward()

    return step


def _time_steps(
    step: Callable[[], None], dev: torch.device, warmup: int, repeats: int
) -> tuple[list[float], int | None, list[dict]]:
    """``warmup`` untimed then ``repeats`` timed steps: seconds each, peak CUDA bytes, and
    what the host did during each step (:func:`gigastream.host_counters.between`)."""
    times = []
    host = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(repeats):
        sync()
        before = host_counters.snapshot()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        host.append(host_counters.between(before, host_counters.snapshot()))
    peak_cuda = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    return times, peak_cuda, host


def _worker_result(
    times: list[float],
    image: torch.Tensor | ProceduralSource,
    peak_cuda: int | None,
    plan: StreamingPlan | None,
) -> dict:
    """The worker's JSON: timings, peak memory (RSS now, CUDA if any) and the plan if any."""
    result = {
        "seconds": times,
        "seconds_median": statistics.median(times),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "lazy_input": not isinstance(image, torch.Tensor),
    }
    if peak_cuda is not None:
        result["peak_cuda_mib"] = round(peak_cuda / 2**20, 1)
    if plan is not None:
        result["plan"] = plan.to_dict()
        result["plan_text"] = str(plan)
    return result


def _profile_step(step: Callable[[], None], dev: torch.device, out: str) -> None:
    """One more step under ``torch.profiler``: per-op totals (device time first) as text."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    sort = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=60)
    Path(out).write_text(table)


__all__ = ["build_trunk", "check_precision", "run_worker"]
