"""One large slide region decoded by several readers at once, in bands cut on the file's
tile grid.

Streaming reads a slide one tile region at a time, ``read_workers`` regions ahead of the
compute (:func:`gigastream.streaming.input._reads_ahead`). Each region was decoded by one
reader, so the first region of a step - which nothing was read ahead of - took one reader's
time however many there were: a 6738² region (a 65536² slide's first tile on a GPU) is
45 megapixels, about 1.2 s on one OpenSlide thread at the published ~37 MP/s. Cutting a
region into horizontal bands whose edges fall on the file's own tile rows
(:attr:`~gigastream.wsi.reader.Level.tile_size`; no file tile is decoded for two bands of
one region) lets every reader decode part of it.

The bands of all regions in flight go to one pool per process and reader count: for
backends that read one handle from many threads, :func:`band_threads`, which serves bands
by the ticket of their region (:mod:`gigastream.read_order`: the stream's order), so the
bands of the region needed first are decoded first, by every reader, and the regions read
ahead queue behind them - the same throughput, and the first region ready about
``read_workers`` times sooner; for the others, :mod:`gigastream.wsi.read_pool`'s
processes, first in first out.

Banding is exact: a read at a target mpp gives every pixel from its global position
(:meth:`~gigastream.wsi.reader.SlideReader.read_scaled`), so the bands put together equal
the region read whole, bit for bit (tested for both backends, native and resampled).
"""

from __future__ import annotations

import itertools
import math
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, wait

import numpy as np

#: regions smaller than this many target pixels are read whole (a band's fixed cost, the
#: tile rows decoded twice at band edges of a resampled read, outweighs the parallelism)
MIN_BAND_PIXELS = 1 << 20
#: band height, in target pixels, where the level's file tiles are not known
DEFAULT_BAND_ROWS = 256


class BandThreads:
    """``workers`` daemon threads that run submitted calls lowest priority first (then in
    submission order): the bands of the piece a stream needs first go first
    (:mod:`gigastream.read_order`).
    """

    def __init__(self, workers: int) -> None:
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._sequence = itertools.count()
        self._threads = [
            threading.Thread(target=self._work, name=f"gigastream-band-{k}", daemon=True)
            for k in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, priority: int, fn: Callable, *args) -> Future:
        """A future of ``fn(*args)``, run when no call of lower ``priority`` waits."""
        future: Future = Future()
        self._queue.put((priority, next(self._sequence), future, fn, args))
        return future

    def _work(self) -> None:
        while True:
            _, _, future, fn, args = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while waiting
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001  (handed to the waiting reader)
                future.set_exception(exc)


_THREADS: dict[tuple[int, int], BandThreads] = {}
_THREADS_LOCK = threading.Lock()


def band_threads(workers: int) -> BandThreads:
    """This process's pool of ``workers`` band-reading threads (started on first use).

    Keyed by the process id as well: a DataLoader worker forked from a process that had
    such a pool gets a pool of its own, not the parent's pool without its threads.
    """
    key = (os.getpid(), workers)
    with _THREADS_LOCK:
        pool = _THREADS.get(key)
        if pool is None:
            pool = BandThreads(workers)
            _THREADS[key] = pool
        return pool


def region_bands(
    y0: int,
    height: int,
    width: int,
    workers: int,
    tile_rows: float | None,
    min_pixels: int | None = None,
) -> list[tuple[int, int]]:
    """``(top, rows)`` of the bands a ``width`` x ``height`` region at row ``y0`` (target
    pixels) is read in by ``workers`` readers: one band (the whole region) for one reader
    or a small region, else ``workers`` to ``2 * workers`` bands, each a whole number of the file's
    tile rows (``tile_rows``: a file tile's height in target pixels; ``None``:
    :data:`DEFAULT_BAND_ROWS`), edges on that grid (the first and last band take the
    region's partial tile rows). ``min_pixels``: the smallest region cut (default
    :data:`MIN_BAND_PIXELS`, read when called).

    Example:
        >>> region_bands(0, 1024, 1024, 2, 256.0)
        [(0, 512), (512, 512)]
        >>> region_bands(100, 1000, 2000, 4, 256.0)  # edges on the 256-row tile grid
        [(100, 156), (256, 256), (512, 256), (768, 256), (1024, 76)]
    """
    smallest = MIN_BAND_PIXELS if min_pixels is None else min_pixels
    if workers <= 1 or height * width < smallest:
        return [(y0, height)]
    step = float(tile_rows) if tile_rows and tile_rows > 0 else float(DEFAULT_BAND_ROWS)
    first = math.floor(y0 / step)
    last = math.ceil((y0 + height) / step)
    per_band = max(1, (last - first) // workers)  # file tile rows per band: >= workers bands
    edges = [y0]
    k = first + per_band
    while k < last:
        edge = math.ceil(k * step)
        if y0 < edge < y0 + height and edge > edges[-1]:
            edges.append(edge)
        k += per_band
    edges.append(y0 + height)
    return [(top, bottom - top) for top, bottom in zip(edges, edges[1:], strict=False)]


def read_in_bands(
    bands: list[tuple[int, int]],
    width: int,
    submit: Callable[[int, int], Future],
) -> np.ndarray:
    """The ``(sum of rows, width, 3)`` uint8 region put together from its bands, each
    read by ``submit(top, rows)`` (a future of the band's ``(rows, width, 3)`` pixels).

    Every band is submitted before any is waited for; the first error is raised after the
    other bands are cancelled or done (no reader is left writing into a freed buffer)."""
    futures = [submit(top, rows) for top, rows in bands]
    out = np.empty((sum(rows for _, rows in bands), width, 3), np.uint8)
    offset = 0
    try:
        for (_, rows), future in zip(bands, futures, strict=True):
            out[offset : offset + rows] = future.result()
            offset += rows
    except BaseException:
        for future in futures:
            future.cancel()  # bands not started are not read
        wait(futures)  # the started ones finish: no reader is left reading for this call
        raise
    return out


__all__ = ["BandThreads", "band_threads", "read_in_bands", "region_bands"]
