"""Process memory: peak/current resident set, free device memory, glibc allocator tuning.

One place for what the streaming planner, the benchmarks and the trainers measure or set.
"""

from __future__ import annotations

import ctypes
import logging
import resource
import sys
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (``ru_maxrss``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB on Linux
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _status_mib(field: str) -> float | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB; ``None`` off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 2**10
    except OSError:
        return None
    return None


def current_rss_mib() -> float | None:
    """Current resident set size of this process, MiB (Linux ``/proc``; ``None`` elsewhere)."""
    return _status_mib("VmRSS")


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set (``VmHWM``) to the current one (Linux >= 4.0:
    ``5`` written to ``/proc/self/clear_refs``); whether it was reset. ``ru_maxrss``
    (:func:`peak_rss_mib`) is not always reset with it: it also keeps the peak of exited
    threads, so read the peak since the reset with :func:`high_water_rss_mib`."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def high_water_rss_mib() -> float | None:
    """This process's peak resident set since the last :func:`reset_peak_rss`, MiB
    (``VmHWM``; ``None`` off Linux)."""
    return _status_mib("VmHWM")


_ALLOCATOR_TUNED = False
AUTO_TUNE_BYTES = 16 * 2**30  # tune_allocator="auto": conventional estimate above this
# release_memory="auto" (CPU): conventional estimate above this. Below it the trim costs
# more than it saves: every tile buffer after a trim is a fresh page fault (vgg_small at
# 512^2 and 1024^2, 2 cores: +21-24% per step), and the resident set is small anyway.
AUTO_RELEASE_BYTES = 4 * 2**30
_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def tune_cpu_allocator(mmap_threshold: int = 128 * 1024) -> bool:
    """Make glibc return freed tile buffers to the OS at once (Linux, CPU tensors).

    glibc raises its mmap threshold dynamically, so after the first large tensors are freed,
    buffers of tens of MB are carved from the heap and stay resident after use; streaming
    allocates and frees many such tile buffers, and the resident set then grows far past
    the live tensors. A fixed threshold serves every allocation >= ``mmap_threshold`` with
    its own mapping, returned to the OS when freed, at the price of fresh page faults on
    every such allocation. Measured here (ResNet-34 trunk, 3072^2, tile 1024, 2 threads):
    streamed peak RSS 3294 -> 2030 MiB but 36 -> 52 s per step; at 8192^2 it keeps the peak
    at 4761 MiB (6450 MiB without). :class:`StreamingModule` therefore calls it
    (``tune_allocator="auto"``) only for inputs whose conventional computation would need
    more than 16 GiB. Process-wide; returns whether the setting is in effect.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    libc = _glibc()
    if libc is None:
        return False
    _ALLOCATOR_TUNED = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)))
    if _ALLOCATOR_TUNED:
        logger.debug("glibc mmap threshold fixed at %d bytes", mmap_threshold)
    return _ALLOCATOR_TUNED


_LIBC: ctypes.CDLL | bool | None = None  # None: not looked up yet; False: not glibc


def _glibc() -> ctypes.CDLL | None:
    """glibc (Linux), looked up once; None where it is not the C library."""
    global _LIBC
    if _LIBC is None:
        _LIBC = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL("libc.so.6")
                libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc only
                _LIBC = libc
            except (OSError, AttributeError):
                pass
    return _LIBC or None


def release_free_memory() -> bool:
    """Return the heap's free memory to the OS now (glibc ``malloc_trim(0)``; Linux only).

    With glibc's default (dynamic) mmap threshold, tile buffers come from the heap and,
    once freed, stay resident and fragmented; the resident set then grows well past the
    live tensors. :class:`StreamingModule` calls it once after each streamed segment's
    forward and backward pass (``release_memory="auto"``: on CPU, for inputs whose
    conventional computation would need more than ``AUTO_RELEASE_BYTES``): the heap is
    still reused within a segment, unlike with :func:`tune_cpu_allocator`, and what the
    finished segment left behind is dropped. Measured on the ResNet-34 trunk at 3072², tile
    1024, 2 cores: 25.0-25.2 s and 2532 MiB peak RSS per step, against 25.0-26.8 s and 3065
    MiB without it; trimming after every tile instead cost 1.5 s more per step. On small
    inputs it costs time (vgg_small at 512²: 0.152 against 0.123 s per step): the memory
    trimmed away is faulted in again by the next segment, hence the threshold.
    Returns whether anything was called (False where glibc is not the allocator).
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def available_memory(device: torch.device) -> int | None:
    """Free memory on ``device`` in bytes (CUDA: free device memory; CPU: MemAvailable)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        return None
    return None
