"""One registry helper for every named component (MIL heads, trunks, encoders).

A :class:`Registry` maps a name to a factory and builds components by name with errors
that list the valid names. It imports nothing from gigastream, so every package can use it.

Example:
    >>> shapes = Registry("shape")
    >>> shapes.register("square", lambda side: side * side)
    >>> shapes.names(), shapes.get("square")(3)
    (['square'], 9)
    >>> shapes.get("circle")
    Traceback (most recent call last):
    ...
    ValueError: unknown shape 'circle'; available: square
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """Named factories of one kind of component.

    Args:
        kind: what the factories build, used in error messages (``"MIL head"``, ``"trunk"``).
        factories: initial ``name -> factory`` entries.
    """

    def __init__(self, kind: str, factories: dict[str, F] | None = None) -> None:
        self.kind = kind
        self._factories: dict[str, F] = dict(factories or {})

    def register(self, name: str, factory: F) -> None:
        """Add ``factory`` under a new ``name``; ValueError if the name is taken."""
        if name in self._factories:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._factories[name] = factory

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._factories)

    def get(self, name: str) -> F:
        """The factory of ``name``; ValueError naming the valid names if unknown."""
        try:
            return self._factories[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


__all__ = ["Registry"]
