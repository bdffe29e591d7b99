"""Benchmark: conventional vs ``torch.utils.checkpoint`` vs streaming on a torchvision trunk.

Each mode runs in a fresh Python process (so its peak memory is its own), on the same
seeded trunk (torchvision random initialisation, BatchNorm in eval mode), input and head
(global average pooling, a fixed random linear layer, cross-entropy), batch 1, on the CPU
(default) or a CUDA device, at one of Lightning's precisions (:mod:`gigastream.precision`:
``32``, ``64``, ``bf16-mixed``, ``16-mixed`` on CUDA), with or without TF32 (CUDA).
``checkpoint`` wraps each stage of the trunk (``split_segments(trunk, "stages")``) in
``torch.utils.checkpoint``; ``streaming-folded`` streams with every BatchNorm frozen and
folded into the convolution before it (:mod:`gigastream.streaming.folding`; the
``conventional`` reference stays the plain trunk). Gradients of every parameter are compared with the
conventional run's: ``max_rel_grad_error`` is the worst over parameters of
``max|g - g_ref| / max|g_ref|``. Memory: peak RSS of the process, and on CUDA
``torch.cuda.max_memory_allocated``. With ``lazy`` (automatic when the conventional
estimate does not fit) the image is a :class:`ProceduralSource`, generated tile by tile on
the device; modes whose estimate does not fit are reported as skipped with the estimate.

Run it with ``gigastream bench streaming`` (see ``--help``) or :func:`run_benchmark`;
``python -m gigastream.streaming.benchmark --worker JSON`` is the per-mode worker that
:func:`run_benchmark` starts (it reads only its own JSON, never the command line's flags).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from gigastream import precision as precisions
from gigastream.host_counters import cpu_model
from gigastream.streaming.memory import (
    AUTO_TUNE_BYTES,
    available_memory,
)
from gigastream.worker import worker_main

if TYPE_CHECKING:
    from gigastream.streaming.planner import StreamingPlan

from gigastream.streaming.bench_worker import build_trunk, check_precision, run_worker

logger = logging.getLogger(__name__)

MODES = ("conventional", "checkpoint", "streaming", "streaming-folded")


def _mem_available() -> int:
    return available_memory(torch.device("cpu")) or (1 << 62)


def _rel_error(grads: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    worst = 0.0
    for g, r in zip(grads, ref, strict=True):
        scale = r.abs().max().item()
        err = (g - r).abs().max().item()
        worst = max(worst, err / scale if scale > 0 else err)
    return worst


@dataclass(frozen=True)
class _Settings:
    """:func:`run_benchmark`'s settings, the same for every mode.

    As given, ``None`` means "the default"; :func:`_resolve_settings` fills them in.
    """

    arch: str
    size: int
    tile_size: int | None
    memory_budget: str | None
    host_memory_budget: str | None
    release_memory: bool | None  # None: StreamingModule's "auto"
    repeats: int
    seed: int
    precision: str  # Lightning's name; canonical once resolved
    tf32: bool
    lazy: bool | None
    warmup: int | None
    channels_last: bool
    cudnn_benchmark: bool | None
    tune_allocator: bool | None
    device: torch.device
    profile: str | Path | None


def run_benchmark(
    arch: str = "resnet34",
    size: int = 3072,
    tile_size: int | None = None,
    memory_budget: str | None = None,
    repeats: int = 2,
    seed: int = 0,
    modes: tuple[str, ...] = MODES,
    out: str | Path | None = None,
    tune_allocator: bool | None = None,
    device: str = "cpu",
    precision: str = "32",
    lazy: bool | None = None,
    warmup: int | None = None,
    channels_last: bool = False,
    cudnn_benchmark: bool | None = None,
    profile: str | Path | None = None,
    host_memory_budget: str | None = None,
    skip_unfit: bool = True,
    release_memory: bool | None = None,
    tf32: bool = False,
) -> dict:
    """Run every mode in a fresh subprocess and collect the JSON result (see module docstring).

    ``lazy``: stream from a :class:`ProceduralSource` (None: when the conventional estimate
    does not fit the available memory). ``warmup``: untimed runs per mode before the timed
    ``repeats`` (None: 1 on CUDA, 0 on CPU). ``channels_last``: trunk and input (tiles) in
    ``torch.channels_last``, every mode. ``cudnn_benchmark``: cuDNN autotuning, every mode
    (None: on for CUDA). ``profile``: write a ``torch.profiler`` table of one extra step per
    mode to ``<profile>-<mode>.txt``. ``host_memory_budget``: host memory the offloaded
    maps may take (None: the machine's available memory when planning). ``skip_unfit``:
    skip a mode whose estimate exceeds 90% of the available memory (the estimates are
    upper bounds; ``False`` runs it anyway and reports an out-of-memory as failed).
    ``release_memory``: :class:`StreamingModule`'s setting (None: ``"auto"``, on for CPU).
    ``precision``: Lightning's name (:mod:`gigastream.precision`; ``16-mixed`` on CUDA
    only); ``tf32``: TF32 convolutions and matmuls (CUDA only), every mode.
    """
    given = _Settings(
        arch=arch,
        size=size,
        tile_size=tile_size,
        memory_budget=memory_budget,
        host_memory_budget=host_memory_budget,
        release_memory=release_memory,
        repeats=repeats,
        seed=seed,
        precision=precision,
        tf32=tf32,
        lazy=lazy,
        warmup=warmup,
        channels_last=channels_last,
        cudnn_benchmark=cudnn_benchmark,
        tune_allocator=tune_allocator,
        device=torch.device(device),
        profile=profile,
    )
    settings, plan, available = _resolve_settings(given)
    result: dict = {"config": _config_record(settings), "plan": plan.to_dict()}
    result["plan_text"] = str(plan)
    result["modes"] = _run_modes(settings, modes, _estimates(plan), available, skip_unfit)
    _add_ratios_to_conventional(result["modes"])
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
    return result


def _resolve_settings(given: _Settings) -> tuple[_Settings, StreamingPlan, int]:
    """Check ``given`` (ValueError) and fill in its defaults; with the plan and free bytes.

    Plans the trunk to learn whether the input must be lazy and which allocator to use.
    """
    dev = given.device
    precision = check_precision(given.precision, given.tf32, dev)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    tile_size = given.tile_size
    if tile_size is None and given.memory_budget is None:
        tile_size = 1024
    warmup = given.warmup
    if warmup is None:
        warmup = 1 if dev.type == "cuda" else 0
    cudnn_benchmark = given.cudnn_benchmark
    if cudnn_benchmark is None:
        cudnn_benchmark = dev.type == "cuda"
    trunk = build_trunk(given.arch, given.seed)
    available = _available_bytes(dev)
    plan, lazy = _plan_benchmark(
        trunk,
        given.size,
        tile_size,
        given.memory_budget,
        given.host_memory_budget,
        precisions.compute_dtype(precision),  # the feature maps' dtype, for the plan
        dev,
        available,
        given.lazy,
    )
    tune_allocator = given.tune_allocator
    if tune_allocator is None:  # same rule as StreamingModule(tune_allocator="auto"), every mode
        tune_allocator = plan.conventional_bytes > AUTO_TUNE_BYTES
    settings = replace(
        given,
        precision=precision,
        tile_size=tile_size,
        warmup=warmup,
        cudnn_benchmark=cudnn_benchmark,
        lazy=lazy,
        tune_allocator=tune_allocator,
    )
    return settings, plan, available


def _available_bytes(dev: torch.device) -> int:
    """Free memory on ``dev`` now: CUDA's free bytes, or the host's available memory."""
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[0]
    return _mem_available()


def _plan_benchmark(
    trunk: nn.Sequential,
    size: int,
    tile_size: int | None,
    memory_budget: str | None,
    host_memory_budget: str | None,
    dtype: torch.dtype,
    dev: torch.device,
    available: int,
    lazy: bool | None,
) -> tuple[StreamingPlan, bool]:
    """The streaming plan of the (1, 3, size, size) input and whether the input is lazy.

    ``lazy=None``: an input tensor if the plan allows one and the conventional estimate fits
    90% of ``available`` bytes, else a lazy (procedural) input.
    """
    from gigastream.streaming.geometry import StreamingError
    from gigastream.streaming.module import StreamingModule

    streamed = StreamingModule(
        trunk,
        tile_size=tile_size,
        memory_budget=memory_budget,
        host_memory_budget=host_memory_budget,
    )
    shape = (1, 3, size, size)
    plan = None
    if not lazy:  # an input tensor on the device, if it fits (else: lazy when not given)
        try:
            plan = streamed.plan(shape, dtype, device=dev, available_bytes=available)
        except StreamingError:
            if lazy is not None:
                raise
        if lazy is None:
            lazy = plan is None or plan.conventional_bytes > 0.9 * available
    if lazy:
        plan = streamed.plan(shape, dtype, lazy_input=True, device=dev, available_bytes=available)
    assert plan is not None
    return plan, lazy


def _estimates(plan: StreamingPlan) -> dict[str, int]:
    """Each mode's estimated peak bytes, from the plan."""
    return {
        "conventional": plan.conventional_bytes,
        "checkpoint": plan.checkpoint_bytes,
        "streaming": plan.est_peak_bytes,
        "streaming-folded": plan.est_peak_bytes,
    }


