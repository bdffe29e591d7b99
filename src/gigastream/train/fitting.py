"""Train a run into its folder: the run folder's rules, Lightning's fit, the final report.

:func:`fit` trains a run described by a :class:`~gigastream.train.config.RunConfig` into a
folder ``RUN``::

    RUN/config.yaml            the resolved configuration (--config RUN/config.yaml re-runs it)
    RUN/metrics.json           status (running/completed/interrupted/failed: reason), epochs,
                               skipped slides, final validation metrics, timings
    RUN/checkpoints/last.ckpt  end of the latest epoch (resume point); best.ckpt: best
                               validation AUC; interrupted.ckpt: weights at SIGTERM/SIGINT
    RUN/predictions.csv        validation predictions of the best checkpoint
    RUN/training_curve.png, RUN/heatmaps/*.png, RUN/logs/ (CSV), RUN/tensorboard/

Everything is validated before anything is written (:func:`~gigastream.train.preparation.prepare`,
:func:`check_out` and, resuming, :func:`check_resumable`); one run holds a folder at a time
(its lock); a resumed run ends with the weights of one that was never stopped. A run folder
can be moved or copied: ``--out`` is resolved once, the paths in ``metrics.json`` are
relative to it and the checkpoints' stored paths are re-rooted on resume
(:class:`~gigastream.train.trainer.RunCheckpoint`). Every way out leaves a true status.

Example:
    >>> config = load_config("run.yaml", {"manifest": "data/manifest.csv"})  # doctest: +SKIP
    >>> metrics = fit(config, "runs/first")  # doctest: +SKIP
    >>> metrics["final"]["val_auc"]  # doctest: +SKIP
    0.91
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader

from gigastream.models.streaming_mil import StreamingMIL, spill_folder
from gigastream.streaming.memory import peak_rss_mib
from gigastream.train.calibration import calibrate_model
from gigastream.train.config import DataConfig, RunConfig
from gigastream.train.config_files import dump_yaml, load_config, to_dict
from gigastream.train.data import run_patches
from gigastream.train.files import (
    RunError,
    RunRecord,
    check_writable_folder,
    describe_os_error,
    load_checkpoint_file,
    lock_is_held,
    run_lock,
)
from gigastream.train.heatmaps import write_heatmaps
from gigastream.train.loaders import slide_loader
from gigastream.train.module import MILClassifier
from gigastream.train.plan_check import check_compute, warn_costly_plan
from gigastream.train.prediction import (
    prefixed,
    run_predictions,
    store_threshold,
    summarize,
    validation_threshold,
    write_predictions,
)
from gigastream.train.preparation import PreparedRun, build_model, prepare, resolved_config
from gigastream.train.recorder import (
    RunInterrupted,
    RunRecorder,
    Signals,
    failure_reason,
    is_interrupt,
)
from gigastream.train.selection import parse_target
from gigastream.train.trainer import build_trainer, checkpoint_callbacks
from gigastream.wsi.manifest import ManifestRow

logger = logging.getLogger(__name__)


def _finished_epochs(state: dict[str, Any]) -> int:
    """The epochs a checkpoint's run has finished: the (0-based) epoch resuming trains first."""
    progress = state.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {})
    return int(progress.get("current", {}).get("processed", state.get("epoch", -1) + 1))


def _resumed_epoch(checkpoint: Path) -> int:
    """The (0-based) epoch that resuming from ``checkpoint`` trains first.

    Lightning creates the training iterator of a resumed run before it passes this epoch
    to the sampler, so the engine sets it first: otherwise the resumed epoch would visit
    the slides in the order of epoch 0 and the result would differ from an uninterrupted
    run's.
    """
    return _finished_epochs(load_checkpoint_file(checkpoint))


def _clean_temporaries(folder: Path) -> None:
    for tmp in list(folder.glob(".*.tmp")) + list(folder.glob("checkpoints/.*.tmp")):
        with contextlib.suppress(OSError):
            tmp.unlink()


def _has_run(out: Path) -> bool:
    return any((out / name).exists() for name in ("config.yaml", "metrics.json", "checkpoints"))


