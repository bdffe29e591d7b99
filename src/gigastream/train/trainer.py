"""The one Lightning ``Trainer`` factory of every run (slides and bags) and its parts.

:func:`build_trainer` makes the ``Trainer`` of a training, prediction or evaluation run
from a :class:`~gigastream.train.config.TrainConfig` (device, precision, epochs, gradient
accumulation, distribution); :func:`resolve_device` checks the device first;
:func:`checkpoint_callbacks` gives the best and last checkpoints every run keeps (their
state follows a moved run folder, :class:`RunCheckpoint`); :class:`AtomicCheckpointIO`
writes checkpoints so they are never half-written.

Example:
    >>> from gigastream.train.config import TrainConfig
    >>> train = TrainConfig(device="cpu", epochs=1, progress=False)
    >>> trainer = build_trainer(train, None, *resolve_device(train), for_training=False)
    >>> trainer.max_epochs
    1
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from gigastream import precision as precisions
from gigastream.train.config import ConfigError, TrainConfig
from gigastream.train.files import atomic_save, load_checkpoint_file

logger = logging.getLogger(__name__)


def resolve_device(train: TrainConfig) -> tuple[str, int | list[int]]:
    """Lightning ``(accelerator, devices)`` for ``train.device``; ConfigError if unavailable."""
    device, count = train.device, train.devices
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        accelerator: str = "cpu"
        devices: int | list[int] = count
    elif device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {device}: CUDA is not available on this machine "
                "(torch.cuda.is_available() is False); use --device cpu"
            )
        available = torch.cuda.device_count()
        if device == "cuda":
            devices = count
            if count > available:
                raise ConfigError(f"--devices {count}: only {available} CUDA device(s) here")
        else:
            index = int(device.split(":", 1)[1])
            if index >= available:
                raise ConfigError(f"--device {device}: only {available} CUDA device(s) here")
            devices = [index]
        accelerator = "gpu"
    else:
        raise ConfigError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}")
    if precisions.needs_cuda(train.precision) and accelerator == "cpu":
        raise ConfigError("--precision 16-mixed needs a CUDA device; on the CPU use bf16-mixed")
    return accelerator, devices


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file and renamed: never half-written."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return load_checkpoint_file(path)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose restored state follows its run folder.

    A checkpoint stores its folder's absolute path (``dirpath``) and the files in it
    (``best_model_path``, ``best_k_models``, ...). Lightning restores that state only into a
    callback of the same ``dirpath`` and otherwise keeps just ``best_model_path``: a run
    folder that was moved or copied would forget its best score and take another folder's
    best checkpoint (the one now at its old path). This callback re-roots the stored paths
    into its own folder before restoring them, so a run folder can be moved. Its state key
    is ``ModelCheckpoint``'s, so checkpoints of either load.
    """

    def _generate_state_key(self, **kwargs: Any) -> str:
        return f"{ModelCheckpoint.__qualname__}{kwargs!r}"

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved, here = state_dict.get("dirpath"), self.dirpath
        if saved and here and os.path.normpath(saved) != os.path.normpath(here):
            logger.info("checkpoint folder %s moved to %s: its paths follow", saved, here)
            state_dict = _rerooted(state_dict, saved, here)
        super().load_state_dict(state_dict)


def _rerooted(state: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """A ``ModelCheckpoint`` state with the paths under ``old`` moved under ``new``."""

    def move(path: Any) -> Any:
        if not isinstance(path, str) or not path:
            return path
        if os.path.normpath(path) == os.path.normpath(old):
            return new
        relative = os.path.relpath(path, old)
        return path if relative.startswith(os.pardir) else os.path.join(new, relative)

    moved = dict(state, dirpath=new)
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if key in moved:
            moved[key] = move(moved[key])
    if isinstance(moved.get("best_k_models"), dict):
        moved["best_k_models"] = {move(k): v for k, v in moved["best_k_models"].items()}
    return moved


def checkpoint_callbacks(dirpath: str | Path) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """``(best, last)``: ``best.ckpt`` of the best ``val_score`` and ``last.ckpt`` every epoch.

    ``val_score`` is the validation AUC with ties broken by the lower validation loss
    (:class:`~gigastream.train.module.MILClassifier` logs it). Both are
    :class:`RunCheckpoint`: a moved run folder resumes from its own checkpoints.
    """
    best = RunCheckpoint(
        dirpath=dirpath,
        filename="best",
        monitor="val_score",
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
    )
    # Lightning 2.6's save_last=True only refreshes last.ckpt in epochs that improve the
    # monitored metric; an unmonitored checkpoint is rewritten after every epoch (and, after
    # ``best``, carries its updated state for resuming)
    last = RunCheckpoint(
        dirpath=dirpath, filename="last", save_top_k=1, enable_version_counter=False
    )
    return best, last


def build_trainer(
    train: TrainConfig,
    out: Path | None,
    accelerator: str,
    devices: int | list[int],
    callbacks: Sequence[Callback] = (),
    for_training: bool = True,
    grad_clip: float | None = None,
    loggers: bool = True,
) -> L.Trainer:
    """Lightning's ``Trainer`` of a run.

    Args:
        train: the loop's settings (precision, epochs, accumulation, strategy, progress).
        out: the run folder (logs and checkpoints go there), or ``None``.
        accelerator, devices: from :func:`resolve_device`.
        callbacks: Lightning callbacks (e.g. :func:`checkpoint_callbacks`).
        for_training: ``False`` for prediction: one node, no strategy, no checkpoints,
            no loggers.
        grad_clip: clip the gradient norm to this (``optim.grad_clip``).
        loggers: write CSV and TensorBoard logs into ``out`` when training.
    """
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    strategy: Any = train.strategy
    if strategy == "ddp":  # CLAM's instance classifiers of the other classes sit out a step
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(find_unused_parameters=True)
    run_loggers: Any = False
    if for_training and out is not None and loggers:
        run_loggers = [CSVLogger(out, name="logs")]
        try:
            run_loggers.append(TensorBoardLogger(out, name="tensorboard"))
        except ModuleNotFoundError:  # tensorboard not installed: CSV only
            logger.info("tensorboard is not installed: CSV logs only")
    return L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=train.num_nodes if for_training else 1,
        strategy=strategy if for_training else "auto",
        precision=precisions.canonical(train.precision),
        max_epochs=train.epochs,
        accumulate_grad_batches=train.accumulate_grad_batches,
        gradient_clip_val=grad_clip,
        callbacks=list(callbacks),
        logger=run_loggers,
        enable_checkpointing=for_training,
        # progress bars only on a terminal: redirected to a file they are kilobytes of redraws
        enable_progress_bar=train.progress and sys.stderr.isatty(),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        default_root_dir=str(out) if out is not None else None,
        plugins=[AtomicCheckpointIO()],
    )


__all__ = [
    "AtomicCheckpointIO",
    "RunCheckpoint",
    "build_trainer",
    "checkpoint_callbacks",
    "resolve_device",
]
