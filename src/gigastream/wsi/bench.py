"""Region-read throughput of the slide backends (megapixels per second).

For every backend that opens the slide, random ``region_size`` regions are read at level
0 and at a lower level (the one nearest a 4x downsample; a single-level slide is read at
4x its mpp instead, resized from level 0). Locations are seeded and the same for every
backend. Throughput counts the pixels returned.

Example:
    >>> report = benchmark_reads("slide.tif", reads=20)  # doctest: +SKIP
    >>> report["results"][0]["megapixels_per_s"]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gigastream.wsi.reader import SlideError, SlideReader

logger = logging.getLogger(__name__)


@dataclass
class ReadBenchConfig:
    """Settings of the read benchmark.

    Attributes:
        backends: backends to measure (those that cannot open the slide are reported).
        region_size: edge of the square regions read, in pixels of the level read.
        reads: timed reads per backend and level.
        warmup: untimed reads first.
        seed: seed of the read locations.
        lower_downsample: the lower level is the one nearest this downsample.
        workers: threads reading at once (each read is one region; a backend whose handle
            is not thread-safe gets one handle per thread, as
            :class:`~gigastream.wsi.source.SlideSource` does). Each count is timed.
    """

    backends: tuple[str, ...] = ("openslide", "tiffslide")
    region_size: int = 512
    reads: int = 50
    warmup: int = 3
    seed: int = 0
    lower_downsample: float = 4.0
    workers: tuple[int, ...] = (1,)


def _region_reader(slide: SlideReader, workers: int):
    """``region(location, size, **kwargs)`` as a slide source with ``read_workers`` reads:
    the slide's own handle from every thread, or (a backend whose reads hold the GIL, with
    several workers) one of that many read processes; and whether it is the latter."""
    from gigastream.wsi.read_pool import PROCESS_BACKENDS, file_stamp, region_in_worker, shared_pool

    if workers == 1 or slide.backend not in PROCESS_BACKENDS:
        return slide.region, False
    pool, stamp = shared_pool(workers), file_stamp(slide.path)

    def region(location, size, **kwargs):
        args = (stamp, slide.backend, slide.mpp, location, size, kwargs)
        return pool.submit(region_in_worker, *args).result()

    return region, True


def _time_reads(
    slide: SlideReader, level: int | None, mpp: float | None, config: ReadBenchConfig, workers: int
) -> dict:
    size = config.region_size
    if level is not None:
        ds = slide.levels[level].downsample
    else:
        assert mpp is not None
        ds = mpp / slide.require_mpp()
    w0, h0 = slide.dimensions
    span = size * ds  # level-0 extent of a region
    rng = np.random.default_rng(config.seed)
    warm = workers * config.warmup  # every thread (so every read process) warms up
    xs = rng.uniform(0, max(w0 - span, 0), size=warm + config.reads)
    ys = rng.uniform(0, max(h0 - span, 0), size=warm + config.reads)
    kwargs = {"level": level} if level is not None else {"mpp": mpp}
    region, processes = _region_reader(slide, workers)

    def read(t: int, first: int, stop: int) -> None:  # thread t reads every workers-th region
        for i in range(first + t, stop, workers):
            region((xs[i], ys[i]), (size, size), **kwargs)

    with ThreadPoolExecutor(workers, thread_name_prefix="gigastream-bench-read") as pool:
        for future in [pool.submit(read, t, 0, warm) for t in range(workers)]:
            future.result()  # untimed
        start = time.perf_counter()
        timed = [pool.submit(read, t, warm, warm + config.reads) for t in range(workers)]
        for future in timed:
            future.result()
        seconds = time.perf_counter() - start
    megapixels = config.reads * size * size / 1e6
    return {
        "level": level,
        "mpp": mpp if mpp is not None else slide.level_mpp(level) if slide.mpp else None,
        "downsample": ds,
        "resized": level is None,
        "workers": workers,
        "read_processes": processes,
        "reads": config.reads,
        "region_size": size,
        "seconds": seconds,
        "ms_per_read": 1e3 * seconds / config.reads,
        "megapixels_per_s": megapixels / seconds,
    }


def benchmark_reads(path: str | Path, config: ReadBenchConfig | None = None) -> dict:
    """Measure region-read throughput of ``path`` per backend, at level 0 and a lower level.

    Returns:
        A JSON-serialisable report: slide, settings, machine, one result per backend and
        level (``megapixels_per_s``, ``ms_per_read``), and backends that failed.
    """
    config = config or ReadBenchConfig()
    path = Path(path)
    results, failures = [], {}
    info: dict = {}
    for backend in config.backends:
        try:
            slide = SlideReader.open(path, backend=backend)
        except SlideError as exc:
            failures[backend] = str(exc)
            logger.warning("%s", exc)
            continue
        with slide:
            info = {
                "path": str(path),
                "dimensions": slide.dimensions,
                "mpp": slide.mpp,
                "levels": [lv.dimensions for lv in slide.levels],
            }
            lower = min(
                range(len(slide.levels)),
                key=lambda i: abs(slide.levels[i].downsample - config.lower_downsample),
            )
            runs = [(0, None)]
            if lower != 0:
                runs.append((lower, None))
            elif slide.mpp is not None:
                runs.append((None, slide.mpp * config.lower_downsample))
            for level, mpp in runs:
                for workers in config.workers:
                    timed = _time_reads(slide, level, mpp, config, workers)
                    result = {"backend": backend, **timed}
                    logger.info(
                        "%s level %s, %d worker(s): %.1f MP/s",
                        backend, level, workers, result["megapixels_per_s"],
                    )  # fmt: skip
                    results.append(result)
    return {
        "slide": info,
        "config": asdict(config),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
        },
        "results": results,
        "failures": failures,
    }
