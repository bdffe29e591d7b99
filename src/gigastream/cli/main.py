"""The ``gigastream`` console command.

Every module in :mod:`gigastream.cli` other than this one defines one subcommand:

- ``COMMAND``: a tuple naming it, e.g. ``("bench", "streaming")`` for ``gigastream bench streaming``;
- ``HELP``: a one-line description;
- ``add_arguments(parser)``: adds its flags to an :class:`argparse.ArgumentParser`;
- ``run(args) -> int``: does the work by calling the library, returns the exit code.

Subcommands are discovered, so adding one never touches this file.

Errors a user can fix (gigastream's own, and what libraries raise for bad files, a full
disk or too little memory) are turned into one line ``gigastream: error: ...`` at one place,
:func:`error_line` (``-v`` prints the traceback too), and exit 1; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pickle
import pkgutil
import sys
import traceback
import warnings
from collections.abc import Sequence

import gigastream

logger = logging.getLogger(__name__)


def _command_modules() -> list:
    import gigastream.cli as pkg

    modules = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name in {"main"} or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"gigastream.cli.{info.name}")
        if hasattr(module, "COMMAND") and hasattr(module, "run"):
            modules.append(module)
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gigastream",
        description="Exact, memory-bounded training on gigapixel images and huge MIL bags.",
    )
    parser.add_argument(
        "--version", action="version", version=f"gigastream {gigastream.__version__}"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more logging, and the traceback of an error (-vv: debug)",
    )
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {
        (): parser.add_subparsers(dest="command", metavar="COMMAND")
    }
    parsers: dict[tuple[str, ...], argparse.ArgumentParser] = {(): parser}
    for module in _command_modules():
        path: tuple[str, ...] = tuple(module.COMMAND)
        for depth in range(1, len(path)):
            prefix = path[:depth]
            if prefix not in parsers:
                sub = groups[prefix[:-1]].add_parser(prefix[-1], help=f"{prefix[-1]} commands")
                parsers[prefix] = sub
                groups[prefix] = sub.add_subparsers(
                    dest="_".join(prefix) + "_command", metavar="COMMAND"
                )
            elif prefix not in groups:
                groups[prefix] = parsers[prefix].add_subparsers(metavar="COMMAND")
        leaf = groups[path[:-1]].add_parser(
            path[-1], help=getattr(module, "HELP", ""), description=getattr(module, "HELP", "")
        )
        module.add_arguments(leaf)
        leaf.set_defaults(_run=module.run)
        parsers[path] = leaf
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose < 2:  # noise from Lightning's internals
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # frozen
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help()
        return 2
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt as exc:  # SIGINT / SIGTERM (a run records status "interrupted")
        print(f"gigastream: interrupted: {exc or 'stopped'}", file=sys.stderr)
        return 130
    except Exception as exc:  # the known errors (error_line) as one line; others re-raised
        line = error_line(exc)
        if line is None:
            raise
        if args.verbose:
            traceback.print_exception(exc)
        print(f"gigastream: error: {line}", file=sys.stderr)
        return 1


def error_line(exc: BaseException) -> str | None:
    """The one line a user is told for ``exc``; ``None`` for an error that is a bug.

    Known: gigastream's errors (``ValueError``/``RuntimeError`` subclasses that name the
    problem and the fix), ``OSError`` (missing, unwritable, full disk: the file named),
    ``MemoryError``, an unreadable pickle (torch's advice to load with
    ``weights_only=False`` left out: it runs the file's code) and Lightning's
    ``MisconfigurationException``.
    """
    if isinstance(exc, OSError):  # unwritable --out, full disk, missing file, ...
        from gigastream.train.files import describe_os_error

        return describe_os_error(exc)
    if isinstance(exc, MemoryError):
        return (
            "out of memory: lower --memory-budget or --tile-size, use fewer --workers, or "
            "use a machine with more memory"
        )
    if isinstance(exc, pickle.UnpicklingError):
        from gigastream.train.files import unpickling_reason

        return (
            "a file is not a PyTorch state_dict or checkpoint (corrupt or truncated?): "
            f"{unpickling_reason(exc)}"
        )
    lightning = sys.modules.get("lightning.fabric.utilities.exceptions")
    misconfiguration = getattr(lightning, "MisconfigurationException", ())
    if isinstance(exc, (ValueError, RuntimeError, misconfiguration)):
        return str(exc).strip() or type(exc).__name__  # a manifest's problems: one a line
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
