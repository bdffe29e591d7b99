"""The one Trainer factory (``gigastream.train.trainer``): devices and precision checked
first, the checkpoints every run keeps, prediction trainers without side effects."""

from __future__ import annotations

import pytest
import torch

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