def check_out(out: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a run into ``out`` that would clobber or collide (nothing written).

    Raises:
        RunError: ``out`` holds a run and neither ``resume`` nor ``overwrite`` is set;
            ``resume`` with nothing to resume; ``out`` is a file. The message suggests
            ``--resume`` only where there is a checkpoint to resume from.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: --out is a file, not a folder; choose another --out")
    last = out / "checkpoints" / "last.ckpt"
    has_run = out.exists() and _has_run(out)
    if has_run and not last.is_file() and (resume or not overwrite) and lock_is_held(out):
        raise RunError(
            f"{out} holds a run that another gigastream process is training (in its first "
            "epoch): wait for it to finish or choose another --out"
        )
    if resume and not last.is_file():
        if has_run:  # stopped before its first epoch ended: there is nothing to resume
            raise RunError(
                f"{out}: nothing to resume ({last} not found: the run stopped before its "
                "first epoch ended); start it again with --overwrite instead of --resume"
            )
        raise RunError(
            f"{out}: nothing to resume ({last} not found); start the run without --resume"
        )
    if not resume and not overwrite and has_run:
        if not last.is_file():
            raise RunError(
                f"{out} already holds a run without a checkpoint to resume from (it stopped "
                "before its first epoch ended): pass --overwrite to replace it, or choose "
                "another --out"
            )
        status = RunRecord.load(out / "metrics.json").data.get("status")
        if status == "running" and not lock_is_held(out):
            raise RunError(
                f"{out} holds a run that stopped without finishing (status 'running' but no "
                "process holds its lock: killed, e.g. out of memory?): pass --resume to "
                "continue it from its last checkpoint, --overwrite to replace it, or choose "
                "another --out"
            )
        raise RunError(
            f"{out} already holds a run: pass --resume to continue it, --overwrite to replace "
            "it, or choose another --out"
        )


def fit(
    config: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    prepared: PreparedRun | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train a run into ``out`` (layout in the module docstring).

    Args:
        config: the run.
        out: the run folder.
        resume: continue from ``out/checkpoints/last.ckpt`` (the end of the latest
            finished epoch); the result equals an uninterrupted run's.
        overwrite: replace a finished or failed run in ``out``.
        prepared: the result of :func:`~gigastream.train.preparation.prepare` if already
            computed.
        callbacks: extra Lightning callbacks (e.g. a timer), after the engine's own.

    Returns:
        The contents of ``metrics.json``.

    Raises:
        ConfigError, ManifestError, StreamingError: invalid settings (nothing written).
        RunError: ``out`` unusable or in use, nothing to resume, a resume that cannot go on
            (:func:`check_resumable`; nothing written); a write failed (the file named).
        RunInterrupted: SIGTERM/SIGINT (status ``interrupted``, ``interrupted.ckpt`` saved).
        NonFiniteLossError: the loss became NaN/inf (status ``failed: ...``).
    """
    prepared = prepared or prepare(config)
    config = resolved_config(prepared)
    # resolved once (no "..", no symlinks): Lightning reports checkpoint paths resolved
    out = Path(out).resolve()
    if _launched_rank() > 0:  # a DDP worker started by the launcher: rank 0 owns the folder
        return _fit_locked(prepared, config, out, resume, callbacks)
    if prepared.plan is not None:  # a costly plan is said before the run folder is made
        warn_costly_plan(prepared.plan, config.model)
    check_out(out, resume, overwrite)
    if resume:  # everything checked before a file of the run is touched
        check_resumable(out, config, prepared)
    check_writable_folder(out)
    with run_lock(out):
        _clean_temporaries(out)
        if overwrite and not resume:
            for name in ("checkpoints", "heatmaps"):
                for old in (out / name).glob("*") if (out / name).is_dir() else []:
                    with contextlib.suppress(OSError):
                        old.unlink()
        return _fit_locked(prepared, config, out, resume, callbacks)


def _launched_rank() -> int:
    """This process's global rank when started by a distributed launcher (else 0)."""
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        value = os.environ.get(name)
        if value not in (None, "", "0"):
            return int(value)
    return 0


#: The settings a resumed run may change: how long and where it runs and what it reports,
#: not its model, data, split or optimisation.
RESUMABLE = (
    "train.epochs",
    "train.progress",
    "train.threads",
    "train.device",
    "train.devices",
    "train.heatmaps",
    "data.num_workers",
    "data.cache_bytes",
)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"seed": 0}}`` -> ``{"train.seed": 0}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resumable(out: str | Path, config: RunConfig, prepared: PreparedRun) -> None:
    """Refuse a ``--resume`` of the run in ``out`` that could not go on (nothing written).

    The run's settings are those its ``last.ckpt`` was trained with (``config.yaml`` for a
    checkpoint without them); only :data:`RESUMABLE` may differ.

    Raises:
        RunError: ``last.ckpt`` unreadable; settings that change the run (each named with
            its old and new value); another validation split; ``train.epochs`` not more
            than the epochs the run has finished (or the run already finished them).
    """
    out = Path(out)
    last = out / "checkpoints" / "last.ckpt"
    state = load_checkpoint_file(last)
    saved = state.get("gigastream")
    stored = saved.get("config") if isinstance(saved, dict) else None
    source = f"{last}"
    if stored is None and (out / "config.yaml").is_file():
        stored, source = out / "config.yaml", str(out / "config.yaml")
    if stored is not None:
        _check_same_settings(out, load_config(stored, source=source), config, source)
    record = RunRecord.load(out / "metrics.json").data
    _check_same_split(out, record, prepared)
    finished, requested = _finished_epochs(state), config.train.epochs
    status = record.get("status")
    if requested < finished or (requested == finished and status == "completed"):
        more = f"pass --epochs {finished + 1} or more to train it on"
        if requested < finished:
            raise RunError(
                f"{out}: --epochs {requested}, but the run has finished {finished} epochs: {more}"
            )
        raise RunError(
            f"{out}: the run already finished its {finished} epochs (status completed): "
            f"{more}, or use its outputs as they are"
        )


