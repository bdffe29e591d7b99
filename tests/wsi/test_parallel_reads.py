"""Slides read on several threads ahead of the compute (``data.read_workers``).

The read-ahead keeps the stream's order and at most ``read_workers`` reads in flight; a
slide streamed with two readers gives exactly the output and gradients of one (OpenSlide
shares its handle between threads, tiffslide decodes in read processes); a failed read
stops the stream with the slide's own error, also from a read process; a slide replaced
under the same name is opened again by the read processes.
"""

from __future__ import annotations

import copy
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


def _step(trunk, path, backend: str, workers: int, input_cache: str | int = "auto"):
    """Output, parameter gradients and the source's reads of one streamed step of a copy
    of ``trunk``."""
    trunk = copy.deepcopy(trunk)
    with SlideReader.open(path, backend=backend) as slide:
        source = SlideSource(
            slide, mpp=0.5, normalize=IMAGENET, dtype=torch.float64, read_workers=workers
        )
        streamed = StreamingModule(trunk, tile_size=96, input_cache=input_cache)
        out = streamed(source)
        out.square().sum().backward()
    return out.detach(), [p.grad for p in trunk.parameters()], source.reads, source


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
@pytest.mark.parametrize("input_cache", ["auto", 0])  # 0: the backward reads again, in parallel
def test_two_reading_threads_give_the_same_step_float64(
    tiff_slide, two_conv_trunk, backend, input_cache
):
    out1, grads1, reads1, _ = _step(two_conv_trunk, tiff_slide[0], backend, 1, input_cache)
    out2, grads2, reads2, source = _step(two_conv_trunk, tiff_slide[0], backend, 2, input_cache)
    assert torch.equal(out1, out2)
    for a, b in zip(grads1, grads2, strict=True):
        assert torch.equal(a, b)
    assert reads1 == reads2 > 4
    # OpenSlide reads one handle from both threads; tiffslide's reads go to read processes
    assert source.reads_in_processes == (backend == "tiffslide")


def test_a_failed_read_on_a_reading_thread_stops_the_stream(corrupt_slide):
    trunk = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    with SlideReader.open(corrupt_slide, backend="tiffslide") as slide:
        source = SlideSource(slide, mpp=0.5, read_workers=3)
        assert source.reads_in_processes
        with pytest.raises(SlideReadError, match=r"corrupt\.tif: reading level 1 region") as info:
            StreamingModule(trunk, tile_size=128)(source)
    assert info.value.level == 1 and info.value.path == corrupt_slide  # whole across processes


def test_a_read_error_crosses_a_process_boundary_whole(tmp_path):
    import pickle

    error = SlideReadError(tmp_path / "s.tif", 2, (1, 2, 3, 4), ValueError("bad tile"))
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is SlideReadError and str(again) == str(error)
    assert (again.path, again.level, again.region) == (error.path, 2, (1, 2, 3, 4))


def test_read_processes_open_a_replaced_slide_again(tmp_path, image_factory):
    """The read processes key their open handles by path, size and mtime: a slide written
    again under the same name is read anew, not from the old handle."""
    import os

    import numpy as np

    from gigastream.wsi.pyramid import write_pyramid

    path = tmp_path / "s.tif"
    index = (slice(None), slice(None), slice(0, 64), slice(0, 64))
    seen = []
    for seed in (1, 2):
        image = image_factory(256, 256, seed=seed)
        write_pyramid(path, iter([image]), 256, 256, mpp=0.5)
        os.utime(path, ns=(seed * 10**18, seed * 10**18))  # a distinct mtime, whatever the clock
        with SlideReader.open(path, backend="tiffslide") as slide:
            source = SlideSource(slide, mpp=0.5, read_workers=2)
            seen.append(source.read(index))
            direct = SlideSource(slide, mpp=0.5).read(index)
        assert torch.equal(seen[-1], direct)
    assert not torch.equal(seen[0], seen[1])
    assert np.isfinite(seen[1].numpy()).all()


def test_read_workers_below_one_are_refused(tiff_slide):
    with SlideReader.open(tiff_slide[0]) as slide:
        with pytest.raises(SlideError, match="read_workers must be >= 1"):
            SlideSource(slide, mpp=0.5, read_workers=0)
    with pytest.raises(ConfigError, match=r"data.read_workers must be >= 1"):
        DataConfig(read_workers=0).validate()
