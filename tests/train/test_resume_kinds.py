"""``kill -9``, then ``mv`` of the run folder, then ``--resume``: the same weights, bit for bit,
as a run that was never stopped, for the run kinds that the classification test of
``test_fitting`` does not cover (issues 14 and 18):

- a regression run (``task: regression``): its target scale, stored with the run, and its
  best epoch, chosen by validation Spearman, survive the kill and the move;
- a patch-bag run with per-patch augmentation (``patches.augment: patch`` and colour
  jitter): its per-patch draws come from the resumed step's generator, so the resumed
  epochs see the same pixels as the uninterrupted run's.

Each is killed in its second epoch with the DataLoader workers of a real run.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
import yaml

from gigastream.train.files import load_checkpoint_file
from gigastream.train.fitting import fit
from tests.train.conftest import synth_manifest, tiny_config, write_tiny_yaml
from tests.train.test_fitting import _metrics, _start_slow_train, _wait_for

PATCHES = {
    "model": {"kind": "patches", "head": "abmil", "head_options": {"attn_dim": 16}},
    "patches": {
        "encoder": {"name": "small_cnn", "options": {"out_dim": 16, "width": 8}},
        "patch_size": 32,
        "chunk_size": 16,
        "augment": "patch",
        "color_jitter": 0.1,
    },
}
KINDS = {
    "regression": {"task": "regression", "data": {"num_workers": 2}},
    "patch_augment": {**PATCHES, "data": {"num_workers": 2}},
}


@pytest.fixture(scope="module")
def count_manifest(tmp_path_factory) -> Path:
    """Eight tiny synthetic slides labelled with their lesion count (0-3)."""
    return synth_manifest(tmp_path_factory.mktemp("counts"), target="lesion_count")


@pytest.mark.parametrize("kind", list(KINDS))
def test_kill_9_then_mv_then_resume_equals_an_uninterrupted_run(
    kind, tmp_path, manifest, count_manifest
):
    slides = count_manifest if kind == "regression" else manifest
    sections = {**KINDS[kind], "train": {"epochs": 3, "heatmaps": 0}}
    reference = tmp_path / "reference"
    fit(tiny_config(slides, **sections), reference)

    killed = tmp_path / "killed"
    config = write_tiny_yaml(tmp_path / "tiny.yaml", **sections)
    process = _start_slow_train(slides, killed, config, epochs=3)
    try:
        _wait_for(killed / "checkpoints" / "last.ckpt", process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
        process.stdout.close()
    assert load_checkpoint_file(killed / "checkpoints" / "last.ckpt")["epoch"] == 0
    assert _metrics(killed)["status"] == "running"  # what kill -9 leaves

    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    killed.rename(moved)  # mv killed elsewhere/moved
    metrics = fit(tiny_config(slides, **sections), moved, resume=True)
    assert metrics["status"] == "completed"
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]

    resumed = load_checkpoint_file(moved / "checkpoints" / "last.ckpt")
    uninterrupted = load_checkpoint_file(reference / "checkpoints" / "last.ckpt")
    assert resumed["epoch"] == uninterrupted["epoch"] == 2
    assert resumed["state_dict"].keys() == uninterrupted["state_dict"].keys()
    for name, tensor in uninterrupted["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], tensor, rtol=0, atol=0, msg=name)
    assert resumed["lr_schedulers"] == uninterrupted["lr_schedulers"]
    expected = _metrics(reference)
    assert [e["train_slide_losses"] for e in metrics["epochs"]] == [
        e["train_slide_losses"] for e in expected["epochs"]
    ]
    assert metrics["best_epoch"] == expected["best_epoch"]
    assert metrics["best_checkpoint"] == "checkpoints/best.ckpt"
    assert (moved / "predictions.csv").read_bytes() == (reference / "predictions.csv").read_bytes()
    config = yaml.safe_load((moved / "config.yaml").read_text())
    assert config == yaml.safe_load((reference / "config.yaml").read_text())
    if kind == "regression":  # the target scale is the run's own and was kept
        target = config["target"]
        assert target["standardize"] and target["std"] > 0 and target["mean"] is not None
        for epoch in metrics["epochs"]:
            assert epoch["val_auc"] is None and "val_spearman" in epoch
