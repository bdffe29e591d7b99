"""Slide regions decoded in worker processes, for a backend whose reads hold the GIL.

tiffslide decodes tiles through Python-level zarr indexing, so two threads read a slide no
faster than one (measured on this 2-core machine, 512² regions of a JPEG pyramid: 26.3 MP/s
on one thread, 25.7 on two), while two processes read it twice as fast. A
:class:`~gigastream.wsi.source.SlideSource` with ``read_workers > 1`` on such a backend hands
each region to :func:`shared_pool`'s processes; every process keeps its own handles open
(:func:`read_scaled_in_worker`), keyed by the file's path, size and modification time, so a
slide replaced under the same name is opened again, never read from a stale handle.

The pool is one per reading process and worker count, started on first use with the
``forkserver`` method (a fork of a process with running threads, torch's and the
read-ahead's, could deadlock the child) and shut down at exit. Workers import only
:mod:`gigastream.wsi` (numpy and the slide readers; not torch).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import threading
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from gigastream.wsi.reader import Resolution, SlideError, SlideReader

#: backends whose reads hold the GIL: several readers are processes, not threads
PROCESS_BACKENDS = ("tiffslide",)

#: slides each worker process keeps open (least recently read closed first)
OPEN_PER_WORKER = 4

#: per (process id, worker count): a forked child (a DataLoader worker) starts its own
_POOLS: dict[tuple[int, int], ProcessPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()
_OPEN: OrderedDict[tuple, SlideReader] = OrderedDict()  # in a worker process


def file_stamp(path: Path) -> tuple[str, int, int]:
    """What a worker's handle of ``path`` depends on: the resolved path, size and mtime."""
    stat = os.stat(path)
    return str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns


def _worker_reader(stamp: tuple, backend: str, mpp: float | None) -> SlideReader:
    key = (stamp, backend, mpp)
    reader = _OPEN.get(key)
    if reader is None:
        reader = SlideReader.open(stamp[0], mpp=mpp, backend=backend)
        _OPEN[key] = reader
        while len(_OPEN) > OPEN_PER_WORKER:
            _OPEN.popitem(last=False)[1].close()
    _OPEN.move_to_end(key)
    return reader


def read_scaled_in_worker(
    stamp: tuple,
    backend: str,
    mpp: float | None,
    resolution: Resolution,
    x0: int,
    y0: int,
    width: int,
    height: int,
) -> np.ndarray:
    """In a worker process: :meth:`SlideReader.read_scaled` of the slide ``stamp`` names
    (opened with ``backend`` and ``mpp`` once per process); errors are the reader's own
    (a :class:`~gigastream.wsi.reader.SlideReadError` crosses the process boundary whole)."""
    return _worker_reader(stamp, backend, mpp).read_scaled(resolution, x0, y0, width, height)


def region_in_worker(
    stamp: tuple, backend: str, mpp: float | None, location, size, kwargs: dict
) -> np.ndarray:
    """In a worker process: :meth:`SlideReader.region` (``gigastream bench read``)."""
    return _worker_reader(stamp, backend, mpp).region(location, size, **kwargs)


def shared_pool(workers: int) -> ProcessPoolExecutor:
    """This process's pool of ``workers`` read processes (started on first use)."""
    with _POOLS_LOCK:
        pool = _POOLS.get((os.getpid(), workers))
        if pool is None:
            context = multiprocessing.get_context("forkserver")
            pool = ProcessPoolExecutor(workers, mp_context=context)
            _POOLS[(os.getpid(), workers)] = pool
        return pool


def read_in_pool(
    reader: SlideReader, workers: int, resolution: Resolution, x0: int, y0: int, w: int, h: int
) -> np.ndarray:
    """A region of ``reader``'s slide read by one of ``workers`` read processes.

    Raises:
        SlideReadError: the region cannot be decoded (as a read in this process would).
        SlideError: the file changed or vanished, or a read process died (its pool is
            started again at the next read).
    """
    return read_bands_in_pool(reader, workers, resolution, x0, w, [(y0, h)])


def read_bands_in_pool(
    reader: SlideReader,
    workers: int,
    resolution: Resolution,
    x0: int,
    w: int,
    bands: list[tuple[int, int]],
) -> np.ndarray:
    """A region of ``reader``'s slide, ``w`` wide, read as ``bands`` (``(top, rows)``, from
    :func:`~gigastream.wsi.bands.region_bands`) by ``workers`` read processes at once, put
    together in order.

    Raises:
        SlideReadError, SlideError: as :func:`read_in_pool`.
    """
    from gigastream.wsi.bands import read_in_bands

    assert reader.path is not None
    try:
        stamp = file_stamp(reader.path)
    except OSError as exc:
        raise SlideError(f"{reader.path}: cannot read the slide file any more: {exc}") from exc
    pool = shared_pool(workers)

    def submit(top: int, rows: int):
        args = (stamp, reader.backend, reader.mpp, resolution, x0, top, w, rows)
        return pool.submit(read_scaled_in_worker, *args)

    try:
        if len(bands) == 1:
            return submit(*bands[0]).result()
        return read_in_bands(bands, w, submit)
    except BrokenProcessPool as exc:
        with _POOLS_LOCK:
            if _POOLS.get((os.getpid(), workers)) is pool:
                del _POOLS[(os.getpid(), workers)]
        raise SlideError(
            f"{reader.path}: a slide-reading process died (out of memory?): {exc}; lower "
            "data.read_workers to 1 to read in this process"
        ) from exc


def shutdown_pools() -> None:
    """Stop every read process of this process (at exit)."""
    with _POOLS_LOCK:
        pools = [p for (pid, _), p in _POOLS.items() if pid == os.getpid()]
        _POOLS.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)


atexit.register(shutdown_pools)
