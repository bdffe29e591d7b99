"""Memory sizes: reading budgets like ``"4GiB"``, printing bytes, and the host budget in force."""

from __future__ import annotations

import math
import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1e3,
    "kb": 1e3,
    "m": 1e6,
    "mb": 1e6,
    "g": 1e9,
    "gb": 1e9,
    "t": 1e12,
    "tb": 1e12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(value: int | float | str) -> int:
    """``"4GiB"``, ``"512 MiB"``, ``"2e9"`` or a number of bytes -> bytes.

    Example:
        >>> parse_bytes("4GiB"), parse_bytes("512 MiB"), parse_bytes("2e9")
        (4294967296, 536870912, 2000000000)
    """
    if isinstance(value, int | float):
        return int(value)
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", value)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read memory size {value!r}; write it like '4GiB' or '512MiB'")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_bytes(n: float) -> str:
    """Bytes for people, in binary units.

    Example:
        >>> format_bytes(512), format_bytes(3 * 2**30)
        ('512 B', '3.0 GiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def host_budget(host_memory_budget: int | str | None, available_host_bytes: int | None) -> float:
    """The host memory offloaded maps may take: the budget given, else what is available,
    else no limit (``math.inf``)."""
    if host_memory_budget is not None:
        return parse_bytes(host_memory_budget)
    if available_host_bytes is not None:
        return int(available_host_bytes)
    return math.inf
