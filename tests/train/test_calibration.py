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


def test_calibration_without_a_usable_slide_names_the_skipped_slides(tmp_path, manifest):
    import numpy as np
    import pytest
    from PIL import Image

    from gigastream.train.files import RunError
    from gigastream.wsi.manifest import read_manifest

    Image.fromarray(np.full((256, 256, 3), 250, np.uint8)).save(tmp_path / "glass.png")
    (tmp_path / "m.csv").write_text(
        "slide_id,path,label,mpp\nglass_a,glass.png,negative,1.0\nglass_b,glass.png,positive,1.0\n"
    )
    rows = read_manifest(tmp_path / "m.csv").rows
    config = tiny_config(manifest)
    model = build_model(config, 2)
    dataset = SlideExamples(rows, ["negative", "positive"], config.data)
    with pytest.raises(RunError) as info:
        calibrate_trunk(model, dataset, 8, config.data, seed=0)
    text = str(info.value)
    assert "no usable training slide" in text and "\n" not in text
    assert "glass_a: " in text and "glass_b: " in text and "no tissue" in text
