"""FeatureMIL: the engine contract for every registered head (attention sums to 1, every
head parameter gets a gradient, an empty trunk group), attention laid on the grid of a
feature file's coords, and a bag of the wrong dimension refused with the file named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gigastream.mil.heads import list_mil_heads
from gigastream.models.feature_mil import FeatureBag, FeatureConfig, FeatureMIL
from gigastream.train.module import MILModel
from gigastream.wsi.feature_files import FeatureFileError
from gigastream.wsi.patches import grid_from_coords, patch_grid
from gigastream.wsi.reader import SlideReader


@pytest.mark.parametrize("head", list_mil_heads())
def test_every_head_keeps_the_engine_contract(head):
    """Every head parameter gets a gradient from a bag of each class (CLAM's instance
    classifiers train on the bags of their own class)."""
    torch.manual_seed(0)
    model = FeatureMIL(12, head, num_classes=2)
    assert isinstance(model, MILModel)
    groups = model.parameter_groups()
    assert groups["trunk"] == [] and len(groups["head"]) == len(list(model.parameters()))
    bag = torch.randn(20, 12)
    out = model(bag, label=1)
    assert out.logits.shape == (2,) and out.attention_map is None
    attention = out.attention.detach()
    torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:-1]))
    sum(model.loss(model(bag, label=y), y) for y in (0, 1)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"{head}: no gradient for {missing}"


def test_attention_is_laid_on_the_grid_of_the_coords():
    """The coords of a patch grid (level-0 corners, a non-integer level-0 patch edge) give
    back its cells exactly, and the attention map holds each patch's attention there."""
    slide = SlideReader.from_array(np.zeros((300, 500, 3), np.uint8), mpp=0.3)
    grid = patch_grid(slide, mpp=1.0, patch_size=16)  # level-0 patch 53.33 px
    rebuilt = grid_from_coords(grid.coords, grid.level0_patch)
    np.testing.assert_array_equal(rebuilt.cells, grid.cells)
    assert rebuilt.grid_shape == grid.grid_shape
    torch.manual_seed(0)
    model = FeatureMIL(4, "abmil")
    out = model(FeatureBag(torch.randn(len(grid), 4), rebuilt), label=0)
    assert out.attention_map.shape == grid.grid_shape and bool(out.instances.all())
    cells = torch.from_numpy(grid.cells)
    torch.testing.assert_close(out.attention_map[cells[:, 0], cells[:, 1]], out.attention)


def test_a_float64_model_takes_float32_features():
    model = FeatureMIL(5, "gated_abmil").double()
    out = model(torch.randn(3, 5), label=1)
    assert out.logits.dtype == torch.float64


def test_a_bag_of_another_dimension_is_refused():
    model = FeatureMIL(16, "abmil")
    bag = FeatureBag(torch.randn(4, 24), path="features/s1.h5")
    with pytest.raises(FeatureFileError, match="features/s1.h5: features of dimension 24, but"):
        model(bag)
    with pytest.raises(ValueError, match=r"takes a bag of \(N, 16\) features, got \(4, 24\)"):
        model(torch.randn(4, 24))
    with pytest.raises(ValueError, match="feature_dim must be >= 1, got 0"):
        FeatureMIL(0)
    with pytest.raises(ValueError, match="feature_dim must be >= 1"):
        FeatureConfig(feature_dim=0).validate()
