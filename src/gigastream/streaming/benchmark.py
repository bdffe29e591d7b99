"""Benchmark: conventional vs ``torch.utils.checkpoint`` vs streaming on a torchvision trunk.

Each mode runs in a fresh Python process (so its peak memory is its own), on the same
seeded trunk (torchvision random initialisation, BatchNorm in eval mode), input and head
(global average pooling, a fixed random linear layer, cross-entropy), batch 1, on the CPU
(default) or a CUDA device, in fp32, tf32 (CUDA) or bf16 autocast. ``checkpoint`` wraps
each segment of the heuristic cuts (``split_segments(trunk, "auto")``) in
``torch.utils.checkpoint``. Gradients of every parameter are compared with the
conventional run's: ``max_rel_grad_error`` is the worst over parameters of
``max|g - g_ref| / max|g_ref|``. Memory: peak RSS of the process, and on CUDA
``torch.cuda.max_memory_allocated``. With ``lazy`` (automatic when the conventional
estimate does not fit) the image is a :class:`ProceduralSource`, generated tile by tile on
the device; modes whose estimate does not fit are reported as skipped with the estimate.

Run it with ``gigastream bench streaming`` (see ``--help``) or ``python -m
gigastream.streaming.benchmark``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from gigastream.streaming.memory import (
    AUTO_TUNE_BYTES,
    available_memory,
    peak_rss_mib,
    tune_cpu_allocator,
)

logger = logging.getLogger(__name__)

MODES = ("conventional", "checkpoint", "streaming")
PRECISIONS = ("fp32", "tf32", "bf16")


def _precision_setup(precision: str, device: torch.device) -> tuple[torch.dtype, bool]:
    """Set TF32 flags; return (autocast dtype or float32, whether autocast is on)."""
    if precision == "tf32" and device.type != "cuda":
        raise ValueError("--precision tf32 needs --device cuda (TF32 is a CUDA tensor-core mode)")
    if device.type == "cuda":
        on = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on
    if precision == "bf16":
        return torch.bfloat16, True
    return torch.float32, False


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


def _mem_available() -> int:
    return available_memory(torch.device("cpu")) or (1 << 62)


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
    precision: str = "fp32",
    lazy: bool = False,
    warmup: int = 0,
    channels_last: bool = False,
    cudnn_benchmark: bool = False,
    profile_out: str | None = None,
    host_memory_budget: str | None = None,
    release_memory: bool | None = None,
) -> dict:
    """One mode, in this process: returns timing, peak memory and (optionally) saves gradients.

    ``warmup`` untimed forward+backward runs come first (cuDNN autotuning, allocator warm-up);
    ``profile_out``: a ``torch.profiler`` table of one extra run is written there.
    """
    from torch.utils.checkpoint import checkpoint

    from gigastream.streaming.module import StreamingModule
    from gigastream.streaming.planner import split_segments
    from gigastream.streaming.procedural import ProceduralSource

    dev = torch.device(device)
    autocast_dtype, autocast_on = _precision_setup(precision, dev)
    if tune_allocator and dev.type == "cpu":
        tune_cpu_allocator()  # every mode gets the same allocator setting (fair comparison)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark
    trunk = build_trunk(arch, seed).to(dev)
    if channels_last:
        trunk = trunk.to(memory_format=torch.channels_last)
    source = ProceduralSource((1, 3, size, size), seed=seed + 1, device=dev)
    image = source if (lazy and mode == "streaming") else source.read((slice(None),) * 4)
    if channels_last and isinstance(image, torch.Tensor):
        image = image.contiguous(memory_format=torch.channels_last)
    model: nn.Module = trunk
    plan = None
    if mode == "streaming":
        model = StreamingModule(
            trunk,
            tile_size=tile_size,
            memory_budget=memory_budget,
            tune_allocator=tune_allocator,
            channels_last=channels_last,
            host_memory_budget=host_memory_budget,
            release_memory="auto" if release_memory is None else release_memory,
        )
        plan = model.plan(
            (1, 3, size, size),
            autocast_dtype,
            lazy_input=not isinstance(image, torch.Tensor),
            device=dev,
        )
    segments = split_segments(trunk, "auto")
    head_weight = None
    label = torch.tensor([1], device=dev)
    times = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def step() -> None:
        nonlocal head_weight
        trunk.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_on):
            if mode == "checkpoint":
                fmap = image
                for seg in segments:  # one checkpoint per segment of the heuristic cuts
                    fmap = checkpoint(seg.module, fmap, use_reentrant=False)
            else:
                fmap = model(image)
        fmap = fmap.float()
        if head_weight is None:
            gen = torch.Generator().manual_seed(seed + 2)
            head_weight = (torch.randn(2, fmap.shape[1], generator=gen) / fmap.shape[1] ** 0.5).to(
                dev
            )
        logits = fmap.mean(dim=(2, 3)) @ head_weight.T  # (1, 2): global average pool + linear
        loss = torch.nn.functional.cross_entropy(logits, label)
        loss.backward()

    for _ in range(warmup):
        step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    peak_cuda = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    if profile_out:
        _profile_step(step, dev, profile_out)
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
    if grads_out:
        torch.save([p.grad.float().cpu() for p in trunk.parameters()], grads_out)
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


def _rel_error(grads: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    worst = 0.0
    for g, r in zip(grads, ref, strict=True):
        scale = r.abs().max().item()
        err = (g - r).abs().max().item()
        worst = max(worst, err / scale if scale > 0 else err)
    return worst


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
    precision: str = "fp32",
    lazy: bool | None = None,
    warmup: int | None = None,
    channels_last: bool = False,
    cudnn_benchmark: bool | None = None,
    profile: str | Path | None = None,
    host_memory_budget: str | None = None,
    skip_unfit: bool = True,
    release_memory: bool | None = None,
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
    """
    from gigastream.streaming.geometry import StreamingError
    from gigastream.streaming.module import StreamingModule

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {list(PRECISIONS)}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if precision == "tf32" and dev.type != "cuda":
        raise ValueError("--precision tf32 needs --device cuda (TF32 is a CUDA tensor-core mode)")
    if tile_size is None and memory_budget is None:
        tile_size = 1024
    if warmup is None:
        warmup = 1 if dev.type == "cuda" else 0
    if cudnn_benchmark is None:
        cudnn_benchmark = dev.type == "cuda"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    trunk = build_trunk(arch, seed)
    if dev.type == "cuda":
        available = torch.cuda.mem_get_info(dev)[0]
    else:
        available = _mem_available()
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
    if tune_allocator is None:  # same rule as StreamingModule(tune_allocator="auto"), every mode
        tune_allocator = plan.conventional_bytes > AUTO_TUNE_BYTES
    est = {
        "conventional": plan.conventional_bytes,
        "checkpoint": plan.checkpoint_bytes,
        "streaming": plan.est_peak_bytes,
    }
    result: dict = {
        "config": {
            "arch": arch,
            "size": size,
            "tile_size": tile_size,
            "memory_budget": memory_budget,
            "host_memory_budget": host_memory_budget,
            "release_memory": "auto" if release_memory is None else release_memory,
            "repeats": repeats,
            "seed": seed,
            "dtype": "float32",
            "precision": precision,
            "lazy_input": lazy,
            "warmup": warmup,
            "channels_last": channels_last,
            "cudnn_benchmark": cudnn_benchmark if dev.type == "cuda" else None,
            "batch": 1,
            "device": str(dev),
            "cuda_device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
            "cuda": torch.version.cuda if dev.type == "cuda" else None,
            "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "allocator": (
                "glibc mmap threshold fixed at 128 KiB in every mode"
                if tune_allocator
                else "glibc defaults (dynamic mmap threshold) in every mode"
            ),
            "machine": {
                "cpu_count": os.cpu_count(),
                "processor": platform.processor() or platform.machine(),
                "mem_total_gib": round(
                    os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
                ),
                "python": platform.python_version(),
            },
        },
        "plan": plan.to_dict(),
        "plan_text": str(plan),
        "modes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        ref_path = None
        for mode in modes:
            if skip_unfit and est[mode] > 0.9 * available:
                result["modes"][mode] = {
                    "skipped": True,
                    "reason": f"estimated {est[mode] / 2**30:.1f} GiB > available {available / 2**30:.1f} GiB",
                    "est_bytes": est[mode],
                }
                logger.warning("skipping %s: %s", mode, result["modes"][mode]["reason"])
                continue
            grads_path = str(Path(tmp) / f"{mode}.pt")
            worker = {  # run_worker's arguments, as JSON on the command line
                "mode": mode,
                "arch": arch,
                "size": size,
                "seed": seed,
                "repeats": repeats,
                "tile_size": tile_size,
                "memory_budget": memory_budget,
                "grads_out": grads_path,
                "tune_allocator": tune_allocator,
                "device": str(dev),
                "precision": precision,
                "lazy": lazy,
                "warmup": warmup,
                "channels_last": channels_last,
                "cudnn_benchmark": cudnn_benchmark,
                "profile_out": f"{profile}-{mode}.txt" if profile is not None else None,
                "host_memory_budget": host_memory_budget,
                "release_memory": release_memory,
            }
            cmd = [sys.executable, "-m", "gigastream.streaming.benchmark", "--worker"]
            cmd.append(json.dumps(worker))
            logger.warning("running %s ...", mode)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                result["modes"][mode] = {"failed": True, "stderr": proc.stderr[-4000:]}
                logger.error("%s failed:\n%s", mode, proc.stderr[-4000:])
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            if mode == "conventional":
                ref_path = grads_path
            elif ref_path is not None:
                res["max_rel_grad_error"] = _rel_error(
                    torch.load(grads_path, weights_only=True),
                    torch.load(ref_path, weights_only=True),
                )
            res.pop("plan", None)
            res.pop("plan_text", None)
            result["modes"][mode] = res
            logger.warning(
                "%s: %.2f s, %.0f MiB RSS, %s MiB CUDA",
                mode,
                res["seconds_median"],
                res["peak_rss_mib"],
                res.get("peak_cuda_mib", "-"),
            )
    conv = result["modes"].get("conventional", {})
    if "seconds_median" in conv:
        for res in result["modes"].values():
            if "seconds_median" in res:
                res["time_vs_conventional"] = round(
                    res["seconds_median"] / conv["seconds_median"], 3
                )
                res["memory_vs_conventional"] = round(res["peak_rss_mib"] / conv["peak_rss_mib"], 3)
                if "peak_cuda_mib" in res and conv.get("peak_cuda_mib"):
                    res["cuda_memory_vs_conventional"] = round(
                        res["peak_cuda_mib"] / conv["peak_cuda_mib"], 3
                    )
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    """``gigastream bench streaming`` as a script (the same flags); ``--worker JSON`` runs
    one mode in this process with :func:`run_worker`'s arguments and prints its result."""
    from gigastream.cli import bench_streaming

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    bench_streaming.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(**json.loads(args.worker))))
        return 0
    return bench_streaming.run(args)


if __name__ == "__main__":
    sys.exit(main())
