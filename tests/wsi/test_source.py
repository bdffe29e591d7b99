"""SlideSource: a lazy InputSource whose reads equal crops of the whole virtual image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gigastream import SlideError, SlideReader
from gigastream.streaming.recompute import InputSource
from gigastream.wsi.backends import ArrayReader
from gigastream.wsi.reader import READ_ERROR_FIX, SlideReadError
from gigastream.wsi.source import IMAGENET, SlideSource
from gigastream.wsi.tissue import TissueMask


def _full(source: SlideSource) -> torch.Tensor:
    return source.read((slice(None),) * 4)


@pytest.mark.parametrize("mpp", [0.25, 0.5, 0.7, 1.3])
def test_reads_are_crops_of_the_whole(tiff_slide, mpp):
    with SlideReader.open(tiff_slide[0]) as slide:
        source = SlideSource(slide, mpp=mpp, normalize=IMAGENET, dtype=torch.float64)
        assert isinstance(source, InputSource)
        full = _full(source)
        assert full.shape == source.shape and full.dtype == torch.float64
        _, _, h, w = source.shape
        for y0, y1, x0, x1 in [(0, 17, 3, 40), (h // 3, h - 1, w // 2, w), (5, 6, 7, 8)]:
            index = (slice(0, 1), slice(None), slice(y0, y1), slice(x0, x1))
            torch.testing.assert_close(source.read(index), full[index], rtol=0, atol=0)
        index = (slice(None), slice(1, 3), slice(0, 4), slice(0, 4))
        torch.testing.assert_close(source.read(index), full[index], rtol=0, atol=0)


def test_values_and_normalisation(image_factory):
    image = image_factory(64, 96)
    slide = SlideReader.from_array(image, mpp=1.0)
    plain = _full(SlideSource(slide, mpp=1.0))
    expected = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float() / 255
    torch.testing.assert_close(plain, expected)
    normed = _full(SlideSource(slide, mpp=1.0, normalize=IMAGENET))
    mean = torch.tensor(IMAGENET.mean).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET.std).view(1, 3, 1, 1)
    torch.testing.assert_close(normed, (expected - mean) / std)


def test_tissue_mask_blanks_background_and_skips_reads(image_factory):
    image = image_factory(256, 256)
    slide = SlideReader.from_array(image, mpp=1.0)
    mask = TissueMask(np.zeros((16, 16), bool), mpp=16.0)
    mask.mask[4:8, 4:12] = True  # tissue: rows 64..128, cols 64..192 (pixels)
    source = SlideSource(slide, mpp=2.0, tissue_mask=mask)
    full = _full(source)
    assert (full[..., :32, :] == 1).all()  # background is white
    assert (full[..., 32:64, 32:96] != 1).any()
    reads = source.reads
    empty = source.read((slice(None), slice(None), slice(80, 128), slice(0, 128)))
    assert (empty == 1).all() and source.reads == reads and source.skipped == 1
    index = (slice(None), slice(None), slice(20, 50), slice(10, 100))
    torch.testing.assert_close(source.read(index), full[index], rtol=0, atol=0)


def test_streaming_a_slide_equals_the_whole_image(tiff_slide, two_conv_trunk):
    from gigastream.streaming.module import StreamingModule

    trunk = two_conv_trunk
    with SlideReader.open(tiff_slide[0]) as slide:
        source = SlideSource(slide, mpp=0.9, normalize=IMAGENET, dtype=torch.float64)  # resized
        streamed = StreamingModule(trunk, tile_size=128)
        out = streamed(source)
        reference = trunk(_full(source))
        torch.testing.assert_close(out, reference, rtol=1e-10, atol=1e-10)
        reads = source.reads
        out.square().sum().backward()  # recomputes tiles from the pixels kept in forward
        stats = streamed.last_input_stats
    grads = [p.grad.clone() for p in trunk.parameters()]
    trunk.zero_grad()
    reference.square().sum().backward()
    for got, want in zip(grads, (p.grad for p in trunk.parameters()), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # decoded once per step: the backward pass read nothing (uint8 pixels were kept)
    assert reads > 1 and source.reads == reads and stats.compact
    assert stats.pixels_backward == 0 and stats.cached_pieces == stats.pieces > 1
    assert stats.cached_bytes == 3 * stats.pixels_forward


@pytest.mark.parametrize(("k", "flip"), [(0, False), (1, True)])
def test_compact_reads_expand_to_the_same_tensor(image_factory, k, flip):
    """read() == expand(read_compact()) bit for bit: tissue, background, partly tissue."""
    image = image_factory(256, 256)
    slide = SlideReader.from_array(image, mpp=1.0)
    mask = TissueMask(np.zeros((16, 16), bool), mpp=16.0)
    mask.mask[4:8, 4:12] = True
    plain = SlideSource(slide, mpp=2.0, tissue_mask=mask, normalize=IMAGENET)
    source = plain
    if k or flip:
        from gigastream.wsi.source import OrientedSource

        source = OrientedSource(plain, k, flip)
    for rows, cols in [
        (slice(0, 20), slice(0, 30)),
        (slice(30, 70), slice(20, 100)),
        (slice(None), slice(None)),
    ]:
        index = (slice(None), slice(None), rows, cols)
        compact = source.read_compact(index)
        torch.testing.assert_close(source.expand(compact), source.read(index), rtol=0, atol=0)
    region = plain.read_compact((slice(None), slice(None), slice(0, 20), slice(0, 30)))
    assert region.rgb is None and region.nbytes == 0  # no tissue: nothing decoded or kept
    region = plain.read_compact((slice(None), slice(None), slice(30, 70), slice(20, 100)))
    assert region.rgb.dtype == torch.uint8 and region.tissue is not None
    assert region.nbytes == 40 * 80 * 3 + 40 * 80  # pixels and the partial tissue mask


def test_errors():
    slide = SlideReader.from_array(np.zeros((64, 64, 3), np.uint8), mpp=None)
    with pytest.raises(SlideError, match="no microns-per-pixel"):
        SlideSource(slide, mpp=1.0)
    slide = SlideReader.from_array(np.zeros((64, 64, 3), np.uint8), mpp=1.0)
    with pytest.raises(SlideError, match="dtype must be floating point"):
        SlideSource(slide, mpp=1.0, dtype=torch.uint8)
    source = SlideSource(slide, mpp=1.0)
    with pytest.raises(IndexError, match="step 1 only"):
        source.read((slice(None), slice(None), slice(0, 8, 2), slice(0, 8)))
    with pytest.raises(IndexError, match="slices only"):
        source.read((0, slice(None), slice(0, 8), slice(0, 8)))


def test_too_many_index_entries():
    source = SlideSource(SlideReader.from_array(np.zeros((16, 16, 3), np.uint8), mpp=1.0), mpp=1.0)
    with pytest.raises(IndexError, match="5 entries for a 4-d input"):
        source.read((slice(None),) * 5)


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_corrupt_tile_mid_stream_raises_slide_read_error(corrupt_slide, backend):
    from gigastream.streaming.module import StreamingModule

    trunk = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    with SlideReader.open(corrupt_slide, backend=backend) as slide:
        source = SlideSource(slide, mpp=0.5)  # level 1, whose tile x, y 256..512 is corrupt
        top = source.read((slice(None), slice(None), slice(0, 256), slice(None)))
        assert top.shape == (1, 3, 256, 650)  # the tiles above it read fine
        with pytest.raises(SlideReadError, match=r"corrupt\.tif: reading level 1 region .*"):
            source.read((slice(None), slice(None), slice(250, 300), slice(200, 300)))
        with pytest.raises(SlideReadError) as info:  # mid-stream: after some tiles worked
            StreamingModule(trunk, tile_size=128)(source)
        assert str(info.value).endswith(READ_ERROR_FIX) and source.reads > 2


def test_reader_errors_become_slide_read_errors():
    class Failing(ArrayReader):
        def read_scaled(self, res, x, y, width, height):
            raise ValueError("bad huffman code")

    slide = Failing(np.zeros((64, 64, 3), np.uint8), mpp=0.5, path=Path("s.tif"))
    source = SlideSource(slide, mpp=1.0)
    with pytest.raises(SlideReadError) as info:
        source.read((slice(None), slice(None), slice(2, 10), slice(4, 20)))
    assert str(info.value) == (
        "s.tif: reading level 0 region x=4, y=2, w=16, h=8 (pixels at 1 mpp) failed: "
        f"ValueError: bad huffman code; {READ_ERROR_FIX}"
    )
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_oriented_lazy_reads_equal_the_oriented_whole(image_factory, k, flip):
    """Lazy augmentation: every window of an OrientedSource equals the same window of the
    whole input rotated/flipped; its tissue mask is oriented the same way as a preloaded
    slide's (TensorSource.augmented)."""
    from gigastream.train.data import TensorSource
    from gigastream.wsi.source import OrientedSource, orient_mask, orient_tensor

    image = image_factory(96, 160)  # not square: rotations swap H and W
    mask = TissueMask(np.zeros((6, 10), bool), mpp=16.0)
    mask.mask[1:4, 2:9] = True
    source = SlideSource(SlideReader.from_array(image, mpp=1.0), mpp=1.0, tissue_mask=mask)
    whole = orient_tensor(_full(source), k, flip)
    oriented = OrientedSource(source, k, flip)
    assert tuple(oriented.shape) == tuple(whole.shape)
    torch.testing.assert_close(_full(oriented), whole, rtol=0, atol=0)
    _, _, h, w = oriented.shape
    for y0, y1, x0, x1 in [(0, 17, 3, 40), (h // 3, h - 1, w // 2, w), (5, 6, 7, 8)]:
        index = (slice(None), slice(None), slice(y0, y1), slice(x0, x1))
        torch.testing.assert_close(oriented.read(index), whole[index], rtol=0, atol=0)
    expected_mask = orient_mask(mask, k, flip)
    np.testing.assert_array_equal(oriented.tissue_mask.mask, expected_mask.mask)
    # the preloaded path orients identically for the same draw
    gen_a = torch.Generator().manual_seed(k * 2 + flip)
    gen_b = torch.Generator().manual_seed(k * 2 + flip)
    lazy = source.augmented(gen_a)
    preloaded = TensorSource(_full(source), mask, source.mpp).augmented(gen_b)
    torch.testing.assert_close(_full(lazy), preloaded.pixels, rtol=0, atol=0)
    np.testing.assert_array_equal(lazy.tissue_mask.mask, preloaded.tissue_mask.mask)


def test_streaming_an_oriented_slide_is_exact_float64(image_factory):
    """A streamed trunk on a rotated+flipped lazy slide equals the trunk on the oriented
    whole image: output and every parameter gradient."""
    from gigastream.streaming import StreamingModule
    from gigastream.wsi.source import OrientedSource, orient_tensor

    image = image_factory(70, 110)
    source = SlideSource(SlideReader.from_array(image, mpp=1.0), mpp=1.0, dtype=torch.float64)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, stride=2))
    net = net.double()
    whole = orient_tensor(_full(source), 1, True)
    ref = net(whole)
    ref.square().sum().backward()
    ref_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    out = StreamingModule(net, tile_size=40)(OrientedSource(source, 1, True))
    out.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for p, r in zip(net.parameters(), ref_grads, strict=True):
        torch.testing.assert_close(p.grad, r, rtol=1e-10, atol=1e-10)


