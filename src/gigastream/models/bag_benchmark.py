"""Benchmark: time and peak memory of the bag strategies as the bag grows.

For every encoder (default ResNet-18 and a ViT-Tiny, random initialisation), every bag size
(default 100 to 10,000 patches of 224 px) and every strategy of
:class:`~gigastream.mil.strategies.BagClassifier` (``baseline``, ``accumulate``, ``sample``,
``frozen``), one training step (forward with the label, the ``abmil`` head's loss,
backward) is timed on a bag of random uint8 patches ``(N, 3, P, P)``, each measurement in a
fresh Python process (:mod:`gigastream.models.bag_bench_worker`) so that its peak memory is its
own: CPU peak RSS (``VmHWM``, reset as the bag is made) and, on CUDA,
``torch.cuda.max_memory_allocated``; the resident set (or allocated bytes) just before the bag is created is recorded too, and a
row reports the raw peak, the increase over it, and the *working* memory (the increase less
the bag's pixels). Time is the median over ``repeats`` steps after ``warmup`` untimed ones,
per step and per patch of the bag.

Before each run its peak is estimated (the bag, the patches that keep an autograd graph
times the activation bytes per patch measured once per encoder, and the memory before the
bag; once two bags of a strategy were measured, their peaks extrapolated linearly); a run
whose estimate exceeds the memory limit (default: 90% of the free RAM or GPU memory) is
skipped, so ``baseline`` grows until it does not fit. An out-of-memory error or a killed
worker is a row with status ``oom``, any other crash ``failed``: never a crash of the
benchmark. The result's ``checks`` compare with the targets of exact gradient
accumulation: ``accumulate``'s working memory at the largest bag within 1.1x of the
smallest bag's, and its time per patch within 1.3x of ``baseline``'s where both ran.

Run it with ``gigastream bench mil`` (see ``--help``) or :func:`run_mil_benchmark`.

Example:
    >>> config = MILBenchConfig(encoders=("small_cnn",), strategies=("baseline",),
    ...                         bag_sizes=(8,), patch_size=32, memory_limit="1MiB")
    >>> run_mil_benchmark(config)["rows"][0]["status"]  # doctest: +ELLIPSIS
    'skipped: estimated ... GiB > available 0.0 GiB'
"""

from __future__ import annotations

import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gigastream import precision as precisions
from gigastream.host_counters import cpu_model
from gigastream.mil.strategies import STRATEGIES
from gigastream.models.bag_bench_worker import activation_bytes_per_patch, build_bench_encoder
from gigastream.streaming.memory import available_memory, current_rss_mib
from gigastream.streaming.planner.budget import parse_bytes

logger = logging.getLogger(__name__)

DEFAULT_ENCODERS = ("resnet18", "timm:vit_tiny_patch16_224")
DEFAULT_BAG_SIZES = (100, 300, 1000, 3000, 10000)
MEMORY_TARGET = 1.1  # accumulate: working memory at the largest bag / at the smallest
TIME_TARGET = 1.3  # accumulate / baseline, seconds per patch
ALLOCATORS = ("default", "tuned")  # the CPU workers' glibc allocator (MILBenchConfig.allocator)
_MIB = 2**20
_GIB = 2**30

#: A launcher runs one worker (its arguments) and returns its JSON result (with ``status``).
Launcher = Callable[[dict], dict]