def _check_same_settings(out: Path, before: RunConfig, now: RunConfig, source: str) -> None:
    old, new = _flat(to_dict(before)), _flat(to_dict(now))
    unset = "<unset>"
    changed = [
        f"{key} {old.get(key, unset)} -> {new.get(key, unset)}"
        for key in sorted(set(old) | set(new))
        if key not in RESUMABLE and old.get(key, unset) != new.get(key, unset)
    ]
    if not changed:
        return
    listed = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
    config_yaml = out / "config.yaml"
    fix = f"--config {config_yaml}" if config_yaml.is_file() else "drop the flags that change them"
    raise RunError(
        f"{out}: --resume with settings that differ from the run's ({source}): {listed}; "
        f"resume with the run's settings ({fix}; only {', '.join(RESUMABLE)} may change), "
        "or start a new run in another --out"
    )


def _check_same_split(out: Path, record: dict[str, Any], prepared: PreparedRun) -> None:
    for name, rows in (("train", prepared.train_rows), ("val", prepared.val_rows)):
        before = record.get(f"{name}_slides")
        now = [r.slide_id for r in rows]
        if before is not None and sorted(before) != sorted(now):
            differ = sorted(set(before) ^ set(now))
            raise RunError(
                f"{out}: --resume with other {name} slides than the run's ({len(differ)} "
                f"differ, e.g. {', '.join(differ[:3])}): the manifest or splits changed; "
                "resume with the run's manifest and splits, or start a new run in another --out"
            )


def _fit_locked(
    prepared: PreparedRun,
    config: RunConfig,
    out: Path,
    resume: bool,
    extra_callbacks: Sequence[Callback] = (),
) -> dict:
    start = time.perf_counter()
    record = RunRecord.load(out / "metrics.json") if resume else RunRecord(out / "metrics.json")
    record.data.update(
        status="running",
        pid=os.getpid(),
        config=to_dict(config),
        class_names=prepared.class_names,
        train_slides=[r.slide_id for r in prepared.train_rows],
        val_slides=[r.slide_id for r in prepared.val_rows],
    )
    record.data.setdefault("epochs", [])
    record.data.setdefault("skipped_slides", {})
    record.enabled = _launched_rank() == 0
    signals = Signals()
    try:
        with signals.installed():
            record.save()
            if record.enabled:
                dump_yaml(config, out / "config.yaml")
            result = _train_and_report(
                prepared, config, out, resume, record, signals, start, extra_callbacks
            )
        return result
    except BaseException as exc:
        if is_interrupt(exc) or isinstance(exc, SystemExit):
            _record_way_out(record, "interrupted", start)
            if isinstance(exc, RunInterrupted):
                raise
            raise RunInterrupted("stopped by a signal") from exc
        status = str(record.data.get("status", ""))  # the recorder's reason, if it gave one
        if isinstance(exc, OSError):  # named with the file, else the run folder
            status = f"failed: {describe_os_error(exc, folder=out)}"
        elif not status.startswith("failed"):
            status = f"failed: {failure_reason(exc)}"
        _record_way_out(record, status, start)
        if isinstance(exc, OSError):
            raise RunError(describe_os_error(exc, folder=out)) from None
        raise


