"""The errors and value checks of a run's configuration (:mod:`gigastream.train.config`):
:class:`ConfigError` and the checks the config sections share (finite numbers, memory
sizes, Lightning strategies).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names it and the fix."""


def check_finite(section: Any, prefix: str) -> None:
    """ConfigError for a NaN or infinite number among the float settings of the dataclass
    ``section`` (and of its nested sections), named ``prefix.key``."""
    for spec in dataclasses.fields(section):
        value = getattr(section, spec.name)
        if dataclasses.is_dataclass(value):
            check_finite(value, f"{prefix}.{spec.name}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(
                f"{prefix}.{spec.name} must be a finite number, got {value} (NaN and inf are "
                "not settings)"
            )


def memory_size(value: int | str, name: str) -> int:
    """``value`` (``"8GiB"``, ``"512 MiB"``, ``2e9``, bytes) in bytes, for the setting ``name``.

    Raises:
        ConfigError: not a memory size, or not positive (one line naming ``name``).
    """
    from gigastream.streaming.planner import parse_bytes

    try:
        size = parse_bytes(value)
    except (ValueError, OverflowError):
        size = None
    if size is None or size <= 0:
        raise ConfigError(
            f"{name} {value!r} is not a memory size: write a positive number and a unit, "
            "e.g. 8GiB, 512MiB or 2e9 (bytes)"
        )
    return size


#: The strategies ``train.strategy`` names as examples (Lightning has more).
LIGHTNING_STRATEGIES = ("auto", "ddp", "ddp_spawn", "fsdp", "deepspeed")


def check_strategy(name: str) -> None:
    """ConfigError unless ``name`` is a Lightning strategy (``auto`` or a registered one)."""
    if name.lower() == "auto":
        return
    from lightning.pytorch.strategies import StrategyRegistry

    names = list(StrategyRegistry.available_strategies())
    if name.lower() in names:
        return
    close = difflib.get_close_matches(name.lower(), names, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"train.strategy (--strategy) {name!r} is not a Lightning strategy: use auto (one "
        f"device, or DDP with --devices N), or one of {', '.join(LIGHTNING_STRATEGIES[1:])}, "
        f"...{hint}"
    )
