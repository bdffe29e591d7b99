"""The trunk's BatchNorm calibrated on training slides (``gigastream.train.calibration``)."""

from __future__ import annotations

import torch

from gigastream.streaming.batchnorm import FrozenBatchNorm
from gigastream.train.calibration import calibrate_trunk
from gigastream.train.data import SlideExamples
from gigastream.train.preparation import build_model, prepare
from tests.train.conftest import tiny_config


def test_calibration_sets_batchnorm_statistics_from_slides(manifest):
    config = tiny_config(manifest)
    prepared = prepare(config, check_plan=False)
    torch.manual_seed(0)
    model = build_model(config, 2).train()
    norms = [m for m in model.trunk.trunk.modules() if isinstance(m, FrozenBatchNorm)]
    assert norms and all(not m.running_mean.any() for m in norms)  # initial statistics
    dataset = SlideExamples(prepared.train_rows, prepared.class_names, config.data)
    used = calibrate_trunk(model, dataset, 2, config.data, seed=0, max_pixels=128 * 128)
    assert used == 2
    assert model.training  # the mode is given back
    assert all(m.running_mean.any() for m in norms)
    assert all(torch.isfinite(m.running_var).all() and (m.running_var > 0).all() for m in norms)