def _config_record(s: _Settings) -> dict:
    """The result's ``config``: the settings, the software and the machine."""
    cuda = s.device.type == "cuda"
    return {
        "arch": s.arch,
        "size": s.size,
        "tile_size": s.tile_size,
        "memory_budget": s.memory_budget,
        "host_memory_budget": s.host_memory_budget,
        "release_memory": "auto" if s.release_memory is None else s.release_memory,
        "repeats": s.repeats,
        "seed": s.seed,
        "dtype": str(precisions.param_dtype(s.precision)).removeprefix("torch."),
        "precision": s.precision,
        "tf32": s.tf32,
        "lazy_input": s.lazy,
        "warmup": s.warmup,
        "channels_last": s.channels_last,
        "cudnn_benchmark": s.cudnn_benchmark if cuda else None,
        "batch": 1,
        "device": str(s.device),
        "cuda_device": torch.cuda.get_device_name(s.device) if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "allocator": (
            "glibc mmap threshold fixed at 128 KiB in every mode"
            if s.tune_allocator
            else "glibc defaults (dynamic mmap threshold) in every mode"
        ),
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "cpu": cpu_model(),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "mem_total_gib": round(
                os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
            ),
            "python": platform.python_version(),
        },
    }


def _run_modes(
    s: _Settings,
    modes: tuple[str, ...],
    est: dict[str, int],
    available: int,
    skip_unfit: bool,
) -> dict:
    """Each mode's result (skipped, failed, or measured), in ``modes`` order.

    A mode after ``conventional`` gets ``max_rel_grad_error`` against its gradients.
    """
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        ref_path = None
        for mode in modes:
            if skip_unfit and est[mode] > 0.9 * available:
                results[mode] = _skipped(est[mode], available)
                logger.warning("skipping %s: %s", mode, results[mode]["reason"])
                continue
            grads_path = str(Path(tmp) / f"{mode}.pt")
            res = _run_mode_process(_worker_args(s, mode, grads_path))
            if "failed" in res:
                results[mode] = res
                logger.error("%s failed:\n%s", mode, res["stderr"])
                continue
            if mode == "conventional":
                ref_path = grads_path
            elif ref_path is not None:
                res["max_rel_grad_error"] = _rel_error(
                    torch.load(grads_path, weights_only=True),
                    torch.load(ref_path, weights_only=True),
                )
            res.pop("plan", None)
            res.pop("plan_text", None)
            results[mode] = res
            logger.warning(
                "%s: %.2f s, %.0f MiB RSS, %s MiB CUDA",
                mode,
                res["seconds_median"],
                res["peak_rss_mib"],
                res.get("peak_cuda_mib", "-"),
            )
    return results


