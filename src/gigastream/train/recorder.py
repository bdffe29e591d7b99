"""A run's ``metrics.json`` kept true on every way out, and SIGTERM/SIGINT handled.

:class:`RunRecorder` (a Lightning callback) writes each epoch as it finishes and the status
when training fails or is interrupted (``interrupted.ckpt`` saved); :class:`Signals` turns
SIGTERM/SIGINT into a stop at the next training step inside Lightning's loop, and into
:class:`RunInterrupted` elsewhere.

Example:
    >>> from pathlib import Path
    >>> from gigastream.train.files import RunRecord
    >>> recorder = RunRecorder(RunRecord(Path("RUN/metrics.json")), Path("RUN/checkpoints"))
    >>> failure_reason(ValueError("bad tile\\nmore"))
    'ValueError: bad tile'
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from gigastream.streaming.memory import peak_rss_mib
from gigastream.train.files import RunRecord, describe_os_error

logger = logging.getLogger(__name__)


class RunInterrupted(KeyboardInterrupt):
    """The run was stopped by SIGTERM or SIGINT (its status says ``interrupted``)."""


def is_interrupt(exc: BaseException) -> bool:
    """A stop by the user or a signal (not a failure)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    return isinstance(exc, (KeyboardInterrupt, SIGTERMException))


def auc_words(auc: float | None) -> str:
    """A validation AUC for a log line: ``n/a`` with the reason where it is undefined.

    Example:
        >>> auc_words(0.91234), auc_words(float("nan"))
        ('0.912', 'n/a (one class among the validation slides)')
    """
    if auc is None or not math.isfinite(auc):
        return "n/a (one class among the validation slides)"
    return f"{auc:.3f}"


def scores_words(metrics: dict[str, Any], prefix: str = "val_") -> str:
    """A run's validation scores for a log line: a classifier's AUC and accuracy, a
    regression's Spearman, MAE and R² (the keys ``<prefix><metric>``).

    Example:
        >>> scores_words({"val_auc": 0.9, "val_accuracy": 0.75})
        'AUC 0.900, accuracy 0.750'
    """
    if f"{prefix}spearman" in metrics:
        from gigastream.train.regression import value_words

        return value_words(metrics, prefix)
    accuracy = metrics.get(f"{prefix}accuracy")
    shown = "n/a" if accuracy is None or not math.isfinite(accuracy) else f"{accuracy:.3f}"
    return f"AUC {auc_words(metrics.get(f'{prefix}auc'))}, accuracy {shown}"


def failure_reason(exc: BaseException) -> str:
    """One line for ``status: failed: ...``: the exception's type and first line."""
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RunRecorder(Callback):
    """Keeps ``metrics.json`` true: epochs as they finish, status on every way out."""

    def __init__(self, record: RunRecord, checkpoint_dir: Path) -> None:
        self.record = record
        self.checkpoint_dir = checkpoint_dir
        self.epoch_start = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not pl_module.epoch_log:
            return
        last = pl_module.epoch_log[-1]
        last.setdefault("seconds", time.perf_counter() - self.epoch_start)
        last.setdefault("peak_rss_mib", peak_rss_mib())
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            last.setdefault("peak_cuda_mib", torch.cuda.max_memory_allocated() / 2**20)
        trunk = getattr(pl_module.model, "trunk", None)  # a streamed model: its plan
        plan = getattr(trunk, "last_plan", None)
        self.record.update(
            epochs=pl_module.epoch_log,
            skipped_slides=dict(pl_module.skipped),
            plan=plan.to_dict() if plan is not None else None,
            peak_rss_mib=peak_rss_mib(),
        )
        logger.info(
            "epoch %d: train loss %.4f, val loss %.4f, val %s (%.0f s)",
            last["epoch"],
            last["train_loss"],
            last["val_loss"],
            scores_words(last),
            last["seconds"],
        )

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not trainer.is_global_zero:
            return
        self.record.data["skipped_slides"] = dict(pl_module.skipped)
        if is_interrupt(exception):
            path = self.checkpoint_dir / "interrupted.ckpt"
            with contextlib.suppress(Exception):
                trainer.save_checkpoint(path)
                logger.warning("interrupted: saved %s", path)
            self.record.update(status="interrupted")
        else:
            self.record.update(status=f"failed: {failure_reason(exception)}")


class Signals:
    """SIGTERM/SIGINT: inside Lightning's loop stop at the next step, elsewhere at once."""

    def __init__(self) -> None:
        self.trainer: L.Trainer | None = None
        self.count = 0

    def handler(self, signum, frame) -> None:
        self.count += 1
        if self.trainer is not None and self.count == 1:
            logger.warning("signal %d: stopping after the current step", signum)
            self.trainer._signal_connector.received_sigterm = True
            return
        raise RunInterrupted(f"stopped by signal {signum}")

    @contextlib.contextmanager
    def installed(self) -> Iterator[Signals]:
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for s in previous:
                signal.signal(s, self.handler)
        except ValueError:  # not the main thread: leave signals alone
            previous = {}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


__all__ = [
    "RunInterrupted",
    "RunRecorder",
    "Signals",
    "auc_words",
    "scores_words",
    "failure_reason",
    "is_interrupt",
]
