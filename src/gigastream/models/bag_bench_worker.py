"""The per-run worker of the MIL bag benchmark: one (encoder, strategy, bag size), one process.

:func:`run_worker` builds the seeded encoder (random initialisation) and ``abmil`` head, a
:class:`~gigastream.mil.strategies.BagClassifier` with the strategy, and a bag of random
uint8 patches ``(N, 3, P, P)`` on the device; it times ``warmup`` untimed and ``repeats``
timed training steps (forward with the label, the head's loss, backward) and returns the
times and the peak memory of this process: CPU peak RSS (``VmHWM``, reset just before the
bag is created so that the imports' peak does not hide the step's; else ``ru_maxrss``) and
the resident set just before the bag was created, CUDA ``max_memory_allocated`` and the allocated bytes
before the bag. :mod:`gigastream.models.bag_benchmark` starts it as
``python -m gigastream.models.bag_bench_worker --worker JSON`` (the JSON holds its arguments), so
every measurement has a fresh process and a peak of its own.

:func:`encoder_config` and :func:`activation_bytes_per_patch` are shared with the driver,
which builds each encoder once before any run to check it and to estimate memory.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from gigastream import precision as precisions
from gigastream.mil.chunked import activation_bytes
from gigastream.streaming.memory import (
    current_rss_mib,
    high_water_rss_mib,
    peak_rss_mib,
    reset_peak_rss,
    tune_cpu_allocator,
)
from gigastream.worker import worker_main

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

HEAD = "abmil"  # the MIL head of every run (2 classes)
_MIB = 2**20


def encoder_config(name: str, patch_size: int, size_option: bool = True) -> dict:
    """Keyword arguments of :class:`~gigastream.models.encoders.EncoderConfig` for ``name``
    on ``patch_size`` px patches: random initialisation, every parameter trainable; with
    ``size_option``, a ``timm:`` model gets ``img_size=patch_size`` (ViTs need it) and
    ``small_cnn`` ``image_size=patch_size``."""
    options: dict = {}
    if size_option and name.startswith("timm:"):
        options["img_size"] = patch_size
    elif name == "small_cnn":
        options["image_size"] = patch_size
    return {"name": name, "weights": None, "finetune": "full", "options": options}


def build_bench_encoder(name: str, patch_size: int, seed: int) -> nn.Module:
    """The seeded patch encoder ``(n, 3, P, P) -> (n, D)`` of ``name`` (``out_dim`` set); a
    timm model that takes no ``img_size`` (a CNN) is built without it.

    Raises:
        ValueError: an unknown encoder name (:class:`~gigastream.models.encoders.EncoderError`).
    """
    from gigastream.models.encoders import EncoderConfig, EncoderError, build_encoder

    torch.manual_seed(seed)
    try:
        return build_encoder(EncoderConfig(**encoder_config(name, patch_size)))
    except EncoderError as exc:
        if not name.startswith("timm:") or "does not take these options" not in str(exc):
            raise
    torch.manual_seed(seed)
    return build_encoder(EncoderConfig(**encoder_config(name, patch_size, size_option=False)))


def activation_bytes_per_patch(
    encoder: nn.Module, patch_size: int, precision: str = "32-true", patches: int = 2
) -> int:
    """Bytes autograd saves per patch in a forward of ``encoder`` (on the CPU, parameters
    excluded; under ``precision``'s autocast): what ``baseline`` holds per patch of a bag.

    Raises:
        ValueError: the encoder fails on ``(patches, 3, patch_size, patch_size)`` uint8 input.
    """
    sample = torch.randint(0, 256, (patches, 3, patch_size, patch_size), dtype=torch.uint8)
    skip = {p.data_ptr() for p in encoder.parameters()}
    dtype = precisions.autocast_dtype(precision)
    try:
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            total = activation_bytes(encoder, sample, skip)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise ValueError(
            f"the encoder does not run on {patch_size} px patches: {type(exc).__name__}: {exc}"
        ) from None
    return total // patches


def run_worker(
    encoder: str,
    strategy: str,
    bag_size: int,
    patch_size: int = 224,
    chunk_size: int = 64,
    sample_size: int = 64,
    device: str = "cpu",
    precision: str = "32-true",
    repeats: int = 3,
    warmup: int = 1,
    seed: int = 0,
    threads: int | None = None,
    allocator: str = "default",
) -> dict:
    """One (encoder, strategy, bag size) in this process: times and peak memory.

    ``allocator``: ``tuned`` fixes glibc's mmap threshold first
    (:func:`~gigastream.streaming.memory.tune_cpu_allocator`, CPU only), so the peak RSS is
    that of live memory rather than of what the heap kept of freed chunks.

    Returns:
        ``seconds`` (each timed step), ``seconds_per_step`` (their median),
        ``seconds_per_patch`` (per patch of the bag, also for ``sample``), ``bag_mib``
        (the bag's pixels), ``rss_before_bag_mib`` (the resident set just before the bag),
        ``peak_rss_mib`` (the peak RSS since then where Linux can reset it,
        ``peak_rss_since_bag``; else the process's), ``peak_rss_before_bag_mib`` (the peak of
        the imports and the model's construction), ``peak_rss_lifetime_mib``; on CUDA
        ``cuda_before_bag_mib``, ``peak_cuda_mib``, ``peak_cuda_reserved_mib``; for
        ``frozen`` also ``seconds_per_step_cached`` (the head's step on features computed
        once, the cost of the later epochs).
    """
    from gigastream.mil.heads import create_mil_head
    from gigastream.mil.strategies import BagClassifier, StrategyConfig

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    tuned = allocator == "tuned" and dev.type == "cpu" and tune_cpu_allocator()
    autocast = precisions.autocast_dtype(precision)
    enc = build_bench_encoder(encoder, patch_size, seed).to(dev)
    head = create_mil_head(HEAD, enc.out_dim, 2).to(dev)
    config = StrategyConfig(strategy, chunk_size=chunk_size, sample_size=sample_size)
    model = BagClassifier(enc, head, config, torch.Generator().manual_seed(seed)).train()
    label = 1

    peak_before = peak_rss_mib()  # imports and the model's construction
    reset = reset_peak_rss()  # from here on ru_maxrss is the peak since the bag
    rss_before = current_rss_mib() or peak_before
    cuda_before = None
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        cuda_before = torch.cuda.memory_allocated(dev)
    gen = torch.Generator().manual_seed(seed + 1)
    bag = torch.randint(
        0, 256, (bag_size, 3, patch_size, patch_size), dtype=torch.uint8, generator=gen
    )
    bag = bag.to(dev)  # (N, 3, P, P) uint8

    def autocast_ctx() -> torch.autocast:
        return torch.autocast(dev.type, dtype=autocast or torch.float32, enabled=bool(autocast))

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with autocast_ctx():
            out = model(bag, label=label)
            loss = model.loss(out, label)
        loss.backward()

    times = _time_steps(step, dev, warmup, repeats)
    # after the reset the peak is VmHWM (ru_maxrss also keeps the peak of exited threads);
    # ru_maxrss lags /proc's VmRSS by a page or so: the peak is at least either reading
    peak = (high_water_rss_mib() if reset else None) or max(peak_rss_mib(), peak_before)
    peak = max(peak, current_rss_mib() or 0.0, rss_before)
    result = {
        "seconds": [round(t, 4) for t in times],
        "seconds_per_step": statistics.median(times),
        "seconds_per_patch": statistics.median(times) / bag_size,
        "bag_mib": round(bag.numel() * bag.element_size() / _MIB, 1),
        "rss_before_bag_mib": round(rss_before, 1),
        "peak_rss_before_bag_mib": round(peak_before, 1),
        "peak_rss_mib": round(peak, 1),
        "peak_rss_lifetime_mib": round(max(peak, peak_before), 1),
        "peak_rss_since_bag": reset,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "threads": torch.get_num_threads(),
        "allocator_tuned": tuned,
    }
    if cuda_before is not None:
        result["cuda_before_bag_mib"] = round(cuda_before / _MIB, 1)
        result["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(dev) / _MIB, 1)
        result["peak_cuda_reserved_mib"] = round(torch.cuda.max_memory_reserved(dev) / _MIB, 1)
        result["cuda_device"] = torch.cuda.get_device_name(dev)
    if strategy == "frozen":
        with torch.no_grad(), autocast_ctx():
            features = model.features(bag)  # (N, D), computed once as a cache would hold it

        def cached_step() -> None:
            model.zero_grad(set_to_none=True)
            with autocast_ctx():
                loss = model.loss(model.head(features, label=label), label)
            loss.backward()

        cached = _time_steps(cached_step, dev, warmup, repeats)
        result["seconds_per_step_cached"] = statistics.median(cached)
    return result


def _time_steps(
    step: Callable[[], None], dev: torch.device, warmup: int, repeats: int
) -> list[float]:
    """``warmup`` untimed then ``repeats`` timed calls of ``step``: seconds each."""

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def _is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (CUDA or CPU)."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text


def _oom_result(exc: BaseException) -> tuple[dict, int] | None:
    """An allocation failure as the worker's answer (status ``oom``, exit code 3)."""
    if not _is_oom(exc):
        return None
    return {"status": "oom", "error": f"{type(exc).__name__}: {exc}"[:2000]}, 3


def main(argv: list[str] | None = None) -> int:
    """The worker: ``--worker JSON`` runs :func:`run_worker` with the JSON object's
    arguments and prints its result as the last line of stdout (one JSON object; an
    allocation failure prints ``{"status": "oom", "error": ...}`` and exits with 3).

    It parses nothing else: the benchmark's command line is ``gigastream bench mil``.
    """
    return worker_main(
        argv,
        lambda **args: {"status": "ok", **run_worker(**args)},
        "gigastream.models.bag_bench_worker",
        "bench mil",
        on_error=_oom_result,
    )


__all__ = [
    "HEAD",
    "activation_bytes_per_patch",
    "build_bench_encoder",
    "encoder_config",
    "run_worker",
]


if __name__ == "__main__":
    sys.exit(main())
