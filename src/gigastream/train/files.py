"""Files of a run: atomic writes, the run-folder lock, ``metrics.json`` status, checkpoint I/O.

Every file a run writes is written to a temporary name in the same folder and renamed
into place, so a run that dies leaves either the old or the new file, never half a file;
temporaries of a failed write are removed. A run folder is locked (``fcntl.flock`` on
``RUN/.lock``) while a process trains into it, so two runs never write into the same
folder; the lock dies with its process, also after ``kill -9``.
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
from typing import Any

logger = logging.getLogger(__name__)


class RunError(RuntimeError):
    """A run cannot start or go on (folder in use, unwritable, disk full, bad checkpoint)."""


def describe_os_error(exc: OSError, path: str | Path | None = None) -> str:
    """One line naming the file and the fix for an ``OSError`` from writing outputs."""
    if exc.errno is None:  # raised with our own message
        return str(exc)
    where = path or exc.filename or "?"
    if exc.errno == errno.ENOSPC:
        return f"{where}: no space left on the device: free some space or choose another --out"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}: permission denied: choose a writable --out folder"
    if exc.errno == errno.ENOTDIR:
        return f"{where}: a path component is a file, not a folder: choose another --out"
    return f"{where}: {exc.strerror or exc}"


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


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


@contextlib.contextmanager
def run_lock(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder/.lock`` for the duration; RunError if another live process holds it."""
    import fcntl

    path = Path(folder) / ".lock"
    handle = open(path, "a+")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "?"
            raise RunError(
                f"{folder}: another gigastream process (pid {owner}) is training into this "
                "folder; wait for it to finish or choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield path
    finally:
        handle.close()  # releases the lock


def lock_is_held(folder: str | Path) -> bool:
    """Whether a live process holds ``folder/.lock`` (a run is training into ``folder``)."""
    import fcntl

    path = Path(folder) / ".lock"
    if not path.is_file():
        return False
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


class RunRecord:
    """``metrics.json`` of a run, rewritten atomically on every change.

    ``status`` is ``running`` while training, then ``completed``, ``interrupted`` (SIGTERM
    or SIGINT) or ``failed: <reason>``.
    """

    def __init__(
        self, path: str | Path, data: dict[str, Any] | None = None, enabled: bool = True
    ) -> None:
        self.path = Path(path)
        self.data: dict[str, Any] = data if data is not None else {}
        self.enabled = enabled  # False on DDP ranks other than 0: they never write

    def update(self, **values: Any) -> None:
        """Set top-level entries and rewrite the file."""
        self.data.update(values)
        self.save()

    def save(self) -> None:
        """Rewrite the file (atomically)."""
        if self.enabled:
            write_json(self.path, self.data)

    @classmethod
    def load(cls, path: str | Path) -> RunRecord:
        """The record in ``path`` (an empty one if the file is missing or unreadable)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        return cls(path, data if isinstance(data, dict) else {})


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
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, OSError) as exc:
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
    "atomic_save",
    "atomic_write_text",
    "check_writable_folder",
    "describe_os_error",
    "jsonable",
    "load_checkpoint_file",
    "run_lock",
    "write_json",
]
