"""The order in which the pieces of a stream are needed, shared by the reader threads.

Streaming reads a lazy input several pieces ahead, each on its own thread
(:func:`gigastream.streaming.input._reads_ahead`); a slide may cut each piece into bands
decoded by a shared pool of readers (:mod:`gigastream.wsi.bands`). For the first piece
to be ready first, the pool must decode its bands before those of the pieces read ahead,
whatever order the threads happen to submit them in. So the stream draws a ticket for each
piece as it asks for it (:func:`next_ticket`, a process-wide increasing number), the piece's
thread carries it while it reads (:func:`run_with_ticket`), and the pool serves bands by
ticket (:func:`current_ticket`), lowest first.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

_COUNTER = itertools.count()
_COUNTER_LOCK = threading.Lock()
_LOCAL = threading.local()


def next_ticket() -> int:
    """A number larger than every ticket drawn before, in this process."""
    with _COUNTER_LOCK:
        return next(_COUNTER)


def current_ticket() -> int:
    """The ticket of the piece this thread is reading, or a fresh one (a read outside a
    stream goes behind what was asked for before it)."""
    ticket = getattr(_LOCAL, "ticket", None)
    return next_ticket() if ticket is None else ticket


def run_with_ticket(ticket: int, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` with ``ticket`` as this thread's :func:`current_ticket`."""
    previous = getattr(_LOCAL, "ticket", None)
    _LOCAL.ticket = ticket
    try:
        return fn(*args)
    finally:
        _LOCAL.ticket = previous


__all__ = ["current_ticket", "next_ticket", "run_with_ticket"]
