"""A new run started from a finished run's trunk: ``--weights RUN/checkpoints/best.ckpt``.

The trunk of a ``gigastream train`` checkpoint is loaded bit for bit into the new model (its
BatchNorm statistics too: a run with weights does not recalibrate them), the new run trains
from it, and a checkpoint whose trunk does not fit says which ``--arch`` it needs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gigastream.models.trunks import CHECKPOINT_TRUNK_PREFIX, build_trunk
from tests.train.conftest import tiny_config


def _checkpoint_trunk(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {
        k[len(CHECKPOINT_TRUNK_PREFIX) :]: v
        for k, v in state.items()
        if k.startswith(CHECKPOINT_TRUNK_PREFIX)
    }


def test_trunk_of_a_checkpoint_is_loaded_bit_for_bit(trained_run):
    best = trained_run / "checkpoints" / "best.ckpt"
    expected = _checkpoint_trunk(best)
    assert expected, "the checkpoint holds no trunk weights"
    trunk, channels, stride = build_trunk("vgg_small", str(best))
    assert (channels, stride) == (128, 16)
    loaded = trunk.state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    # a trained trunk differs from a fresh one (the check above could not pass by chance)
    fresh = build_trunk("vgg_small")[0].state_dict()
    assert not torch.equal(fresh["0.weight"], loaded["0.weight"])


def test_checkpoint_of_another_arch_names_the_arch(trained_run):
    best = trained_run / "checkpoints" / "best.ckpt"
    with pytest.raises(ValueError, match=r"best.ckpt: its trunk is vgg_small.*--arch vgg_small"):
        build_trunk("resnet18", str(best))


def test_a_run_starts_from_a_finished_runs_trunk(trained_run, manifest, tmp_path):
    from gigastream.train.fitting import fit
    from gigastream.train.preparation import build_model

    best = trained_run / "checkpoints" / "best.ckpt"
    config = tiny_config(
        manifest,
        model={"weights": str(best), "head": "clam_mb"},
        train={"epochs": 1, "heatmaps": 0},
    )
    model = build_model(config, num_classes=2)
    expected = _checkpoint_trunk(best)
    for key, value in model.trunk.trunk.state_dict().items():
        assert torch.equal(value, expected[key]), key
    metrics = fit(config, tmp_path / "warm")
    assert metrics["status"] == "completed"
    after = _checkpoint_trunk(tmp_path / "warm" / "checkpoints" / "last.ckpt")
    # BatchNorm statistics are the trained run's (not recalibrated); the convolutions trained on
    running = [k for k in expected if k.endswith("running_mean")]
    assert running and all(torch.equal(after[k], expected[k]) for k in running)
    assert not torch.equal(after["0.weight"], expected["0.weight"])
