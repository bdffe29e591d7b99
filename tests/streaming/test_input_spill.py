"""What a lazy input's forward read beyond the input cache goes to a memory-mapped spill
file (``input_spill``) and comes back in backward: decoded once per step, exact, and
nothing left on disk."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from gigastream.streaming import StreamingModule
from gigastream.streaming.spill import SpillFile, spill_capacity
from gigastream.wsi.source import RegionPixels
from tests.exactness import assert_same_gradients

from .test_exactness import residual_net
from .test_input_cache import _image, _Uint8Source


def _full_cache_bytes(net, src) -> int:
    probe = StreamingModule(net, tile_size=40)
    probe(src)
    return probe.last_input_stats.cached_bytes


@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("share", [0.0, 0.5])
def test_spilled_pieces_are_decoded_once_and_exact_float64(tmp_path, compact, share):
    """With no (or half the) memory for the cache, the rest is spilled, not decoded
    again; output and every parameter gradient equal the whole-image computation."""
    src = _Uint8Source(_image(), compact=compact)
    x = src.tensor()
    net = residual_net().double()
    budget = int(share * _full_cache_bytes(net, src))
    src.decoded = 0
    streamed = StreamingModule(net, tile_size=40, input_cache=budget, input_spill=tmp_path)
    assert_same_gradients(net, lambda _: streamed(src), x, net, input_grad=False)
    stats = streamed.last_input_stats
    assert stats.spilled_pieces > 0 and stats.spilled_bytes > 0
    assert stats.cached_pieces + stats.spilled_pieces == stats.pieces
    assert (stats.cached_pieces > 0) == (share > 0)
    assert stats.pixels_backward == 0
    if compact:
        assert src.decoded == stats.pixels_forward  # every piece decoded exactly once
    assert list(tmp_path.iterdir()) == []  # the spill file was never linked


def test_the_spill_file_is_not_on_disk_even_during_the_step(tmp_path):
    """Unlinked at creation: a process killed between forward and backward leaves nothing."""
    src = _Uint8Source(_image())
    streamed = StreamingModule(
        residual_net().double(), tile_size=40, input_cache=0, input_spill=tmp_path / "cache"
    )
    out = streamed(src)
    assert streamed.last_input_stats.spilled_bytes > 0
    assert list((tmp_path / "cache").iterdir()) == []
    out.sum().backward()
    assert streamed.last_input_stats.pixels_backward == 0


def test_a_full_spill_folder_rereads_the_rest_exactly(tmp_path, monkeypatch, caplog):
    """A write that fails (the disk is full) stops the spill with one warning; what is not
    on disk is decoded again, and the gradients stay exact."""
    src = _Uint8Source(_image())
    x = src.tensor()
    net = residual_net().double()
    writes = {"n": 0}
    real_write = SpillFile._write

    def failing_write(self, tensor):
        writes["n"] += 1
        if writes["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, tensor)

    monkeypatch.setattr(SpillFile, "_write", failing_write)
    src.decoded = 0
    streamed = StreamingModule(net, tile_size=40, input_cache=0, input_spill=tmp_path)
    with caplog.at_level("WARNING"):
        assert_same_gradients(net, lambda _: streamed(src), x, net, input_grad=False)
    stats = streamed.last_input_stats
    assert stats.spilled_pieces == 3 < stats.pieces
    assert 0 < stats.pixels_backward < stats.pixels_forward
    assert src.decoded == stats.pixels_read
    assert sum("No space left" in r.getMessage() for r in caplog.records) == 1


def test_a_spill_limit_spills_what_fits(tmp_path):
    spill = SpillFile(tmp_path, limit_bytes=100)
    assert spill.fits(100) and not spill.fits(101)
    spill.put(torch.zeros(60, dtype=torch.uint8))
    assert spill.bytes == 60 and not spill.fits(41) and spill.fits(40)
    spill.close()


def test_spill_round_trip_is_bit_for_bit(tmp_path):
    gen = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (9, 11, 3), dtype=torch.uint8, generator=gen)
    tissue = torch.rand(9, 11, generator=gen) > 0.5
    values = torch.randn(2, 5, dtype=torch.float64, generator=gen)
    spill = SpillFile(tmp_path)
    keys = [
        spill.put(RegionPixels((1, 3, 9, 11), slice(0, 3), rgb, tissue)),
        spill.put(RegionPixels((1, 3, 9, 11), slice(0, 3), None, None)),  # background
        spill.put(values),
        spill.put(torch.empty(0, 3)),
    ]
    region, background, back, empty = (spill.get(k) for k in keys)
    assert torch.equal(region.rgb, rgb) and torch.equal(region.tissue, tissue)
    assert region.tissue.dtype == torch.bool and region.shape == (1, 3, 9, 11)
    assert background.rgb is None and background.tissue is None
    assert torch.equal(back, values) and back.dtype == torch.float64
    assert empty.shape == (0, 3)
    assert spill.bytes == rgb.numel() + tissue.numel() + values.numel() * 8
    spill.close()


def test_spill_refuses_what_it_cannot_store(tmp_path):
    spill = SpillFile(tmp_path)
    with pytest.raises(TypeError, match="tensor or a dataclass"):
        spill.put([torch.zeros(3)])
    spill.close()


def test_spill_capacity_of_an_unusable_folder_is_zero(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert spill_capacity(blocker / "cache") == 0
    assert spill_capacity(tmp_path) > 0


def test_the_plan_says_where_the_input_goes(tmp_path):
    src = _Uint8Source(_image())
    net = residual_net().double()
    held = _full_cache_bytes(net, src)
    shape = tuple(src.shape)
    spilled = StreamingModule(net, tile_size=40, input_cache=held // 2, input_spill=tmp_path)
    plan = spilled.plan(shape, torch.float64, lazy_input=True)
    assert plan.input_decoded_once and plan.input_spill_dir == os.fspath(tmp_path)
    assert plan.input_spill_bytes == plan.input_cache_bytes - held // 2
    assert "memory-mapped file in" in str(plan) and str(tmp_path) in str(plan)
    fits = StreamingModule(net, tile_size=40, input_spill=tmp_path)  # all of it in memory
    plan = fits.plan(shape, torch.float64, lazy_input=True)
    assert plan.input_decoded_once and plan.input_spill_bytes == 0
    assert "memory-mapped" not in str(plan)
    reread = StreamingModule(net, tile_size=40, input_cache=held // 2)
    text = str(reread.plan(shape, torch.float64, lazy_input=True))
    assert "decoded again in backward" in text and "input_spill" in text


def test_without_a_backward_pass_nothing_is_kept_or_spilled(tmp_path):
    """Evaluation (no_grad): no backward will read the pixels, so none are kept or written."""
    src = _Uint8Source(_image())
    streamed = StreamingModule(
        residual_net().double(), tile_size=40, input_cache=0, input_spill=tmp_path
    )
    with torch.no_grad():
        streamed(src)
    stats = streamed.last_input_stats
    assert stats.spilled_pieces == 0 and stats.cached_pieces == 0 and stats.pieces > 4
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("fault", ["file-in-the-way", "cannot-open"])
def test_an_unusable_spill_folder_warns_once_and_rereads_exactly(
    tmp_path, monkeypatch, caplog, fault
):
    """A folder that cannot be made (a file stands there) or a spill file that cannot be
    opened (permissions): one warning naming the folder, the tiles decoded again, exact."""
    if fault == "file-in-the-way":
        (tmp_path / "run").write_text("not a folder")
        folder = tmp_path / "run" / "cache"
    else:
        folder = tmp_path / "cache"

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr("gigastream.streaming.spill.tempfile.TemporaryFile", refuse)
    src = _Uint8Source(_image())
    x = src.tensor()
    net = residual_net().double()
    src.decoded = 0
    streamed = StreamingModule(net, tile_size=40, input_cache=0, input_spill=folder)
    with caplog.at_level("WARNING"):
        assert_same_gradients(net, lambda _: streamed(src), x, net, input_grad=False)
        streamed(src).sum().backward()  # a second step: no second warning
    stats = streamed.last_input_stats
    assert stats.spilled_pieces == 0 and stats.pixels_backward == stats.pixels_forward
    warnings = [r.getMessage() for r in caplog.records if "input spill" in r.getMessage()]
    assert len(warnings) == 1 and str(folder) in warnings[0]


def test_planning_creates_no_folder(tmp_path):
    src = _Uint8Source(_image())
    net = residual_net().double()
    streamed = StreamingModule(net, tile_size=40, input_cache=0, input_spill=tmp_path / "a" / "b")
    plan = streamed.plan(tuple(src.shape), torch.float64, lazy_input=True)
    assert plan.input_decoded_once and plan.input_spill_bytes > 0
    assert not (tmp_path / "a").exists()
