"""Decoded input that does not fit the in-memory input cache, kept on disk for the backward pass.

A streamed step decodes each tile of a lazy input (a slide) in the forward pass and needs
it again in the backward recompute. What fits the input cache's memory budget stays in host
memory; the rest is written to a :class:`SpillFile` (an unlinked temporary file in a folder
of the user's choosing, e.g. the run folder's ``cache/``) and memory-mapped back in backward,
which costs a disk write and a read instead of a second decode (JPEG: ~20 MP/s per core
here, JPEG 2000 ~6 MP/s; a page-cache read is far faster). The file is unlinked at creation,
so nothing is left behind, even by a killed process.

An item is a tensor or a dataclass whose fields may be tensors (a slide's
:class:`~gigastream.wsi.source.RegionPixels`): every tensor is stored as raw bytes and
rebuilt with its dtype and shape, bit for bit.
"""

from __future__ import annotations

import dataclasses
import logging
import mmap
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

#: disk space a spill leaves free on its file system
DISK_RESERVE_BYTES = 1 << 30

_warned: set[tuple[str, str]] = set()  # (folder, reason) already warned about: once each


@dataclasses.dataclass(frozen=True)
class _Stored:
    """Where one tensor lies in the file."""

    offset: int
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]


def spill_capacity(directory: str | Path) -> int:
    """Bytes a spill in ``directory`` may write: the free space of the file system it is (or
    will be created) on, less :data:`DISK_RESERVE_BYTES`; 0 when that cannot be read.
    Creates nothing."""
    path = Path(directory).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    if not path.is_dir():
        return 0  # a file stands where a folder should be
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return 0
    return max(0, free - DISK_RESERVE_BYTES)


class SpillFile:
    """Items written once in the forward pass and read back (memory-mapped) in backward.

    Args:
        directory: where the temporary file lies (created, with the file, at the first
            write).
        limit_bytes: the most bytes to write; ``None``: :func:`spill_capacity`.

    Nothing here raises for the disk: a folder that cannot be created, a file that cannot be
    opened or a write that fails (a full disk) stops the spill with one warning
    (:attr:`failed` says why) and later items are refused, to be decoded again.

    Example:
        >>> import tempfile
        >>> spill = SpillFile(tempfile.gettempdir())
        >>> key = spill.put(torch.arange(6, dtype=torch.uint8).reshape(2, 3))
        >>> spill.get(key).tolist()
        [[0, 1, 2], [3, 4, 5]]
        >>> spill.close()
    """

    def __init__(self, directory: str | Path, limit_bytes: int | None = None) -> None:
        self.directory = Path(directory)
        self._file: Any = None  # opened at the first write
        self._map: mmap.mmap | None = None
        self.bytes = 0  # written so far
        self.failed: str | None = None  # why writing stopped (a full disk), if it did
        if limit_bytes is None:
            limit_bytes = spill_capacity(directory)
            if limit_bytes == 0:
                self._stop("not a folder, or less than 1 GiB free")
        self.limit_bytes = limit_bytes

    def _stop(self, reason: str) -> None:
        """Refuse every later item; warn once per folder and reason."""
        self.failed = reason
        if (str(self.directory), reason) not in _warned:
            _warned.add((str(self.directory), reason))
            logger.warning(
                "input spill in %s stopped (%s): tiles beyond the input cache are decoded "
                "again in backward",
                self.directory,
                reason,
            )

    def fits(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more may be written."""
        return self.failed is None and self.bytes + nbytes <= self.limit_bytes

    def put(self, item: Any) -> Any | None:
        """Write ``item``; returns its key for :meth:`get`, or ``None`` when it could not be
        written (the disk is full: the item must be read again; later puts are refused)."""
        if self.failed is not None:
            return None
        start = self.bytes
        try:
            if self._file is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._file = tempfile.TemporaryFile(dir=self.directory, prefix="gigastream-input-")
            return self._store(item)
        except OSError as exc:
            self._stop(f"{type(exc).__name__}: {exc}")
            if self._file is not None:
                self._file.truncate(start)
                self._file.seek(start)
            self.bytes = start
            return None

    def _store(self, item: Any) -> Any:
        if isinstance(item, Tensor):
            return self._write(item)
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            fields = {
                f.name: self._write(value)
                for f in dataclasses.fields(item)
                if isinstance(value := getattr(item, f.name), Tensor)
            }
            return dataclasses.replace(item, **fields)
        raise TypeError(f"cannot spill a {type(item).__name__}: a tensor or a dataclass of tensors")

    def _write(self, tensor: Tensor) -> _Stored:
        data = tensor.detach().to("cpu").contiguous()
        raw = data.reshape(-1).view(torch.uint8).numpy()  # its bytes, no copy
        nbytes = data.numel() * data.element_size()
        offset = self.bytes
        self._file.write(memoryview(raw))
        self.bytes += nbytes
        return _Stored(offset, nbytes, data.dtype, tuple(data.shape))

    def get(self, key: Any) -> Any:
        """The item written as ``key``, rebuilt bit for bit (its tensors are copies)."""
        if isinstance(key, _Stored):
            return self._read(key)
        fields = {
            f.name: self._read(value)
            for f in dataclasses.fields(key)
            if isinstance(value := getattr(key, f.name), _Stored)
        }
        return dataclasses.replace(key, **fields)

    def _read(self, stored: _Stored) -> Tensor:
        if stored.nbytes == 0:
            return torch.empty(stored.shape, dtype=stored.dtype)
        if self._map is None:
            self._file.flush()
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(self._map)[stored.offset : stored.offset + stored.nbytes]
        raw = torch.frombuffer(bytearray(view), dtype=torch.uint8)
        view.release()
        return raw.view(stored.dtype).reshape(stored.shape)

    def close(self) -> None:
        """Unmap and close the file (its space is freed: it was never linked)."""
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __repr__(self) -> str:
        return f"SpillFile({os.fspath(self.directory)!r}, {self.bytes} bytes)"
