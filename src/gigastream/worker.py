"""The entry point of a benchmark's worker process: ``python -m MODULE --worker JSON``.

Every benchmark that measures peak memory runs each mode in a fresh process (``bench
streaming``, ``bench mil``, ``bench step``); that process is started with its arguments as
one JSON object and prints its result as the last line of stdout. :func:`worker_main` is that
entry point, so the three parse and answer alike.

Example:
    >>> worker_main(["--worker", '{"x": 2}'], lambda x: {"y": x * 2}, "m", "bench m")  # doctest: +SKIP
    {"y": 4}
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


def worker_main(
    argv: list[str] | None,
    run: Callable[..., dict[str, Any]],
    module: str,
    command: str,
    on_error: Callable[[BaseException], tuple[dict[str, Any], int] | None] | None = None,
) -> int:
    """Run ``run(**arguments)`` for ``--worker JSON`` and print its result as one JSON line.

    Args:
        argv: the command line after the program (``None``: ``sys.argv[1:]``).
        run: the worker function; its keyword arguments are the JSON object's keys.
        module: the worker's module, for the usage line.
        command: the benchmark's own command (the usage line points there).
        on_error: turns an exception of ``run`` into ``(result, exit code)`` printed like a
            result (e.g. an allocation failure); ``None`` from it re-raises.

    Returns:
        0, 2 for a command line that is not ``--worker JSON``, or ``on_error``'s code.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) != 2 or argv[0] != "--worker":
        print(
            f"usage: python -m {module} --worker JSON (run_worker's arguments); the benchmark "
            f"itself is `gigastream {command}`",
            file=sys.stderr,
        )
        return 2
    try:
        result = run(**json.loads(argv[1]))
    except Exception as exc:
        answer = on_error(exc) if on_error is not None else None
        if answer is None:
            raise
        result, code = answer
        print(json.dumps(result))
        return code
    print(json.dumps(result))
    return 0