def test_a_slide_spilled_to_disk_streams_exactly(image_factory, tmp_path):
    """A real SlideSource (uint8 pixels, partly-tissue masks, background tiles) with no
    memory for its cache: every read comes back from the spill file bit for bit."""
    image = image_factory(160, 200)
    slide = SlideReader.from_array(image, mpp=1.0)
    mask = TissueMask(np.zeros((10, 13), bool), mpp=16.0)
    mask.mask[2:8, 3:11] = True
    source = SlideSource(slide, mpp=1.0, tissue_mask=mask, normalize=IMAGENET, dtype=torch.float64)
    x = source.read((slice(None),) * 4)
    from gigastream.streaming.module import StreamingModule
    from tests.exactness import assert_same_gradients

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, stride=2))
    net = net.double()
    streamed = StreamingModule(net, tile_size=48, input_cache=0, input_spill=tmp_path)
    assert_same_gradients(net, lambda _: streamed(source), x, net, input_grad=False)
    stats = streamed.last_input_stats
    assert stats.compact and stats.pixels_backward == 0 and stats.cached_bytes == 0
    # background tiles hold nothing (0 bytes in memory); every tile with tissue is on disk
    assert stats.cached_pieces + stats.spilled_pieces == stats.pieces
    assert stats.spilled_pieces > 4 and stats.spilled_bytes > 0
