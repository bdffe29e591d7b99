"""The one Trainer factory (``gigastream.train.trainer``): devices and precision checked
first, the checkpoints every run keeps (their state follows a moved run folder), prediction
trainers without side effects."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from gigastream.train.config import ConfigError, TrainConfig
from gigastream.train.trainer import (
    AtomicCheckpointIO,
    build_trainer,
    checkpoint_callbacks,
    resolve_device,
)


def test_resolve_device_on_the_cpu():
    assert resolve_device(TrainConfig(device="cpu", devices=2)) == ("cpu", 2)
    accelerator, _ = resolve_device(TrainConfig(device="auto"))
    assert accelerator == ("gpu" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_config_error():
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="CUDA is not available on this machine"):
            resolve_device(TrainConfig(device=device))


def test_bad_device_and_16_mixed_on_the_cpu_are_config_errors():
    with pytest.raises(ConfigError, match="--device must be cpu, cuda, cuda:N or auto"):
        resolve_device(TrainConfig(device="tpu"))
    with pytest.raises(ConfigError, match="16-mixed needs a CUDA device; on the CPU use bf16"):
        resolve_device(TrainConfig(device="cpu", precision="16-mixed"))


def test_checkpoint_callbacks_keep_best_val_score_and_last(tmp_path):
    best, last = checkpoint_callbacks(tmp_path)
    assert best.monitor == "val_score" and best.mode == "max" and best.save_top_k == 1
    assert best.filename == "best" and last.filename == "last" and last.monitor is None
    assert best.dirpath == last.dirpath == str(tmp_path)


def test_build_trainer_for_training_and_for_prediction(tmp_path):
    train = TrainConfig(device="cpu", epochs=3, precision="64", accumulate_grad_batches=4)
    trainer = build_trainer(train, tmp_path, "cpu", 1, checkpoint_callbacks(tmp_path))
    assert trainer.max_epochs == 3 and trainer.accumulate_grad_batches == 4
    assert trainer.precision == "64-true"  # Lightning's full name (gigastream.precision)
    assert {type(lg).__name__ for lg in trainer.loggers} >= {"CSVLogger"}
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    predict = build_trainer(train, None, "cpu", 1, for_training=False)
    assert predict.loggers == [] and predict.checkpoint_callback is None


def test_checkpoint_state_follows_a_moved_run_folder(tmp_path):
    old, new = tmp_path / "a" / "checkpoints", tmp_path / "a_old" / "checkpoints"
    saved, _ = checkpoint_callbacks(old)
    saved.best_model_path = str(old / "best.ckpt")
    saved.best_model_score = torch.tensor(0.75)
    saved.best_k_models = {str(old / "best.ckpt"): torch.tensor(0.75)}
    saved.kth_best_model_path = str(old / "best.ckpt")
    saved.kth_value = torch.tensor(0.75)
    state = saved.state_dict()

    moved, _ = checkpoint_callbacks(new)  # mv a a_old: resumed from a_old's last.ckpt
    assert (
        moved.state_key
        == saved.state_key
        == ModelCheckpoint(dirpath=new, filename="best", monitor="val_score", mode="max").state_key
    )  # Lightning's own key: checkpoints written before load alike
    moved.load_state_dict(state)
    assert moved.dirpath == str(new)
    assert moved.best_model_path == moved.kth_best_model_path == str(new / "best.ckpt")
    assert list(moved.best_k_models) == [str(new / "best.ckpt")]
    assert float(moved.best_model_score) == 0.75  # the best so far is kept