def _skipped(est_bytes: int, available: int) -> dict:
    """The result of a mode whose estimate does not fit."""
    return {
        "skipped": True,
        "reason": f"estimated {est_bytes / 2**30:.1f} GiB > available {available / 2**30:.1f} GiB",
        "est_bytes": est_bytes,
    }


def _worker_args(s: _Settings, mode: str, grads_path: str) -> dict:
    """:func:`run_worker`'s arguments for ``mode`` (sent as JSON on the command line)."""
    return {
        "mode": mode,
        "arch": s.arch,
        "size": s.size,
        "seed": s.seed,
        "repeats": s.repeats,
        "tile_size": s.tile_size,
        "memory_budget": s.memory_budget,
        "grads_out": grads_path,
        "tune_allocator": s.tune_allocator,
        "device": str(s.device),
        "precision": s.precision,
        "tf32": s.tf32,
        "lazy": s.lazy,
        "warmup": s.warmup,
        "channels_last": s.channels_last,
        "cudnn_benchmark": s.cudnn_benchmark,
        "profile_out": f"{s.profile}-{mode}.txt" if s.profile is not None else None,
        "host_memory_budget": s.host_memory_budget,
        "release_memory": s.release_memory,
    }


def _run_mode_process(worker: dict) -> dict:
    """Run one mode in a fresh Python process: its JSON result, or ``failed`` with stderr."""
    cmd = [sys.executable, "-m", "gigastream.streaming.benchmark", "--worker"]
    cmd.append(json.dumps(worker))
    logger.warning("running %s ...", worker["mode"])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"failed": True, "stderr": proc.stderr[-4000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _add_ratios_to_conventional(modes: dict) -> None:
    """Add time and memory ratios to the conventional mode's, in place, if it was measured."""
    conv = modes.get("conventional", {})
    if "seconds_median" not in conv:
        return
    for res in modes.values():
        if "seconds_median" in res:
            res["time_vs_conventional"] = round(res["seconds_median"] / conv["seconds_median"], 3)
            res["memory_vs_conventional"] = round(res["peak_rss_mib"] / conv["peak_rss_mib"], 3)
            if "peak_cuda_mib" in res and conv.get("peak_cuda_mib"):
                res["cuda_memory_vs_conventional"] = round(
                    res["peak_cuda_mib"] / conv["peak_cuda_mib"], 3
                )


def main(argv: list[str] | None = None) -> int:
    """The worker: ``--worker JSON`` runs one mode in this process with :func:`run_worker`'s
    arguments (a JSON object) and prints its result as one line of JSON.

    It parses nothing else: the benchmark's command line is ``gigastream bench streaming``.
    """
    return worker_main(argv, run_worker, "gigastream.streaming.benchmark", "bench streaming")


if __name__ == "__main__":
    sys.exit(main())
