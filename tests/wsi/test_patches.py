"""The patch grid over a slide's tissue, and patch reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gigastream.mil.chunked import ChunkedEncoder
from gigastream.wsi.patches import PatchBag, patch_grid, read_patches
from gigastream.wsi.reader import SlideError, SlideReader
from gigastream.wsi.tissue import NoTissueError, TissueMask

HE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "images" / "he-1000px.png"


def _slide(mpp: float = 0.5, size: int = 300) -> SlideReader:
    rng = np.random.default_rng(0)
    return SlideReader.from_array(rng.integers(0, 256, (size, size + 40, 3), np.uint8), mpp=mpp)


def test_every_patch_is_the_window_of_the_whole_slide_read_at_mpp():
    slide = _slide()
    grid = patch_grid(slide, mpp=0.75, patch_size=32)  # a non-integer downsample
    whole = slide.read_at_mpp(0.75)
    rows, cols = grid.grid_shape
    assert (rows, cols) == (whole.shape[0] // 32, whole.shape[1] // 32) and len(grid) == rows * cols
    patches = read_patches(slide, grid, range(len(grid)))
    for k, (row, col) in enumerate(grid.cells):
        np.testing.assert_array_equal(
            patches[k], whole[row * 32 : (row + 1) * 32, col * 32 : (col + 1) * 32]
        )
    # coords are the level-0 top-left corners
    np.testing.assert_array_equal(grid.coords[1], [int(32 * 0.75 / 0.5), 0])


def test_one_read_of_dense_patches_equals_a_read_per_patch():
    """Dense patches are read as one box, sparse ones one by one: the same pixels."""
    slide = _slide()
    grid = patch_grid(slide, mpp=0.75, patch_size=32)  # a non-integer downsample
    dense = read_patches(slide, grid, range(len(grid)))
    last = len(grid) - 1
    np.testing.assert_array_equal(read_patches(slide, grid, [last, 0]), dense[[last, 0]])
    np.testing.assert_array_equal(read_patches(slide, grid, [3, 1, 2]), dense[[3, 1, 2]])
    assert read_patches(slide, grid, []).shape == (0, 32, 32, 3)


def test_patches_are_kept_by_tissue_fraction():
    slide = _slide(mpp=1.0, size=256)  # 256 x 296 px at 1 um/px
    mask = np.zeros((64, 74), bool)  # 4 um per mask pixel
    mask[:, :8] = True  # the first 32 um: exactly patch column 0 (patches of 32 um)
    mask[:, 8:12] = True  # half of column 1
    grid = patch_grid(slide, mpp=1.0, patch_size=32, mask=TissueMask(mask, 4.0), min_tissue=0.5)
    assert set(grid.cells[:, 1].tolist()) == {0, 1}
    np.testing.assert_allclose(sorted(set(grid.tissue.tolist())), [0.5, 1.0])
    strict = patch_grid(slide, mpp=1.0, patch_size=32, mask=TissueMask(mask, 4.0), min_tissue=0.75)
    assert set(strict.cells[:, 1].tolist()) == {0}
    attention = strict.layout(np.arange(len(strict), dtype=np.float32))
    assert attention.shape == strict.grid_shape and np.isnan(attention[:, 1:]).all()


def test_patch_larger_than_slide_names_both_sizes():
    with pytest.raises(SlideError, match=r"larger than the slide .*\(170x150 px\).*--patch-size"):
        patch_grid(_slide(), mpp=1.0, patch_size=256)


def test_no_tissue_patch_is_a_clear_error():
    slide = _slide()
    mask = TissueMask(np.zeros((30, 34), bool), 5.0)
    with pytest.raises(NoTissueError, match="no 32 px patch .*--min-tissue"):
        patch_grid(slide, mpp=0.5, patch_size=32, mask=mask)


@pytest.mark.skipif(not HE.is_file(), reason="needs ../shared/data/images (real H&E)")
def test_real_tissue_grid():
    from PIL import Image

    from gigastream.wsi.tissue import TissueMaskConfig, compute_tissue_mask

    slide = SlideReader.from_array(np.asarray(Image.open(HE).convert("RGB")), mpp=0.5)
    mask = compute_tissue_mask(slide, TissueMaskConfig().scaled_to(500, 500))
    grid = patch_grid(slide, mpp=0.5, patch_size=100, mask=mask, min_tissue=0.5)
    assert 0 < len(grid) <= 100
    assert read_patches(slide, grid, [0]).shape == (1, 100, 100, 3)


class _Scaled(torch.nn.Module):
    """uint8 patches -> float64 in [0, 1], then a small CNN."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(784, 5)
        ).double()

    def forward(self, x):
        return self.net(x.double() / 255.0)


def test_lazy_patch_bag_gives_the_chunked_encoder_the_same_gradients():
    slide = _slide()
    grid = patch_grid(slide, mpp=1.0, patch_size=16)
    bag = PatchBag(slide, grid)
    whole = bag.load()
    assert whole.shape == (len(grid), 3, 16, 16) and whole.dtype == torch.uint8
    torch.testing.assert_close(bag.read((slice(3, 7),)), whole[3:7], rtol=0, atol=0)
    torch.manual_seed(0)
    encoder = _Scaled()

    def run(x):
        encoder.zero_grad()
        features = ChunkedEncoder(encoder, chunk_size=7)(x)
        features.tanh().sum().backward()
        return features.detach(), [p.grad.clone() for p in encoder.parameters()]

    lazy, lazy_grads = run(bag)
    eager, eager_grads = run(whole)
    torch.testing.assert_close(lazy, eager, rtol=1e-12, atol=1e-12)
    for a, b in zip(lazy_grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
