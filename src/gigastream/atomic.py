"""Files written whole or not at all: a temporary file beside the target, renamed into place.

A reader (another process, a run that resumes, a viewer) sees the old file or the new one,
never half of one; a write that fails (a full disk, an interrupt) removes its temporary and
leaves the old file as it was. Every writer of results in gigastream goes through
:func:`atomic_write`: checkpoints and JSON records, tissue masks, feature files, GeoJSON,
heatmaps and curves.

Example:
    >>> from pathlib import Path
    >>> atomic_write(Path("out.txt"), lambda tmp: tmp.write_text("done"))  # doctest: +SKIP
    PosixPath('out.txt')
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path


def temporary_path(path: Path) -> Path:
    """The temporary a write of ``path`` goes to (hidden, per process, beside it)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` through ``write(temporary)``, then rename the temporary into place.

    Raises:
        OSError: of the write or the rename, naming ``path`` (not the temporary) when the
            error named no file or the temporary; the temporary is removed.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.filename in (None, str(tmp), tmp):
            exc.filename = str(path)  # write(2) names no file; the temporary is ours
        raise
    return path


__all__ = ["atomic_write", "temporary_path"]
