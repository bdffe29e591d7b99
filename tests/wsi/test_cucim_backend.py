"""The optional cuCIM backend: pixels equal OpenSlide's on our pyramids and on the real
CMU-1 slide, the mpp is read, it streams exactly, and a missing cuCIM is one clear error.

The tests that read need cuCIM (``scripts/setup.sh`` installs it where a wheel exists);
the missing-package error is tested everywhere.
"""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch
from torch import nn

from gigastream import SlideError, SlideReader
from gigastream.train.config import DataConfig


@pytest.fixture
def cucim():
    return pytest.importorskip("cucim", reason="cuCIM is optional (pip install cucim-cu13)")


def test_written_pyramid_reads_as_openslide_does(tiff_slide, cucim):
    path, _ = tiff_slide
    with (
        SlideReader.open(path, backend="cucim") as cu,
        SlideReader.open(path, backend="openslide") as os_,
    ):
        assert cu.backend == "cucim"
        assert cu.mpp == pytest.approx(0.25) == os_.mpp
        assert [lv.dimensions for lv in cu.levels] == [lv.dimensions for lv in os_.levels]
        for level in range(len(cu.levels)):
            w, h = cu.levels[level].dimensions
            for x, y, rw, rh in [(0, 0, 64, 48), (37, 11, 100, 70), (w - 30, h - 20, 60, 50)]:
                got = cu.read_level(level, x, y, rw, rh)
                want = os_.read_level(level, x, y, rw, rh)
                np.testing.assert_array_equal(got, want, err_msg=f"level {level} at {x}, {y}")
        for mpp in (0.25, 0.6, 1.3):  # resampled reads go through the same code
            np.testing.assert_array_equal(cu.read_at_mpp(mpp), os_.read_at_mpp(mpp))


def test_cmu1_reads_as_openslide_does(cmu1, cucim):
    with SlideReader.open(cmu1, backend="cucim") as cu, SlideReader.open(cmu1) as os_:
        assert cu.mpp == pytest.approx(0.499) and cu.dimensions == os_.dimensions
        a = cu.region((500, 600), (128, 128), level=0).astype(int)
        b = os_.region((500, 600), (128, 128), level=0).astype(int)
        assert np.abs(a - b).mean() < 3  # two JPEG decoders of the same tiles


def test_streaming_a_cucim_slide_on_two_threads_is_exact_float64(tiff_slide, cucim):
    from gigastream.streaming.module import StreamingModule
    from gigastream.wsi.source import IMAGENET, SlideSource

    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)).double()
    with SlideReader.open(tiff_slide[0], backend="cucim") as slide:
        source = SlideSource(
            slide, mpp=0.5, normalize=IMAGENET, dtype=torch.float64, read_workers=2
        )
        out = StreamingModule(trunk, tile_size=96)(source)
        whole = source.read((slice(None),) * 4)
        assert not source.reads_in_processes  # cuCIM's one handle is read by both threads
    torch.testing.assert_close(out, trunk(whole), rtol=1e-10, atol=1e-10)


def test_a_missing_file_is_one_error(tmp_path, cucim):
    bad = tmp_path / "not-a-slide.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 64)
    with pytest.raises(SlideError, match="not-a-slide.tif"):
        SlideReader.open(bad, backend="cucim")


def test_the_backend_is_a_valid_setting():
    DataConfig(backend="cucim").validate()


@pytest.fixture
def no_cucim(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "cucim" or name.startswith("cucim."):
            raise ImportError("No module named 'cucim'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_without_cucim_the_error_says_how_to_install_it(tiff_slide, no_cucim):
    with pytest.raises(SlideError, match=r"needs cuCIM, which is not installed: .*pip install"):
        SlideReader.open(tiff_slide[0], backend="cucim")
