"""Wall time of a run's training steps, measured by a Lightning callback.

:class:`StepTimer` times each training step (forward, backward, optimiser) and each
validation pass separately, so a run's time per slide or bag excludes data loading done
between steps and validation.

Example:
    >>> import lightning as L  # doctest: +SKIP
    >>> timer = StepTimer()
    >>> L.Trainer(callbacks=[timer]).fit(module, train_loader)  # doctest: +SKIP
    >>> sum(timer.epoch_seconds) / timer.bags  # seconds per training step  # doctest: +SKIP
"""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import Callback


class StepTimer(Callback):
    """Wall time of the training steps (forward, backward, optimiser) and of validation.

    Attributes:
        epoch_seconds: training-step seconds of each finished epoch.
        bags: training steps taken (one slide or bag each).
        val_seconds: seconds spent in validation.
    """

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self.bags = 0
        self.val_seconds = 0.0
        self._epoch = 0.0
        self._start = 0.0
        self._start_val = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch = 0.0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epoch_seconds.append(self._epoch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._epoch += time.perf_counter() - self._start
        self.bags += 1

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._start_val = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.val_seconds += time.perf_counter() - self._start_val


__all__ = ["StepTimer"]
