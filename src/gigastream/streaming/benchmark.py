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
) -> dict:
    """One mode, in this process: returns timing, peak memory and (optionally) saves gradients."""
    from torch.utils.checkpoint import checkpoint

    from gigastream.streaming.module import StreamingModule
    from gigastream.streaming.planner import split_segments
    from gigastream.streaming.procedural import ProceduralSource

    dev = torch.device(device)
    autocast_dtype, autocast_on = _precision_setup(precision, dev)
    if tune_allocator and dev.type == "cpu":
        tune_cpu_allocator()  # every mode gets the same allocator setting (fair comparison)
    trunk = build_trunk(arch, seed).to(dev)
    source = ProceduralSource((1, 3, size, size), seed=seed + 1, device=dev)
    image = source if (lazy and mode == "streaming") else source.read((slice(None),) * 4)
    model: nn.Module = trunk
    plan = None
    if mode == "streaming":
        model = StreamingModule(
            trunk, tile_size=tile_size, memory_budget=memory_budget, tune_allocator=tune_allocator
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

    for _ in range(repeats):
        trunk.zero_grad(set_to_none=True)
        sync()
        t0 = time.perf_counter()
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
        sync()
        times.append(time.perf_counter() - t0)
        del fmap, loss, logits
    result = {
        "seconds": times,
        "seconds_median": statistics.median(times),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "lazy_input": not isinstance(image, torch.Tensor),
    }
    if dev.type == "cuda":
        result["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    if plan is not None:
        result["plan"] = plan.to_dict()
        result["plan_text"] = str(plan)
    if grads_out:
        torch.save([p.grad.float().cpu() for p in trunk.parameters()], grads_out)
    return result


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
) -> dict:
    """Run every mode in a fresh subprocess and collect the JSON result (see module docstring).

    ``lazy``: stream from a :class:`ProceduralSource` (None: when the conventional estimate
    does not fit the available memory).
    """
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
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    trunk = build_trunk(arch, seed)
    if dev.type == "cuda":
        available = torch.cuda.mem_get_info(dev)[0]
    else:
        available = _mem_available()
    streamed = StreamingModule(trunk, tile_size=tile_size, memory_budget=memory_budget)
    conv_plan = streamed.plan((1, 3, size, size), dtype, device=dev, available_bytes=available)
    if lazy is None:
        lazy = conv_plan.conventional_bytes > 0.9 * available
    plan = (
        streamed.plan(
            (1, 3, size, size), dtype, lazy_input=True, device=dev, available_bytes=available
        )
        if lazy
        else conv_plan
    )
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
            "repeats": repeats,
            "seed": seed,
            "dtype": "float32",
            "precision": precision,
            "lazy_input": lazy,
            "batch": 1,
            "device": str(dev),
            "cuda_device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
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
            if est[mode] > 0.9 * available:
                result["modes"][mode] = {
                    "skipped": True,
                    "reason": f"estimated {est[mode] / 2**30:.1f} GiB > available {available / 2**30:.1f} GiB",
                    "est_bytes": est[mode],
                }
                logger.warning("skipping %s: %s", mode, result["modes"][mode]["reason"])
                continue
            grads_path = str(Path(tmp) / f"{mode}.pt")
            cmd = [
                sys.executable,
                "-m",
                "gigastream.streaming.benchmark",
                "--worker",
                mode,
                "--arch",
                arch,
                "--size",
                str(size),
                "--seed",
                str(seed),
                "--repeats",
                str(repeats),
                "--grads-out",
                grads_path,
            ]
            if tile_size is not None:
                cmd += ["--tile", str(tile_size)]
            if memory_budget is not None:
                cmd += ["--memory-budget", str(memory_budget)]
            cmd += ["--allocator", "tuned" if tune_allocator else "default"]
            cmd += ["--device", str(dev), "--precision", precision] + (["--lazy"] if lazy else [])
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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", choices=MODES)
    parser.add_argument("--arch", default="resnet34")
    parser.add_argument("--size", type=int, default=3072)
    parser.add_argument("--tile", type=int, default=None)
    parser.add_argument("--memory-budget", default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grads-out", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--allocator", choices=["auto", "tuned", "default"], default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--lazy", action="store_true", default=None)
    args = parser.parse_args(argv)
    if args.worker:
        res = run_worker(
            args.worker,
            args.arch,
            args.size,
            args.seed,
            args.repeats,
            args.tile,
            args.memory_budget,
            args.grads_out,
            args.allocator == "tuned",
            args.device,
            args.precision,
            bool(args.lazy),
        )
        print(json.dumps(res))
        return 0
    res = run_benchmark(
        args.arch,
        args.size,
        args.tile,
        args.memory_budget,
        args.repeats,
        args.seed,
        out=args.out,
        tune_allocator={"auto": None, "tuned": True, "default": False}[args.allocator],
        device=args.device,
        precision=args.precision,
        lazy=args.lazy,
    )
    print(json.dumps(res["modes"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
