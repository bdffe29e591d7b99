"""Slides read on several threads ahead of the compute (``data.read_workers``).

The read-ahead keeps the stream's order and at most ``read_workers`` reads in flight; a
slide streamed with two reading threads gives exactly the output and gradients of one
thread (OpenSlide shares its handle, tiffslide gets one per thread, closed with the
source); a failed read stops the stream with the slide's own error.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch import nn

from gigastream import SlideReader
from gigastream.streaming.input import _reads_ahead, read_workers
from gigastream.streaming.module import StreamingModule
from gigastream.train.config import ConfigError, DataConfig
from gigastream.wsi.reader import SlideError, SlideReadError
from gigastream.wsi.source import IMAGENET, SlideSource


class _SlowSource:
    """A lazy input whose reads sleep and count how many run at once."""

    def __init__(self, workers: int) -> None:
        self.shape = torch.Size((1, 1, 64, 64))
        self.dtype = torch.float32
        self.device = torch.device("cpu")
        self.read_ahead = True
        self.read_workers = workers
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

    def read(self, index):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.02)
        with self.lock:
            self.running -= 1
        return torch.full((1,), float(index[-1].start))


@pytest.mark.parametrize("workers", [1, 3])
def test_reads_ahead_keep_the_order_and_bound_the_reads_in_flight(workers):
    source = _SlowSource(workers)
    indices = [(slice(None), slice(None), slice(0, 1), slice(i, i + 1)) for i in range(12)]
    got = [int(t.item()) for t in _reads_ahead(source, indices)]
    assert got == list(range(12))
    assert source.most == workers  # several at once with 3 threads, never more


def test_read_workers_of_a_source():
    assert read_workers(object()) == 1
    assert read_workers(_SlowSource(4)) == 4
    assert read_workers(_SlowSource(0)) == 1


def _trunk() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
    ).double()


def _step(path, backend: str, workers: int, input_cache: str | int = "auto"):
    """Output, parameter gradients and the source's reads of one streamed step."""
    trunk = _trunk()
    with SlideReader.open(path, backend=backend) as slide:
        source = SlideSource(
            slide, mpp=0.5, normalize=IMAGENET, dtype=torch.float64, read_workers=workers
        )
        streamed = StreamingModule(trunk, tile_size=96, input_cache=input_cache)
        out = streamed(source)
        out.square().sum().backward()
        handles = len(source._thread_readers)
        source.close()
        assert source._thread_readers == []
    return out.detach(), [p.grad for p in trunk.parameters()], source.reads, handles


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
@pytest.mark.parametrize("input_cache", ["auto", 0])  # 0: the backward reads again, in parallel
def test_two_reading_threads_give_the_same_step_float64(tiff_slide, backend, input_cache):
    out1, grads1, reads1, _ = _step(tiff_slide[0], backend, 1, input_cache)
    out2, grads2, reads2, handles = _step(tiff_slide[0], backend, 2, input_cache)
    assert torch.equal(out1, out2)
    for a, b in zip(grads1, grads2, strict=True):
        assert torch.equal(a, b)
    assert reads1 == reads2 > 4
    # OpenSlide reads one handle from both threads; tiffslide opens one for the second thread
    assert handles == (0 if backend == "openslide" else 1)


def test_a_failed_read_on_a_reading_thread_stops_the_stream(corrupt_slide):
    trunk = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    with SlideReader.open(corrupt_slide, backend="tiffslide") as slide:
        source = SlideSource(slide, mpp=0.5, read_workers=3)
        with pytest.raises(SlideReadError, match=r"corrupt\.tif: reading level 1 region"):
            StreamingModule(trunk, tile_size=128)(source)
        source.close()


def test_read_workers_below_one_are_refused(tiff_slide):
    with SlideReader.open(tiff_slide[0]) as slide:
        with pytest.raises(SlideError, match="read_workers must be >= 1"):
            SlideSource(slide, mpp=0.5, read_workers=0)
    with pytest.raises(ConfigError, match=r"data.read_workers must be >= 1"):
        DataConfig(read_workers=0).validate()
