"""The ``gigastream`` console command.

Every module in :mod:`gigastream.cli` other than this one defines one subcommand:

- ``COMMAND``: a tuple naming it, e.g. ``("bench", "streaming")`` for ``gigastream bench streaming``;
- ``HELP``: a one-line description;
- ``add_arguments(parser)``: adds its flags to an :class:`argparse.ArgumentParser`;
- ``run(args) -> int``: does the work by calling the library, returns the exit code.

Subcommands are discovered, so adding one never touches this file.

SIGTERM (a scheduler's stop) and SIGINT (Ctrl+C) stop any command at once: the signal
raises :class:`Stopped` where the command is, outputs not yet written stay unwritten (each
is written atomically), and the command exits ``128 + signal`` (143, 130) with one line
``gigastream <command>: interrupted: stopped by SIGTERM``. ``train`` handles them itself while it
trains (its run records ``interrupted`` and saves ``interrupted.ckpt``).

Errors a user can fix (gigastream's own, and what libraries raise for bad files, a full
disk or too little memory) are turned into one line ``gigastream <command>: error: ...`` (as
argparse names its own usage errors, e.g. ``gigastream train: error: ...``) at one place,
:func:`error_line` (``-v`` prints the traceback too), and exit 1; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import pickle
import pkgutil
import signal
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence

import gigastream

logger = logging.getLogger(__name__)

#: The signals that stop a command (:func:`stop_on_signals`).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(KeyboardInterrupt):
    """A command stopped by SIGTERM or SIGINT (:func:`stop_on_signals`)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals(received: list[int]) -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`Stopped` (each is appended to ``received``) until
    the block ends; the previous handlers are put back then. Outside the main thread
    signals are left alone.

    A library that catches the ``KeyboardInterrupt`` and exits instead (Lightning's
    predict loop calls ``sys.exit(1)``) still leaves the signal in ``received``.
    """

    def handler(signum: int, frame) -> None:
        received.append(signum)
        raise Stopped(signum)

    previous: dict[int, object] = {}
    with contextlib.suppress(ValueError):  # not the main thread
        for signum in STOP_SIGNALS:
            previous[signum] = signal.getsignal(signum)
            signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, signal.SIG_DFL if old is None else old)


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


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` that shows every flag's default (where it has one of its own: a flag whose
    default comes from the run's config says so in its help) and marks required flags."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.help is argparse.SUPPRESS:
            return action.help
        if action.required and action.option_strings:
            text += " (required)"
        default = action.default
        shown = default not in (None, False, argparse.SUPPRESS) and not isinstance(default, list)
        if shown and "default" not in text and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _add_verbose(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default,
        help="more logging, and the traceback of an error (-vv: debug)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gigastream",
        description="Exact, memory-bounded training on gigapixel images and huge MIL bags.",
    )
    parser.add_argument(
        "--version", action="version", version=f"gigastream {gigastream.__version__}"
    )
    _add_verbose(parser, 0)
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
            path[-1],
            help=getattr(module, "HELP", ""),
            description=getattr(module, "HELP", ""),
            formatter_class=HelpFormatter,
        )
        module.add_arguments(leaf)
        _add_verbose(leaf, argparse.SUPPRESS)  # also after the command: gigastream train -v
        leaf.set_defaults(_run=module.run, _prog=leaf.prog)  # "gigastream train"
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
    prog = getattr(args, "_prog", "gigastream")  # named as argparse names its usage errors
    received: list[int] = []
    try:
        with stop_on_signals(received):
            return int(run(args) or 0)
    except (KeyboardInterrupt, SystemExit) as exc:  # SIGTERM / SIGINT (a run: "interrupted")
        if isinstance(exc, SystemExit) and not received:
            raise
        if received:  # ours (a library may have turned it into its own exit)
            reason = f"stopped by {signal.Signals(received[0]).name}"
        else:  # train's own handler (RunInterrupted) or a KeyboardInterrupt of the code
            reason = str(exc) or "stopped"
        print(f"{prog}: interrupted: {reason}", file=sys.stderr)
        return 128 + (received[0] if received else signal.SIGINT)
    except Exception as exc:  # the known errors (error_line) as one line; others re-raised
        line = error_line(exc)
        if line is None:
            raise
        if args.verbose:
            traceback.print_exception(exc)
        print(f"{prog}: error: {line}", file=sys.stderr)
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
