"""One large region decoded by several readers at once, in bands on the file's tile grid.

The bands cover the region exactly, their edges fall on the file's tile rows, and there are
enough of them for every reader; one reader or a small region is one band. Put together,
the bands equal the region read whole, bit for bit, for OpenSlide (threads) and tiffslide
(read processes), at the file's own resolution and resampled; streaming a banded slide
gives the output and gradients of one reader; a corrupt tile in one band is the slide's
own error.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gigastream import SlideReader
from gigastream.wsi import bands as bands_module
from gigastream.wsi.bands import region_bands
from gigastream.wsi.reader import SlideReadError
from gigastream.wsi.source import SlideSource


@pytest.mark.parametrize("workers", [2, 3, 4, 16])
@pytest.mark.parametrize("tile_rows", [256.0, 240.0, 256 / 0.7, None])
def test_bands_cover_the_region_on_the_tile_grid(workers, tile_rows):
    step = tile_rows or bands_module.DEFAULT_BAND_ROWS
    for y0 in (0, 37, 256, 1000):
        for height in (1024, 1100, 6738):
            bands = region_bands(y0, height, 4096, workers, tile_rows)
            tops = [top for top, _ in bands]
            assert tops[0] == y0 and sum(rows for _, rows in bands) == height
            assert all(rows > 0 for _, rows in bands)
            assert all(a + r == b for (a, r), b in zip(bands, tops[1:], strict=False))
            for edge in tops[1:]:  # inner edges on the tile grid (rounded up to a pixel)
                k = round(edge / step)
                assert abs(edge - k * step) < 1, (edge, step)
            spanned = -(-(y0 + height) // step) - (y0 // step)  # tile rows the region touches
            assert min(workers, spanned) <= len(bands) <= 2 * workers, bands


def test_one_reader_or_a_small_region_is_one_band():
    assert region_bands(0, 4096, 4096, 1, 256.0) == [(0, 4096)]
    assert region_bands(5, 500, 500, 8, 256.0) == [(5, 500)]  # 0.25 MP < MIN_BAND_PIXELS
    assert region_bands(5, 500, 500, 8, 256.0, min_pixels=0) == [(5, 251), (256, 249)]


@pytest.fixture
def small_bands(monkeypatch):
    """Cut even the test slides' small regions into bands."""
    monkeypatch.setattr(bands_module, "MIN_BAND_PIXELS", 0)


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
@pytest.mark.parametrize("mpp", [0.25, 0.7], ids=["native", "resampled"])
def test_banded_reads_equal_the_whole_read(tiff_slide, small_bands, backend, mpp):
    path, _ = tiff_slide
    regions = [
        (slice(None),) * 4,
        (slice(None), slice(None), slice(33, 700), slice(101, 900)),
        (slice(None), slice(1, 3), slice(250, 262), slice(0, 64)),  # one band's worth
    ]
    with SlideReader.open(path, backend=backend) as slide:
        assert slide.levels[0].tile_size == (256, 256)
        whole = SlideSource(slide, mpp=mpp)
        banded = SlideSource(slide, mpp=mpp, read_workers=3)
        for index in regions:
            got = banded.read(index)
            assert torch.equal(got, whole.read(index)), (backend, mpp, index)
        assert banded.band_reads >= 4 and whole.band_reads == 0


def test_streaming_a_banded_slide_is_exact(tiff_slide, small_bands, two_conv_trunk):
    from gigastream.streaming.module import StreamingModule

    path, _ = tiff_slide
    results = []
    for workers in (1, 2):
        trunk = two_conv_trunk
        for p in trunk.parameters():
            p.grad = None
        with SlideReader.open(path, backend="openslide") as slide:
            source = SlideSource(slide, mpp=0.25, dtype=torch.float64, read_workers=workers)
            out = StreamingModule(trunk, tile_size=512)(source)
            out.square().mean().backward()
            results.append((out.detach(), [p.grad.clone() for p in trunk.parameters()]))
            assert (source.band_reads > 0) == (workers > 1)
    (out1, grads1), (out2, grads2) = results
    assert torch.equal(out1, out2)
    assert all(torch.equal(a, b) for a, b in zip(grads1, grads2, strict=True))


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_a_corrupt_tile_in_one_band_is_the_slides_error(corrupt_slide, small_bands, backend):
    with SlideReader.open(corrupt_slide, backend=backend) as slide:
        source = SlideSource(slide, mpp=0.5, read_workers=2)  # level 1, tile 256..512 corrupt
        assert len(source.bands(0, 650, 500)) >= 2
        with pytest.raises(SlideReadError, match=r"corrupt\.tif: reading level 1 region"):
            source.read((slice(None),) * 4)
        top = source.read((slice(None), slice(None), slice(0, 256), slice(None)))
        assert top.shape == (1, 3, 256, 650)  # the reader still works after the failure


def test_a_band_pool_per_process():
    """A forked child (a DataLoader worker) must not reuse its parent's pool, whose threads
    it does not have: pools are keyed by the process id."""
    import os

    pool = bands_module.band_threads(2)
    assert bands_module.band_threads(2) is pool
    assert (os.getpid(), 2) in bands_module._THREADS
    assert isinstance(nn.Module(), nn.Module)  # torch imported alongside, as in training


def test_band_threads_serve_the_lowest_ticket_first():
    """Bands of the piece a stream needs first are decoded first, whatever order the
    read-ahead threads submitted them in."""
    import threading

    from gigastream.wsi.bands import BandThreads

    pool = BandThreads(1)
    gate, order = threading.Event(), []
    blocker = pool.submit(0, gate.wait)  # the one thread is busy until the gate opens
    futures = [pool.submit(ticket, order.append, ticket) for ticket in (7, 2, 5, 2)]
    cancelled = pool.submit(1, order.append, "cancelled")
    assert cancelled.cancel()
    gate.set()
    for future in [blocker, *futures]:
        future.result(timeout=10)
    assert order == [2, 2, 5, 7]
    failing = pool.submit(0, lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=10)


def _read_in_child(path, queue):
    """In a forked child: the banded read of the whole slide, as bytes."""
    bands_module.MIN_BAND_PIXELS = 0  # set in the parent too; the fork keeps it
    with SlideReader.open(path, backend="openslide") as slide:
        source = SlideSource(slide, mpp=0.25, read_workers=2)
        queue.put((source.read((slice(None),) * 4).numpy().tobytes(), source.band_reads))


def test_a_forked_child_reads_in_bands_with_a_pool_of_its_own(tiff_slide, small_bands):
    """As a DataLoader worker (forked) does: the parent's band pool has threads only in the
    parent; the child starts its own pool and reads the same pixels, without hanging."""
    import multiprocessing

    path, _ = tiff_slide
    with SlideReader.open(path, backend="openslide") as slide:
        source = SlideSource(slide, mpp=0.25, read_workers=2)
        expected = source.read((slice(None),) * 4)  # the parent's pool now exists
        assert source.band_reads > 0
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(path, queue))
    child.start()
    pixels, band_reads = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0 and band_reads > 0
    assert pixels == expected.numpy().tobytes()
