"""Data-dependent BatchNorm calibration, for plain and frozen BatchNorm alike."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from gigastream.streaming.batchnorm import calibrate_batchnorm, freeze_batchnorm
from tests.exactness import EQUAL, assert_exact


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6)
    )


def test_frozen_and_plain_calibrate_identically_and_normalise():
    plain = _net()
    frozen = freeze_batchnorm(copy.deepcopy(plain))
    batches = [torch.randn(2, 3, 20, 20) * 4 + 2 for _ in range(3)]
    assert calibrate_batchnorm(plain, batches) == 3
    calibrate_batchnorm(frozen, batches)
    assert_exact(frozen.state_dict(), plain.state_dict(), "calibrated", tolerance=EQUAL)
    # every BN normalises its input to ~ zero mean, unit variance on the calibration data
    plain.eval()
    with torch.no_grad():
        out = plain(torch.cat(batches))  # output of the last BatchNorm
    assert out.mean(dim=(0, 2, 3)).abs().max() < 0.05
    assert_close(out.var(dim=(0, 2, 3)), torch.ones(6), atol=0.05, rtol=0)
    assert not plain[1].training and not frozen[1].calibrating  # modes restored
    assert plain[1].momentum == 0.1  # the BatchNorm's own momentum is back


def test_calibration_needs_a_batch():
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate_batchnorm(_net(), [])