@dataclass
class MILBenchConfig:
    """The benchmark's settings.

    Attributes:
        encoders: encoder names (:func:`~gigastream.models.encoders.build_encoder`'s:
            registered trunks, ``small_cnn``, ``timm:<model>``; random initialisation).
        strategies: strategies of :class:`~gigastream.mil.strategies.StrategyConfig`.
        bag_sizes: patches per bag; measured from the smallest up.
        patch_size: patch side in pixels.
        chunk_size: patches per chunk (``accumulate``, ``frozen``).
        sample_size: patches per step (``sample``).
        device: ``cpu`` or ``cuda[:N]``.
        precision: Lightning's name (``32``, ``bf16-mixed``, ...; :mod:`gigastream.precision`).
        repeats: timed steps per run (the median is reported).
        warmup: untimed steps per run before the timed ones.
        seed: seed of the encoder, the head, the bag and the ``sample`` subsets.
        threads: torch threads per worker (``None``: torch's default).
        memory_limit: bytes or a size like ``"8GiB"`` a run may take (its estimated peak:
            RSS on the CPU, allocated bytes on CUDA); ``None``: 90% of the free memory.
        skip_unfit: skip runs whose estimate exceeds ``memory_limit`` (``False``: run them;
            an out-of-memory is then a row with status ``oom``).
        timeout_s: seconds a worker may run before it is stopped (``None``: no limit).
        allocator: the CPU workers' glibc allocator: ``default`` (glibc as it is) or
            ``tuned`` (:func:`~gigastream.streaming.memory.tune_cpu_allocator`: a fixed mmap
            threshold, so freed buffers go back to the OS at once and the peak RSS is what
            live memory needed, not what the heap kept; fresh page faults cost time).
        command: the command line that ran it, recorded with the settings.
    """

    encoders: tuple[str, ...] = DEFAULT_ENCODERS
    strategies: tuple[str, ...] = ("baseline", "accumulate", "sample", "frozen")
    bag_sizes: tuple[int, ...] = DEFAULT_BAG_SIZES
    patch_size: int = 224
    chunk_size: int = 64
    sample_size: int = 64
    device: str = "cpu"
    precision: str = "32"
    repeats: int = 3
    warmup: int = 1
    seed: int = 0
    threads: int | None = None
    memory_limit: int | str | None = None
    skip_unfit: bool = True
    timeout_s: float | None = None
    allocator: str = "default"
    command: str | None = None  # the command line, recorded with the settings

    def validate(self) -> None:
        """Raise ValueError naming the setting on anything that cannot run."""
        if not self.encoders:
            raise ValueError("give at least one encoder")
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad or not self.strategies:
            raise ValueError(f"unknown strategy {bad}; choose from {', '.join(STRATEGIES)}")
        if not self.bag_sizes or min(self.bag_sizes) < 1:
            raise ValueError(f"bag sizes must be >= 1 patches, got {list(self.bag_sizes)}")
        for name in ("patch_size", "chunk_size", "sample_size", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.allocator not in ALLOCATORS:
            raise ValueError(
                f"allocator must be one of {', '.join(ALLOCATORS)}, got {self.allocator!r}"
            )
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        dev = torch.device(self.device)
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda[:N], got {self.device!r}")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
        precision = precisions.check(self.precision, "--precision")
        if precisions.needs_cuda(precision) and dev.type != "cuda":
            raise ValueError(
                f"--precision {precision} needs --device cuda; on the CPU use bf16-mixed"
            )
        if self.memory_limit is not None and parse_bytes(self.memory_limit) <= 0:
            raise ValueError(f"memory_limit must be > 0, got {self.memory_limit!r}")


@dataclass
class _EncoderProbe:
    """What the driver learns of an encoder before any run (for the estimates)."""

    out_dim: int
    parameters: int
    activation_bytes_per_patch: int
    fixed_bytes: int  # memory before the bag: the parent's RSS (CPU) or weights + grads (CUDA)


def run_mil_benchmark(
    config: MILBenchConfig,
    out: str | Path | None = None,
    markdown: str | Path | None = None,
    launch: Launcher | None = None,
) -> dict:
    """Run every (encoder, bag size, strategy) in a fresh process; the JSON result.

    Args:
        config: the settings (checked first: ValueError before any work).
        out: JSON file to write (``None``: none).
        markdown: markdown table file to write (``None``: none).
        launch: runs one worker; default: a fresh ``python -m gigastream.models.bag_bench_worker``
            process (tests pass an in-process one).

    Returns:
        ``machine``, ``settings``, ``rows`` (one per encoder, strategy and bag size, with
        ``status`` ``ok``, ``skipped: ...``, ``oom`` or ``failed``), ``checks`` (per encoder)
        and ``markdown`` (the table).
    """
    config.validate()
    dev = torch.device(config.device)
    precision = precisions.check(config.precision, "--precision")
    limit = _memory_limit(config, dev)
    probes = {name: _probe_encoder(name, config, dev, precision) for name in config.encoders}
    launch = launch or _process_launcher(config.timeout_s, config.threads)
    machine = machine_info(dev)
    start = time.perf_counter()
    rows: list[dict] = []
    for name in config.encoders:
        for n in sorted(set(config.bag_sizes)):
            for strategy in config.strategies:
                rows.append(
                    _run_one(
                        config, name, strategy, n, precision, probes[name], limit, rows, launch
                    )
                )
    machine["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    result = {
        "wall_seconds": round(time.perf_counter() - start, 1),
        "machine": machine,
        "settings": {
            **asdict(config),
            "precision": precision,
            "memory_limit_bytes": limit,
            "memory_limit_gib": round(limit / _GIB, 2),
            "head": "abmil",
            "step": "forward with the label, the head's loss, backward (BagClassifier, train mode)",
        },
        "probes": {name: asdict(p) for name, p in probes.items()},
        "rows": rows,
        "checks": {name: _checks(rows, name) for name in config.encoders},
    }
    result["markdown"] = markdown_table(result)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    if markdown is not None:
        Path(markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(markdown).write_text(result["markdown"])
    return result


def _memory_limit(config: MILBenchConfig, dev: torch.device) -> int:
    """Bytes a run may take: the setting, else 90% of the free device (or host) memory."""
    if config.memory_limit is not None:
        return parse_bytes(config.memory_limit)
    return int(0.9 * (available_memory(dev) or 1 << 62))


def _probe_encoder(
    name: str, config: MILBenchConfig, dev: torch.device, precision: str
) -> _EncoderProbe:
    """Build ``name`` once (ValueError if it cannot be built or run on the patches) and
    measure what the estimates need."""
    try:
        encoder = build_bench_encoder(name, config.patch_size, config.seed)
        act = activation_bytes_per_patch(encoder, config.patch_size, precision)
    except ValueError as exc:
        raise ValueError(f"encoder {name}: {exc}") from None
    params = sum(p.numel() * p.element_size() for p in encoder.parameters())
    if dev.type == "cuda":
        fixed = 2 * params  # weights and gradients
    else:
        fixed = int((current_rss_mib() or 0) * _MIB) + params  # + gradients
    return _EncoderProbe(encoder.out_dim, sum(p.numel() for p in encoder.parameters()), act, fixed)


def _graph_patches(strategy: str, n: int, config: MILBenchConfig) -> int:
    """Patches whose activations a step of ``strategy`` holds at once on a bag of ``n``."""
    if strategy == "baseline":
        return n
    if strategy == "sample":
        return min(n, config.sample_size)
    return min(n, config.chunk_size)  # accumulate: one chunk's graph; frozen: one chunk, no graph


def estimate_bytes(
    strategy: str, n: int, config: MILBenchConfig, probe: _EncoderProbe, measured: Sequence[dict]
) -> int:
    """Estimated peak bytes of one run on a bag of ``n`` patches.

    From the model (memory before the bag + the bag's pixels + graph patches x activation
    bytes per patch + features), shifted to the nearest measured run of the same encoder and
    strategy; with two measured bag sizes, their peaks are extrapolated linearly instead.
    """
    pixels = 3 * config.patch_size**2  # bytes per uint8 patch

    def model(size: int) -> float:
        graph = _graph_patches(strategy, size, config) * probe.activation_bytes_per_patch
        return size * pixels + graph + 4 * size * probe.out_dim * 4

    ok = sorted((r for r in measured if r["status"] == "ok"), key=lambda r: r["bag_size"])
    if len(ok) >= 2:
        (n0, p0), (n1, p1) = ((r["bag_size"], r["peak_mib"] * _MIB) for r in ok[-2:])
        slope = (p1 - p0) / (n1 - n0)
        if slope > 0:
            return int(p1 + (n - n1) * slope)
    if ok:
        ref = ok[-1]
        return int(ref["peak_mib"] * _MIB + model(n) - model(ref["bag_size"]))
    return int(probe.fixed_bytes + model(n))


def _run_one(
    config: MILBenchConfig,
    encoder: str,
    strategy: str,
    n: int,
    precision: str,
    probe: _EncoderProbe,
    limit: int,
    rows: list[dict],
    launch: Launcher,
) -> dict:
    """One row: skipped (by the estimate, or a smaller bag did not fit), or measured."""
    same = [r for r in rows if r["encoder"] == encoder and r["strategy"] == strategy]
    est = estimate_bytes(strategy, n, config, probe, same)
    row: dict = {
        "encoder": encoder,
        "strategy": strategy,
        "bag_size": n,
        "estimated_mib": round(est / _MIB, 1),
    }
    if config.skip_unfit:
        if est > limit:
            row["status"] = (
                f"skipped: estimated {est / _GIB:.1f} GiB > available {limit / _GIB:.1f} GiB"
            )
        elif any(r["status"] == "oom" or r["status"].startswith("skipped") for r in same):
            row["status"] = "skipped: a smaller bag did not fit"
        if "status" in row:
            logger.warning("%s %s N=%d %s", encoder, strategy, n, row["status"])
            return row
    args = {
        "encoder": encoder,
        "strategy": strategy,
        "bag_size": n,
        "patch_size": config.patch_size,
        "chunk_size": config.chunk_size,
        "sample_size": config.sample_size,
        "device": config.device,
        "precision": precision,
        "repeats": config.repeats,
        "warmup": config.warmup,
        "seed": config.seed,
        "threads": config.threads,
        "allocator": config.allocator,
    }
    logger.warning("running %s %s N=%d (estimated %.0f MiB) ...", encoder, strategy, n, est / _MIB)
    row.update(launch(args))
    if row["status"] == "ok":
        _add_memory_fields(row, torch.device(config.device))
        logger.warning(
            "%s %s N=%d: %.3f s/step, peak %.0f MiB",
            encoder,
            strategy,
            n,
            row["seconds_per_step"],
            row["peak_mib"],
        )
    else:
        logger.error("%s %s N=%d %s: %s", encoder, strategy, n, row["status"], row.get("error", ""))
    return row


def _add_memory_fields(row: dict, dev: torch.device) -> None:
    """The device's peak (``peak_mib``: CUDA allocated or CPU RSS), its increase over the
    memory before the bag, and the working memory (the increase less the bag's pixels)."""
    row["peak_rss_increase_mib"] = round(row["peak_rss_mib"] - row["rss_before_bag_mib"], 1)
    if dev.type == "cuda":
        row["peak_cuda_increase_mib"] = round(row["peak_cuda_mib"] - row["cuda_before_bag_mib"], 1)
        row["peak_mib"], row["peak_increase_mib"] = (
            row["peak_cuda_mib"],
            row["peak_cuda_increase_mib"],
        )
    else:
        row["peak_mib"], row["peak_increase_mib"] = (
            row["peak_rss_mib"],
            row["peak_rss_increase_mib"],
        )
    row["working_mib"] = round(row["peak_increase_mib"] - row["bag_mib"], 1)


def _process_launcher(timeout_s: float | None, threads: int | None) -> Launcher:
    """A launcher that runs each worker in a fresh Python process."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)

    def launch(args: dict) -> dict:
        cmd = [
            sys.executable,
            "-m",
            "gigastream.models.bag_bench_worker",
            "--worker",
            json.dumps(args),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "error": f"timed out after {timeout_s:g} s"}
        return worker_outcome(proc.returncode, proc.stdout, proc.stderr)

    return launch


def worker_outcome(returncode: int, stdout: str, stderr: str) -> dict:
    """A worker's result from its exit status and output: its JSON (``ok`` or ``oom``),
    ``oom`` when it was killed by SIGKILL (the kernel's out-of-memory killer), else
    ``failed`` with the end of its stderr."""
    lines = stdout.strip().splitlines()
    if returncode in (0, 3) and lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:  # no JSON line: classified by the exit status below
            lines = []
    if returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):
        return {"status": "oom", "error": "worker killed by SIGKILL (out of memory?)"}
    tail = stderr.strip().splitlines()
    return {
        "status": "failed",
        "error": tail[-1] if tail else f"exit status {returncode}",
        "stderr": stderr[-4000:],
    }


def _checks(rows: list[dict], encoder: str) -> dict:
    """The targets for one encoder: ``accumulate``'s memory at its largest measured bag
    against its smallest, and its time per patch against ``baseline``'s."""
    ok = {
        (r["strategy"], r["bag_size"]): r
        for r in rows
        if r["encoder"] == encoder and r["status"] == "ok"
    }
    checks: dict = {}
    acc = sorted((r for (s, _), r in ok.items() if s == "accumulate"), key=lambda r: r["bag_size"])
    if len(acc) >= 2:
        small, large = acc[0], acc[-1]

        def ratio(key: str) -> float | None:
            return round(large[key] / small[key], 3) if small[key] > 0 else None

        working = ratio("working_mib")
        checks["accumulate_memory"] = {
            "smallest_bag": small["bag_size"],
            "largest_bag": large["bag_size"],
            "peak_ratio": ratio("peak_mib"),
            "increase_ratio": ratio("peak_increase_mib"),
            "working_ratio": working,
            "target": MEMORY_TARGET,
            "met": working is not None and working <= MEMORY_TARGET,
            "on": "working memory: the peak's increase over the memory before the bag, less "
            "the bag's pixels",
        }
    by_size = {
        str(n): round(r["seconds_per_patch"] / ok[("baseline", n)]["seconds_per_patch"], 3)
        for (s, n), r in sorted(ok.items(), key=lambda kv: kv[0][1])
        if s == "accumulate" and ("baseline", n) in ok
    }
    if by_size:
        worst = max(by_size.values())
        checks["accumulate_vs_baseline_time"] = {
            "by_bag_size": by_size,
            "max": worst,
            "target": TIME_TARGET,
            "met": worst <= TIME_TARGET,
        }
    return checks


def machine_info(dev: torch.device) -> dict:
    """The machine and software the benchmark ran on."""
    import timm
    import torchvision

    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / _GIB, 1),
        "ram_available_gib": round((available_memory(torch.device("cpu")) or 0) / _GIB, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model(),
    }
    if dev.type == "cuda":
        info["cuda"] = torch.version.cuda
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(dev).total_memory / _GIB, 1)
    return info


def markdown_table(result: dict) -> str:
    """The rows as a markdown table, the machine and the checks below it."""
    memory = "CUDA allocated" if result["machine"]["device"].startswith("cuda") else "RSS"
    lines = [
        f"| encoder | strategy | patches | status | s / step | ms / patch | peak {memory} MiB "
        "| + over pre-bag MiB | working MiB | estimated MiB |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if r["status"] == "ok":
            cells = [
                f"{r['seconds_per_step']:.3f}",
                f"{1000 * r['seconds_per_patch']:.2f}",
                f"{r['peak_mib']:.0f}",
                f"{r['peak_increase_mib']:.0f}",
                f"{r['working_mib']:.0f}",
            ]
        else:
            cells = ["-"] * 5
        status = r["status"] if r["status"] != "failed" else f"failed: {r.get('error', '')[:60]}"
        lines.append(
            f"| {r['encoder']} | {r['strategy']} | {r['bag_size']} | {status} | "
            + " | ".join(cells)
            + f" | {r['estimated_mib']:.0f} |"
        )
    m, s = result["machine"], result["settings"]
    lines += [
        "",
        f"Machine: {m['device_name']}, {m['cpus_usable']} of {m['cpu_count']} CPU cores, "
        f"{m['ram_gib']} GiB RAM, torch {m['torch']}, timm {m['timm']} (load average "
        f"{m['load_average_1min']} at the start, {m['load_average_1min_end']} at the end; "
        f"{result['wall_seconds']:.0f} s in all). Patches {s['patch_size']} px, chunk "
        f"{s['chunk_size']}, sample {s['sample_size']}, precision {s['precision']}, "
        f"{s['warmup']} warm-up + {s['repeats']} timed step(s), threads {s['threads'] or 'default'}, "
        f"glibc allocator {s.get('allocator', 'default')}.",
        "",
    ]
    if s.get("command"):
        lines += [f"Command: `{s['command']}`", ""]
    for encoder, checks in result["checks"].items():
        mem, tim = checks.get("accumulate_memory"), checks.get("accumulate_vs_baseline_time")
        if mem:
            lines.append(
                f"- {encoder}: accumulate working memory {mem['largest_bag']} / {mem['smallest_bag']}"
                f" patches = {mem['working_ratio']}x (peak {mem['peak_ratio']}x; target <= "
                f"{mem['target']}x: {'met' if mem['met'] else 'NOT met'})"
            )
        if tim:
            per = ", ".join(f"{n}: {v}x" for n, v in tim["by_bag_size"].items())
            lines.append(
                f"- {encoder}: accumulate / baseline time per patch {per} (target <= "
                f"{tim['target']}x: {'met' if tim['met'] else 'NOT met'})"
            )
    return "\n".join(lines) + "\n"


__all__ = [
    "DEFAULT_BAG_SIZES",
    "DEFAULT_ENCODERS",
    "MILBenchConfig",
    "estimate_bytes",
    "machine_info",
    "markdown_table",
    "run_mil_benchmark",
    "worker_outcome",
]
