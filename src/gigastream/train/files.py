"""Files of a run: atomic writes, the run-folder lock, ``metrics.json`` status, checkpoint I/O.

Every file a run writes is written to a temporary name in the same folder and renamed
into place, so a run that dies leaves either the old or the new file, never half a file;
temporaries of a failed write are removed, and the error of a failed write names the file
(not its temporary). A run folder is locked (``fcntl.flock`` on ``RUN/.lock``) while a
process trains into it, so two runs never write into the same folder; the lock dies with its
process, also after ``kill -9``: processes forked while it is held (DataLoader workers) do
not hold it, and a lock whose owner is dead but that a leftover process still holds is
taken over with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from gigastream.atomic import atomic_write

logger = logging.getLogger(__name__)


class RunError(RuntimeError):
    """A run cannot start or go on (folder in use, unwritable, disk full, bad checkpoint)."""


def describe_os_error(
    exc: OSError, path: str | Path | None = None, folder: str | Path | None = None
) -> str:
    """One line naming the file and the fix for an ``OSError`` from writing outputs.

    Args:
        exc: the error.
        path: the file (default: the error's own ``filename``).
        folder: named when neither says which file (e.g. the run folder a library
            writes its logs into).
    """
    if exc.errno is None:  # raised with our own message
        return str(exc)
    where = path or exc.filename or folder or "?"
    if exc.errno == errno.ENOSPC:
        return f"{where}: no space left on the device: free some space or choose another --out"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}: permission denied: choose a writable --out folder"
    if exc.errno == errno.ENOTDIR:
        return f"{where}: a path component is a file, not a folder: choose another --out"
    return f"{where}: {exc.strerror or exc}"


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    return atomic_write(path, write)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return _atomic(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (the folder is created if missing)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _atomic(path, lambda tmp: torch.save(obj, tmp))


def file_identity(path: str | Path) -> dict[str, Any]:
    """What a file's contents are keyed by: its resolved path, size and modification time
    (ns). Raises OSError when it is missing."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return {"path": str(resolved), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def jsonable(value: Any) -> Any:
    """Plain JSON types: NaN/inf become ``None``, numpy scalars and paths are converted."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def write_json(path: str | Path, data: Any) -> Path:
    """Write strict JSON (no NaN) atomically."""
    return atomic_write_text(path, json.dumps(jsonable(data), indent=1, allow_nan=False) + "\n")


def check_writable_folder(folder: str | Path) -> Path:
    """Create ``folder`` and check that files can be written in it; raise RunError if not."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunError(describe_os_error(exc, folder)) from None
    return folder


#: File descriptors of the run locks this process holds (dropped in forked children).
_HELD_LOCKS: set[int] = set()
_fork_hook_installed = False


def _drop_held_locks() -> None:
    """In a forked child: point the inherited lock descriptors at ``/dev/null``, so the
    child (a DataLoader worker) does not keep its parent's run folder locked. The parent's
    lock stays: an ``flock`` lock goes only when every descriptor of it is closed."""
    if not _HELD_LOCKS:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in list(_HELD_LOCKS):
            with contextlib.suppress(OSError):
                os.dup2(null, fd)
    finally:
        os.close(null)
    _HELD_LOCKS.clear()


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _lock_owner(path: Path) -> int | None:
    """The pid written in the lock file ``path`` (``None``: none or unreadable)."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _stale(owner: int | None) -> bool:
    """A held lock whose owner is dead: held by a process it left behind."""
    return owner is not None and owner != os.getpid() and not _pid_alive(owner)


def _take_over(path: Path, owner: int) -> TextIO:
    """Replace the lock file ``path`` of the dead ``owner`` by a new one, locked; its handle.

    Processes that still hold the old file (left behind by ``owner``) keep an unlinked file.
    """
    import fcntl

    logger.warning(
        "%s is held by processes that the dead gigastream process (pid %d) left behind; "
        "taking it over",
        path,
        owner,
    )
    tmp = path.with_name(f".lock.{os.getpid()}.tmp")
    handle = open(tmp, "w+")  # noqa: SIM115 - returned, held by the caller
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        handle.write(str(os.getpid()))
        handle.flush()
        os.replace(tmp, path)
        if os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino:  # another took it over
            raise RunError(
                f"{path.parent}: another gigastream process took over this folder's lock; "
                "wait for it to finish or choose another --out"
            )
    except BaseException:
        handle.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return handle


@contextlib.contextmanager
def run_lock(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder/.lock`` for the duration; RunError if another live process holds it.

    Children forked meanwhile do not hold it (:func:`_drop_held_locks`); a lock whose
    owner (the pid in the file) is dead is taken over with a warning.
    """
    import fcntl

    global _fork_hook_installed
    if not _fork_hook_installed:  # installed on first use: no import-time side effect
        os.register_at_fork(after_in_child=_drop_held_locks)
        _fork_hook_installed = True
    path = Path(folder) / ".lock"
    handle = open(path, "a+")  # noqa: SIM115 - held for the whole block
    held = -1
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = _lock_owner(path)
            if owner is None or not _stale(owner):
                raise RunError(
                    f"{folder}: another gigastream process (pid {owner or '?'}) is training "
                    "into this folder; wait for it to finish or choose another --out"
                ) from None
            handle.close()
            handle = _take_over(path, owner)
        else:
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
        held = handle.fileno()
        _HELD_LOCKS.add(held)
        yield path
    finally:
        _HELD_LOCKS.discard(held)
        handle.close()  # releases the lock


def lock_is_held(folder: str | Path) -> bool:
    """Whether a live process holds ``folder/.lock`` (a run is training into ``folder``);
    a lock whose owner is dead is not (see :func:`run_lock`)."""
    import fcntl

    path = Path(folder) / ".lock"
    if not path.is_file():
        return False
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return not _stale(_lock_owner(path))
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


class RunRecord:
    """``metrics.json`` of a run, rewritten atomically on every change.

    ``status`` is ``running`` while training, then ``completed``, ``interrupted`` (SIGTERM
    or SIGINT) or ``failed: <reason>``. ``saved`` tells whether the file holds ``data``: a
    record that could not be written (a full disk) is written again on the way out.
    """

    def __init__(
        self, path: str | Path, data: dict[str, Any] | None = None, enabled: bool = True
    ) -> None:
        self.path = Path(path)
        self.data: dict[str, Any] = data if data is not None else {}
        self.enabled = enabled  # False on DDP ranks other than 0: they never write
        self.saved = False

    def update(self, **values: Any) -> None:
        """Set top-level entries and rewrite the file."""
        self.data.update(values)
        self.save()

    def save(self) -> None:
        """Rewrite the file (atomically).

        Raises:
            OSError: the file could not be written, unless the status is a way out
                (``failed: ...``, ``interrupted``): then ``saved`` stays ``False`` and the
                caller that ends the run writes it again (a failure is not hidden by a
                second one).
        """
        if not self.enabled:
            return
        try:
            write_json(self.path, self.data)
        except OSError as exc:
            self.saved = False
            status = str(self.data.get("status", ""))
            if not (status.startswith("failed") or status == "interrupted"):
                raise
            logger.warning("could not record status %r: %s", status, describe_os_error(exc))
            return
        self.saved = True

    @classmethod
    def load(cls, path: str | Path) -> RunRecord:
        """The record in ``path`` (an empty one if the file is missing or unreadable)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        record = cls(path, data if isinstance(data, dict) else {})
        record.saved = bool(data)
        return record


#: What ``torch.load`` raises on bytes that are no pickle (a text file, random bytes), as
#: well as ``pickle.UnpicklingError``.
UNREADABLE_PICKLE: tuple[type[Exception], ...] = (
    EOFError,
    KeyError,
    IndexError,
    ValueError,
    TypeError,
    AttributeError,
)


def unpickling_reason(exc: Exception) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, without torch's advice to
    load it with ``weights_only=False`` (which runs whatever code the file holds)."""
    _, _, after = str(exc).partition("WeightsUnpickler error:")
    detail = next((line.strip() for line in after.splitlines() if line.strip()), "")
    detail = detail.split(". ", 1)[0]  # the reason, not torch's advice that follows
    reason = "torch.load with weights_only=True cannot read it"
    return f"{reason}: {detail}" if detail else reason


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """``torch.load`` a checkpoint with ``weights_only=True``; errors name the file.

    Raises:
        RunError: the file is missing, truncated, corrupt or not a checkpoint.
    """
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's text advises weights_only=False: unsafe
        raise RunError(
            f"{path}: not a readable checkpoint (corrupt, truncated, or not a PyTorch "
            f"checkpoint): {unpickling_reason(exc)}"
        ) from None
    except UNREADABLE_PICKLE as exc:  # a text file: KeyError, ...
        raise RunError(
            f"{path}: not a readable checkpoint (corrupt, truncated, or not a PyTorch "
            f"checkpoint): torch.load failed with {type(exc).__name__}: {exc}"
        ) from None
    except (zipfile.BadZipFile, RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(
            f"{path}: not a readable checkpoint (corrupt or truncated?): {first}"
        ) from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise RunError(f"{path}: not a gigastream/Lightning checkpoint (no state_dict)")
    return state


__all__ = [
    "file_identity",
    "RunError",
    "RunRecord",
    "UNREADABLE_PICKLE",
    "unpickling_reason",
    "atomic_save",
    "atomic_write_text",
    "check_writable_folder",
    "describe_os_error",
    "jsonable",
    "load_checkpoint_file",
    "run_lock",
    "write_json",
]