def _record_way_out(record: RunRecord, status: str, start: float) -> None:
    """Write the status a run ends with; a record that cannot be written (a full disk) is
    tried again once and otherwise left (the error that ended the run is raised)."""
    record.data.update(status=status, seconds=time.perf_counter() - start)
    for _ in range(2):
        record.save()  # does not raise for a way-out status (RunRecord.save)
        if record.saved or not record.enabled:
            return


@dataclass
class _Parts:
    """The Lightning pieces of one run (made by :func:`_build_parts`)."""

    module: MILClassifier
    trainer: L.Trainer
    best: ModelCheckpoint
    train_loader: DataLoader
    val_loader: DataLoader
    data: DataConfig


def _train_and_report(
    prepared: PreparedRun,
    config: RunConfig,
    out: Path,
    resume: bool,
    record: RunRecord,
    signals: Signals,
    start: float,
    extra_callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    parts = _build_parts(prepared, config, out, resume, record, extra_callbacks)
    fit_seconds = _train(parts, out / "checkpoints", resume, signals)
    if not parts.trainer.is_global_zero:
        return record.data
    return _report(prepared, config, out, parts, record, start, fit_seconds)


def _build_parts(
    prepared: PreparedRun,
    config: RunConfig,
    out: Path,
    resume: bool,
    record: RunRecord,
    extra_callbacks: Sequence[Callback],
) -> _Parts:
    """The module, its trainer (checkpoints, recorder, early stopping) and the loaders; the
    trunk's BatchNorm calibrated when configured."""
    train = config.train
    if train.threads:
        torch.set_num_threads(train.threads)
    data = replace(config.data, mask_dir=config.data.mask_dir or str(out / "masks"))
    torch.manual_seed(train.seed)
    model = build_model(config, len(prepared.class_names))
    if isinstance(model, StreamingMIL):  # beyond the input cache: the run folder's cache/
        model.trunk.input_spill = spill_folder(config.model.input_spill, out)
    if isinstance(model, StreamingMIL) and prepared.plan is None and _launched_rank() == 0:
        check_compute(model, prepared, config)  # not planned by prepare: before any slide is read
    module = MILClassifier(
        model, prepared.class_names, config.optim, data, train.seed, to_dict(config), config.target
    )
    checkpoints = out / "checkpoints"
    best, last = checkpoint_callbacks(checkpoints)
    callbacks: list[Callback] = [best, last, RunRecorder(record, checkpoints)]
    if train.early_stopping_patience:
        callbacks.append(
            EarlyStopping(monitor="val_score", mode="max", patience=train.early_stopping_patience)
        )
    callbacks.extend(extra_callbacks)
    trainer = build_trainer(
        config.train,
        out,
        prepared.accelerator,
        prepared.devices,
        callbacks,
        grad_clip=config.optim.grad_clip,
    )
    patches = run_patches(config)
    train_loader = slide_loader(
        prepared.train_rows,
        prepared.class_names,
        data,
        train.seed,
        True,
        train.balanced,
        patches,
        strata=_strata(prepared.train_rows, config),
    )
    val_loader = slide_loader(prepared.val_rows, prepared.class_names, data, patches=patches)
    if resume:  # Lightning iterates the loader once before it sets the resumed epoch
        train_loader.sampler.set_epoch(_resumed_epoch(checkpoints / "last.ckpt"))
    else:
        calibrate_model(model, config, train_loader.dataset, data)
    return _Parts(module, trainer, best, train_loader, val_loader, data)


def _strata(rows: Sequence[ManifestRow], config: RunConfig) -> list[int | None] | None:
    """What a balanced slide order interleaves: a classifier's classes (``None``), a
    regression's slides above ``target.positive_above`` and the others."""
    if config.task != "regression":
        return None
    values = [parse_target(row.label) for row in rows]
    return [None if v is None else int(v > config.target.positive_above) for v in values]


def _train(parts: _Parts, checkpoints: Path, resume: bool, signals: Signals) -> float:
    """Lightning's fit (from ``last.ckpt`` when resuming); its seconds."""
    signals.trainer = parts.trainer
    fit_start = time.perf_counter()
    try:
        parts.trainer.fit(
            parts.module,
            parts.train_loader,
            parts.val_loader,
            ckpt_path=str(checkpoints / "last.ckpt") if resume else None,
            weights_only=True,
        )
    finally:
        signals.trainer = None
    if parts.trainer.interrupted:
        raise RunInterrupted("training was interrupted")
    return time.perf_counter() - fit_start


def _model_words(config: RunConfig) -> str:
    """The model of a run in a few words, for the training curve's title."""
    model = config.model
    if model.kind == "patches":
        return (
            f"{config.patches.encoder.name} on patches ({config.patches.strategy}) + {model.head}"
        )
    if model.kind == "features":
        return f"cached features + {model.head}"
    return f"streamed {model.arch} + {model.head}"


def _report(
    prepared: PreparedRun,
    config: RunConfig,
    out: Path,
    parts: _Parts,
    record: RunRecord,
    start: float,
    fit_seconds: float,
) -> dict[str, Any]:
    """The best checkpoint's model on the validation slides: predictions, curve, heatmaps,
    and ``metrics.json`` completed."""
    checkpoints, module = out / "checkpoints", parts.module
    best = parts.best.best_model_path  # inside ``checkpoints`` (RunCheckpoint re-roots it)
    best_path = checkpoints / Path(best).name if best else checkpoints / "last.ckpt"
    state = load_checkpoint_file(best_path)
    module.load_state_dict(state["state_dict"])
    results = run_predictions(
        module, prepared.val_rows, config, parts.data, progress=config.train.progress
    )
    # the decision threshold chosen on validation (Youden's J), for evaluate to report
    threshold = validation_threshold(results, prepared.class_names)
    store_threshold(best_path, threshold)
    final = prefixed(summarize(results, prepared.class_names), "val_")
    final["val_threshold"] = threshold
    write_predictions(out / "predictions.csv", results, prepared.class_names)
    epochs = module.epoch_log
    curve = None
    if epochs:
        from gigastream.viz.curves import loss_terms, plot_training_curve

        curve = plot_training_curve(
            epochs,
            out / "training_curve.png",
            title=f"{out.name}: {_model_words(config)}",
            best=int(state.get("epoch", 0)) + 1,
            loss=loss_terms(getattr(module.model, "head", None)),
        )
    heatmaps = write_heatmaps(
        module, results, prepared.val_rows, out / "heatmaps", parts.data, config.train.heatmaps
    )
    trained_slides = sum(len(e["train_slide_losses"]) for e in epochs) or 1
    with contextlib.suppress(FileNotFoundError):  # the run went on from where it was stopped
        (checkpoints / "interrupted.ckpt").unlink()
    record.update(
        status="completed",
        epochs=epochs,
        skipped_slides=dict(module.skipped),
        best_checkpoint=str(best_path.relative_to(out)),
        best_epoch=int(state.get("epoch", 0)) + 1,
        final=final,
        seconds=time.perf_counter() - start,
        fit_seconds=fit_seconds,
        seconds_per_train_slide=fit_seconds / trained_slides,
        peak_rss_mib=peak_rss_mib(),
        outputs={
            "config": "config.yaml",
            "checkpoints": sorted(str(p.relative_to(out)) for p in checkpoints.glob("*.ckpt")),
            "predictions": "predictions.csv",
            "training_curve": str(curve.relative_to(out)) if curve else None,
            "heatmaps": [str(p.relative_to(out)) for p in heatmaps],
            "logs": "logs",
        },
    )
    return record.data


__all__ = [
    "RESUMABLE",
    "check_out",
    "check_resumable",
    "fit",
]
