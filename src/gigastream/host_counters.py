"""What the host did while a benchmark step ran: this process's CPU time, page faults and
context switches, and the whole machine's CPU time by kind (other processes, steal).

A step's wall time on a shared or virtual machine depends on more than the step: another
process on the same cores, a hypervisor taking cores away (*steal*, the ``steal`` column
of ``/proc/stat``), page faults of fresh allocations. :func:`snapshot` reads the counters
(``getrusage`` for this process, ``/proc/stat`` for the machine) and :func:`between` turns
two snapshots into the shares that explain a slow step:

- ``cpu_seconds``: this process's user + system CPU time, and ``cpu_use`` =
  ``cpu_seconds / (wall × cores)``, the share of the machine the step used;
  ``system_seconds``: the kernel's part of it (page faults of fresh memory, zeroing pages);
- ``others_share``: CPU time of every other process and the kernel's interrupts, as a share of
  the machine's ``wall × cores``;
- ``steal_share``: time the hypervisor ran something else on our virtual cores;
- ``idle_share``: cores idle (or waiting for I/O) during the step;
- ``minor_faults`` / ``major_faults`` / ``voluntary_switches`` / ``involuntary_switches``.

``/proc/stat`` exists on Linux only; elsewhere the machine-wide shares are ``None``.

Example:
    >>> before = snapshot()
    >>> _ = sum(i * i for i in range(10_000))
    >>> sorted(between(before, snapshot()))[:3]
    ['cpu_seconds', 'cpu_use', 'idle_share']
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class Snapshot:
    """The counters at one moment.

    Attributes:
        wall: ``time.perf_counter()`` (s).
        user, system: this process's CPU time (s, every thread).
        minor_faults, major_faults, voluntary_switches, involuntary_switches: this process's.
        machine: the ``/proc/stat`` ``cpu`` line in seconds by kind (``user``, ``nice``,
            ``system``, ``idle``, ``iowait``, ``irq``, ``softirq``, ``steal``), or ``None``.
    """

    wall: float
    user: float
    system: float
    minor_faults: int
    major_faults: int
    voluntary_switches: int
    involuntary_switches: int
    machine: dict[str, float] | None


_KINDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def _machine_seconds() -> dict[str, float] | None:
    """The machine's CPU time by kind, summed over cores (s), from ``/proc/stat``."""
    try:
        first = _PROC_STAT.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not first or first[0] != "cpu":
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    values = [int(v) for v in first[1 : 1 + len(_KINDS)]]
    return {kind: v / ticks for kind, v in zip(_KINDS, values, strict=False)}


def snapshot() -> Snapshot:
    """The counters now (cheap: one ``getrusage`` and one read of ``/proc/stat``)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return Snapshot(
        wall=time.perf_counter(),
        user=usage.ru_utime,
        system=usage.ru_stime,
        minor_faults=usage.ru_minflt,
        major_faults=usage.ru_majflt,
        voluntary_switches=usage.ru_nvcsw,
        involuntary_switches=usage.ru_nivcsw,
        machine=_machine_seconds(),
    )


def between(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    """What happened from ``before`` to ``after`` (see the module docstring for the keys).

    The shares are of the machine's ``wall × cores``: they add up to about 1 with
    ``cpu_use`` (the clock ticks of ``/proc/stat`` are 10 ms, so short intervals are rough).
    """
    wall = max(after.wall - before.wall, 1e-9)
    cores = os.cpu_count() or 1
    cpu = (after.user - before.user) + (after.system - before.system)
    result: dict[str, Any] = {
        "wall_seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "cpu_use": round(cpu / (wall * cores), 3),
        "system_seconds": round(after.system - before.system, 3),  # page faults, zeroing, ...
        "minor_faults": after.minor_faults - before.minor_faults,
        "major_faults": after.major_faults - before.major_faults,
        "voluntary_switches": after.voluntary_switches - before.voluntary_switches,
        "involuntary_switches": after.involuntary_switches - before.involuntary_switches,
        "others_share": None,
        "steal_share": None,
        "idle_share": None,
    }
    if before.machine is not None and after.machine is not None:
        d = {k: after.machine[k] - before.machine[k] for k in after.machine}
        total = wall * cores
        busy = d["user"] + d["nice"] + d["system"] + d["irq"] + d["softirq"]
        result["others_share"] = round(max(0.0, busy - cpu) / total, 3)
        result["steal_share"] = round(d.get("steal", 0.0) / total, 3)
        result["idle_share"] = round((d["idle"] + d["iowait"]) / total, 3)
    return result


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's name elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def summary(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The worst of several steps' :func:`between` for the shares that slow a step down
    (``others_share``, ``steal_share``: the largest) and the sums of the counts."""
    if not steps:
        return {}

    def worst(key: str) -> float | None:
        values = [s[key] for s in steps if s.get(key) is not None]
        return max(values) if values else None

    counts = ("minor_faults", "major_faults", "voluntary_switches", "involuntary_switches")
    return {
        "steps": len(steps),
        "cpu_use_min": min(s["cpu_use"] for s in steps),
        "system_seconds_per_step": round(
            sum(s.get("system_seconds", 0.0) for s in steps) / len(steps), 3
        ),
        "others_share_max": worst("others_share"),
        "steal_share_max": worst("steal_share"),
        **{f"{key}_per_step": round(sum(s[key] for s in steps) / len(steps)) for key in counts},
    }


__all__ = ["Snapshot", "between", "cpu_model", "snapshot", "summary"]
