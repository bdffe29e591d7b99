"""A lazy input is decoded once per step: the forward pass keeps what it read (within
``input_cache`` bytes; a source's compact form when it has one) for the backward recompute,
and the streamed result stays exact."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from gigastream.streaming import StreamingModule
from gigastream.streaming.recompute import InputStats
from tests.exactness import assert_same_gradients

from .test_exactness import residual_net, resnet18_trunk


@dataclass
class _Compact:
    pixels: torch.Tensor  # uint8 (b, c, h, w)

    @property
    def nbytes(self) -> int:
        return self.pixels.numel()


class _Uint8Source:
    """A lazy image of uint8 pixels, read as floats (x / 255 - 0.5), like a slide: it offers
    ``read_compact`` (the uint8 pixels) and ``expand`` (what ``read`` returns, bit for bit)."""

    def __init__(self, pixels: torch.Tensor, dtype=torch.float64, compact: bool = True):
        self._pixels = pixels
        self.shape, self.dtype, self.device = pixels.shape, dtype, pixels.device
        self.decoded = 0  # pixels decoded (spatial positions)
        if not compact:  # no compact form: the read tensors are kept (asked for)
            self.read_compact = None
            self.cache_reads = True

    def read_compact(self, index) -> _Compact:
        return self._decode(index)

    def _decode(self, index) -> _Compact:
        window = self._pixels[index].clone()
        self.decoded += window.shape[-1] * window.shape[-2]
        return _Compact(window)

    def expand(self, compact: _Compact) -> torch.Tensor:
        return compact.pixels.to(self.dtype) / 255 - 0.5

    def read(self, index) -> torch.Tensor:
        return self.expand(self._decode(index))

    def tensor(self) -> torch.Tensor:
        return self.read((slice(None),) * 4)


def _image(h=120, w=100, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=gen)


@pytest.mark.parametrize("compact", [True, False])
def test_decoded_once_per_step_and_exact_float64(compact):
    src = _Uint8Source(_image(), compact=compact)
    x = src.tensor()
    src.decoded = 0
    net = residual_net().double()
    streamed = StreamingModule(net, tile_size=40)
    assert_same_gradients(net, lambda _: streamed(src), x, net, input_grad=False)
    stats: InputStats = streamed.last_input_stats
    assert stats.pieces > 4 and stats.cached_pieces == stats.pieces and stats.compact == compact
    assert stats.pixels_backward == 0 and stats.pixels_read == stats.pixels_forward
    if compact:
        assert src.decoded == stats.pixels_forward  # every piece decoded exactly once
        assert stats.cached_bytes == 3 * stats.pixels_forward  # uint8, 3 channels
    else:
        assert stats.cached_bytes == 8 * 3 * stats.pixels_forward  # the float64 tensors


def test_a_source_that_does_not_ask_is_read_again():
    """No compact form, no ``cache_reads``: e.g. a procedural image, cheaper to regenerate."""
    src = _Uint8Source(_image(), compact=False)
    del src.cache_reads
    streamed = StreamingModule(residual_net().double(), tile_size=40)
    streamed(src).sum().backward()
    stats = streamed.last_input_stats
    assert stats.cached_pieces == 0 and stats.budget_bytes == 0
    assert stats.pixels_backward == stats.pixels_forward


def test_large_tiles_decode_at_most_1_05x_the_image():
    """Tile margins are the only pixels decoded twice: <= 1.05x the streamed level."""
    image = _image(512, 512)
    src = _Uint8Source(image, dtype=torch.float32)
    streamed = StreamingModule(resnet18_trunk(), tile_size=320)
    streamed(src).sum().backward()
    stats = streamed.last_input_stats
    assert stats.pieces >= 2 and stats.pixels_backward == 0
    assert src.decoded == stats.pixels_read <= 1.05 * 512 * 512, stats


def test_a_budget_smaller_than_the_input_rereads_the_rest():
    src = _Uint8Source(_image())
    x = src.tensor()
    net = residual_net().double()
    # room for about half of the pieces' uint8 pixels
    probe = StreamingModule(net, tile_size=40)
    probe(src)
    full = probe.last_input_stats.cached_bytes
    src.decoded = 0
    streamed = StreamingModule(net, tile_size=40, input_cache=full // 2)
    assert_same_gradients(net, lambda _: streamed(src), x, net, input_grad=False)
    stats = streamed.last_input_stats
    assert 0 < stats.cached_pieces < stats.pieces and stats.cached_bytes <= full // 2
    assert 0 < stats.pixels_backward < stats.pixels_forward
    assert src.decoded == stats.pixels_read


def test_bad_cache_budget_is_refused():
    with pytest.raises(ValueError, match="lots"):
        StreamingModule(residual_net(), tile_size=40, input_cache="lots")


def test_the_plan_says_what_the_input_cache_keeps():
    """The plan of a lazy input counts the uint8 pixels the forward keeps (what the step
    then holds at most) and says whether they fit the cache or are decoded again."""
    src = _Uint8Source(_image())
    net = residual_net().double()
    streamed = StreamingModule(net, tile_size=40)
    plan = streamed.plan(tuple(src.shape), torch.float64, lazy_input=True)
    streamed(src)
    held = streamed.last_input_stats.cached_bytes
    assert plan.input_cache_bytes == pytest.approx(held, rel=0.02)
    assert plan.input_decoded_once and "decoded once per step" in str(plan)
    small = StreamingModule(net, tile_size=40, input_cache=held // 2)
    plan = small.plan(tuple(src.shape), torch.float64, lazy_input=True)
    assert not plan.input_decoded_once and "decoded again in backward" in str(plan)
    tensor_plan = small.plan(tuple(src.shape), torch.float64)  # a tensor input: no cache
    assert "input:" not in str(tensor_plan)
