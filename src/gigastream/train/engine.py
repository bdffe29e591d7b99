"""Train, evaluate and predict with slide classifiers: the application layer on Lightning.

:func:`fit` trains a run described by a :class:`~gigastream.train.config.RunConfig` into a
folder ``RUN``::

    RUN/config.yaml            the resolved configuration (--config RUN/config.yaml re-runs it)
    RUN/metrics.json           status (running/completed/interrupted/failed: reason), epochs,
                               skipped slides, final validation metrics, timings
    RUN/checkpoints/last.ckpt  end of the latest epoch (resume point); best.ckpt: best
                               validation AUC; interrupted.ckpt: weights at SIGTERM/SIGINT
    RUN/predictions.csv        validation predictions of the best checkpoint
    RUN/training_curve.png, RUN/heatmaps/*.png, RUN/logs/ (CSV), RUN/tensorboard/

Everything is validated before anything is written (config, devices, manifest, labels,
splits, weights, the streaming plan of the first slide). A checkpoint is self-contained:
:func:`load_classifier` rebuilds the model from it alone, so :func:`evaluate_manifest` and
:func:`predict_slides` give the same probabilities for the same slide.

Example:
    >>> config = load_config("run.yaml", {"manifest": "data/manifest.csv"})  # doctest: +SKIP
    >>> metrics = fit(config, "runs/first")  # doctest: +SKIP
    >>> metrics["final"]["val_auc"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping

from gigastream.models.streaming_clam import StreamingCLAM
from gigastream.streaming.memory import peak_rss_mib
from gigastream.train.config import ConfigError, RunConfig, dump_yaml, load_config, to_dict
from gigastream.train.data import SlideExamples, check_labels, slide_loader, split_rows
from gigastream.train.files import (
    RunError,
    RunRecord,
    atomic_write_text,
    check_writable_folder,
    describe_os_error,
    load_checkpoint_file,
    lock_is_held,
    run_lock,
    write_json,
)
from gigastream.train.metrics import classification_metrics, mean_sd
from gigastream.train.module import MILClassifier
from gigastream.train.trainer import build_trainer, checkpoint_callbacks, resolve_device
from gigastream.wsi.manifest import Manifest, ManifestRow, read_manifest, read_splits
from gigastream.wsi.reader import SlideError, SlideReader

logger = logging.getLogger(__name__)


class RunInterrupted(KeyboardInterrupt):
    """The run was stopped by SIGTERM or SIGINT (its status says ``interrupted``)."""


# ----------------------------------------------------------------------------- preparation
@dataclass
class PreparedRun:
    """A validated run: everything :func:`fit` needs, computed before writing anything."""

    config: RunConfig
    manifest: Manifest
    class_names: list[str]
    train_rows: list[ManifestRow]
    val_rows: list[ManifestRow]
    accelerator: str
    devices: int | list[int]


def build_model(config: RunConfig, num_classes: int) -> StreamingCLAM:
    """The slide classifier of a run (the trunk's weights loaded as configured)."""
    model_cfg = replace(config.model, num_classes=num_classes, progress=False)
    try:
        return StreamingCLAM(model_cfg)
    except FileNotFoundError as exc:
        raise ConfigError(f"model.weights: {exc}") from None


def _check_plan(model: StreamingCLAM, rows: Sequence[ManifestRow], config: RunConfig) -> None:
    """Plan the streaming of the first readable slide (a tile too small fails here, early)."""
    from gigastream.wsi.source import SlideSource

    for row in rows[:3]:
        try:
            with SlideReader.open(row.path, mpp=row.mpp, backend=config.data.backend) as slide:
                shape = SlideSource(slide, mpp=config.data.mpp).shape
        except SlideError:
            continue  # reported when the slide is reached
        model.trunk.plan(tuple(shape), lazy_input=True)
        return


def prepare(config: RunConfig, check_plan: bool = True, check_device: bool = True) -> PreparedRun:
    """Validate a run without writing anything.

    ``check_device=False`` (``train --dry-run``) plans for the configured device even where
    it is not present (a GPU run planned on a laptop).

    Raises:
        ConfigError: a bad setting, label, split or device (one line each).
        ManifestError: bad manifest rows (all listed).
        StreamingError: the model cannot stream the slides (e.g. a tile too small).
    """
    config.validate()
    if config.manifest is None:
        raise ConfigError("no manifest: pass --manifest M.csv (or set manifest: in the config)")
    if check_device:
        accelerator, devices = resolve_device(config.train)
    else:
        accelerator = "gpu" if str(config.train.device).startswith("cuda") else "cpu"
        devices = 1
    manifest = read_manifest(config.manifest)
    class_names = check_labels([r.label for r in manifest.rows], config.class_names)
    manifest = Manifest(manifest.rows, class_names)
    train_rows, val_rows = split_rows(manifest, config)
    if check_plan:
        model = build_model(config, len(class_names))
        _check_plan(model, train_rows, config)
    return PreparedRun(config, manifest, class_names, train_rows, val_rows, accelerator, devices)


def resolved_config(prepared: PreparedRun) -> RunConfig:
    """The run's config with everything derived filled in (class names, paths absolute)."""
    config = prepared.config
    return replace(
        config,
        manifest=str(Path(config.manifest).resolve()),
        splits=str(Path(config.splits).resolve()) if config.splits else None,
        class_names=list(prepared.class_names),
        model=replace(config.model, num_classes=len(prepared.class_names)),
    )


# ----------------------------------------------------------------------------- lightning parts
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
        plan = getattr(pl_module.model.trunk, "last_plan", None)
        self.record.update(
            epochs=pl_module.epoch_log,
            skipped_slides=dict(pl_module.skipped),
            plan=plan.to_dict() if plan is not None else None,
            peak_rss_mib=peak_rss_mib(),
        )
        logger.info(
            "epoch %d: train loss %.4f, val loss %.4f, val AUC %s, accuracy %.3f (%.0f s)",
            last["epoch"],
            last["train_loss"],
            last["val_loss"],
            "n/a" if not math.isfinite(last["val_auc"]) else f"{last['val_auc']:.3f}",
            last["val_accuracy"],
            last["seconds"],
        )

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not trainer.is_global_zero:
            return
        self.record.data["skipped_slides"] = dict(pl_module.skipped)
        if _is_interrupt(exception):
            path = self.checkpoint_dir / "interrupted.ckpt"
            with contextlib.suppress(Exception):
                trainer.save_checkpoint(path)
                logger.warning("interrupted: saved %s", path)
            self.record.update(status="interrupted")
        else:
            self.record.update(status=f"failed: {_reason(exception)}")


def _is_interrupt(exc: BaseException) -> bool:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    return isinstance(exc, (KeyboardInterrupt, SIGTERMException))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Signals:
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
    def installed(self) -> Iterator[_Signals]:
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


# ----------------------------------------------------------------------------- fit
def _resumed_epoch(checkpoint: Path) -> int:
    """The (0-based) epoch that resuming from ``checkpoint`` trains first.

    Lightning creates the training iterator of a resumed run before it passes this epoch
    to the sampler, so the engine sets it first: otherwise the resumed epoch would visit
    the slides in the order of epoch 0 and the result would differ from an uninterrupted
    run's.
    """
    state = load_checkpoint_file(checkpoint)
    progress = state.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {})
    return int(progress.get("current", {}).get("processed", state.get("epoch", -1) + 1))


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
            ``resume`` with nothing to resume; ``out`` is a file.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: --out is a file, not a folder; choose another --out")
    last = out / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise RunError(
            f"{out}: nothing to resume ({last} not found); start the run without --resume"
        )
    if not resume and not overwrite and out.exists() and _has_run(out):
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
        prepared: the result of :func:`prepare` if already computed.
        callbacks: extra Lightning callbacks (e.g. a timer), after the engine's own.

    Returns:
        The contents of ``metrics.json``.

    Raises:
        ConfigError, ManifestError, StreamingError: invalid settings (nothing written).
        RunError: ``out`` unusable or in use, nothing to resume.
        RunInterrupted: SIGTERM/SIGINT (status ``interrupted``, ``interrupted.ckpt`` saved).
        NonFiniteLossError: the loss became NaN/inf (status ``failed: ...``).
    """
    prepared = prepared or prepare(config)
    config = resolved_config(prepared)
    out = Path(out).absolute()  # Lightning reports absolute checkpoint paths
    if _launched_rank() > 0:  # a DDP worker started by the launcher: rank 0 owns the folder
        return _fit_locked(prepared, config, out, resume, callbacks)
    check_out(out, resume, overwrite)
    if resume:
        _check_same_job(out, config)
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


def _check_same_job(out: Path, config: RunConfig) -> None:
    path = out / "config.yaml"
    if not path.is_file():
        return
    before = to_dict(load_config(path))
    now = to_dict(config)
    for volatile in ("progress", "threads", "device", "devices"):
        before["train"].pop(volatile, None)
        now["train"].pop(volatile, None)
    before["train"].pop("epochs", None)
    now["train"].pop("epochs", None)
    if before != now:
        raise RunError(
            f"{out}: --resume with settings that differ from {path}; resume with "
            f"--config {path} (only train.epochs may change), or start a new run"
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
    signals = _Signals()
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
        if _is_interrupt(exc) or isinstance(exc, SystemExit):
            record.update(status="interrupted", seconds=time.perf_counter() - start)
            if isinstance(exc, RunInterrupted):
                raise
            raise RunInterrupted("stopped by a signal") from exc
        if not str(record.data.get("status", "")).startswith("failed"):
            with contextlib.suppress(OSError):
                record.update(status=f"failed: {_reason(exc)}", seconds=time.perf_counter() - start)
        if isinstance(exc, OSError):
            raise RunError(describe_os_error(exc)) from None
        raise


def _train_and_report(
    prepared: PreparedRun,
    config: RunConfig,
    out: Path,
    resume: bool,
    record: RunRecord,
    signals: _Signals,
    start: float,
    extra_callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    train = config.train
    if train.threads:
        torch.set_num_threads(train.threads)
    data = replace(config.data, mask_dir=config.data.mask_dir or str(out / "masks"))
    torch.manual_seed(train.seed)
    model = build_model(config, len(prepared.class_names))
    module = MILClassifier(
        model, prepared.class_names, config.optim, data, train.seed, to_dict(config)
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
    train_loader = slide_loader(
        prepared.train_rows, prepared.class_names, data, train.seed, True, train.balanced
    )
    val_loader = slide_loader(prepared.val_rows, prepared.class_names, data)
    if resume:  # Lightning iterates the loader once before it sets the resumed epoch
        train_loader.sampler.set_epoch(_resumed_epoch(checkpoints / "last.ckpt"))
    calibration = train.bn_calibration
    if calibration is None:  # auto: random initialisation only
        calibration = 8 if config.model.weights is None else 0
    if calibration and not resume:
        calibrate_trunk(model, train_loader.dataset, calibration, data, train.seed)
    signals.trainer = trainer
    fit_start = time.perf_counter()
    try:
        trainer.fit(
            module,
            train_loader,
            val_loader,
            ckpt_path=str(checkpoints / "last.ckpt") if resume else None,
            weights_only=True,
        )
    finally:
        signals.trainer = None
    if trainer.interrupted:
        raise RunInterrupted("training was interrupted")
    fit_seconds = time.perf_counter() - fit_start
    if not trainer.is_global_zero:
        return record.data

    # the best checkpoint's model on the validation slides: predictions, heatmaps, curves
    best_path = Path(best.best_model_path) if best.best_model_path else checkpoints / "last.ckpt"
    state = load_checkpoint_file(best_path)
    module.load_state_dict(state["state_dict"])
    results = run_predictions(module, prepared.val_rows, config, data, progress=train.progress)
    final = summarize(results, prepared.class_names)
    write_predictions(out / "predictions.csv", results, prepared.class_names)
    epochs = module.epoch_log
    curve = None
    if epochs:
        from gigastream.viz.curves import plot_training_curve

        curve = plot_training_curve(epochs, out / "training_curve.png")
    heatmaps = write_heatmaps(
        results,
        prepared.val_rows,
        out / "heatmaps",
        train.heatmaps,
        prepared.class_names,
        module.model.output_stride,
        data,
    )
    trained_slides = sum(len(e["train_slide_losses"]) for e in epochs) or 1
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


def calibrate_trunk(
    model: StreamingCLAM,
    dataset: SlideExamples,
    slides: int,
    data,
    seed: int = 0,
    max_pixels: int = 1024 * 1024,
) -> int:
    """Recalibrate the trunk's BatchNorm statistics on training slides (see ``bn_calibration``).

    Each of ``slides`` training slides (seeded choice) contributes its whole input, or a
    centred crop of at most ``max_pixels`` for large slides, forwarded one slide at a
    time; the statistics are the average over slides.

    Returns:
        The number of slides used.
    """
    from gigastream.streaming.batchnorm import calibrate_batchnorm

    order = np.random.default_rng([seed, 11]).permutation(len(dataset)).tolist()

    def inputs() -> Iterator[torch.Tensor]:
        used = 0
        for index in order:
            if used == slides:
                return
            example = dataset[index]
            if example.error is not None:
                continue
            opened = example.open(data, "cpu")
            try:
                x = opened.x
                _, _, height, width = x.shape
                edge = int(math.sqrt(max_pixels))
                h, w = min(height, edge), min(width, edge)
                y0, x0 = (height - h) // 2, (width - w) // 2
                index_ = (slice(None), slice(None), slice(y0, y0 + h), slice(x0, x0 + w))
                crop = x[index_] if isinstance(x, torch.Tensor) else x.read(index_)
            except SlideError as exc:  # training will skip and list it too
                logger.warning("BatchNorm calibration skips %s: %s", example.slide_id, exc)
                continue
            finally:
                opened.close()
            used += 1
            yield crop.to(next(model.parameters()).device)

    was_training = model.training
    model.eval()
    try:
        count = calibrate_batchnorm(model.trunk.trunk, inputs())
    finally:
        model.train(was_training)
    logger.info("calibrated the trunk's BatchNorm statistics on %d training slides", count)
    return count


# ----------------------------------------------------------------------------- prediction
def run_predictions(
    module: MILClassifier,
    rows: Sequence[ManifestRow],
    config: RunConfig,
    data=None,
    progress: bool = False,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Per-slide results of a trained module: ``probs``, ``loss``, ``attention_map``, ``error``.

    Runs Lightning's predict loop (same precision as training, one device).
    """
    data = data or config.data
    if device is not None:
        config = replace(config, train=replace(config.train, device=device, devices=1))
    else:
        config = replace(config, train=replace(config.train, devices=1))
    accelerator, devices = resolve_device(config.train)
    module.data = data
    config = replace(config, train=replace(config.train, progress=progress))
    trainer = build_trainer(config.train, None, accelerator, devices, for_training=False)
    loader = slide_loader(rows, module.class_names, data)
    return list(trainer.predict(module, loader, return_predictions=True) or [])


def summarize(results: Sequence[dict[str, Any]], class_names: Sequence[str]) -> dict[str, Any]:
    """AUC, accuracy, loss and per-slide predictions of labelled results."""
    usable = [r for r in results if "probs" in r]
    labelled = [r for r in usable if r["label"] is not None]
    metrics: dict[str, Any] = {"auc": math.nan, "accuracy": math.nan, "loss": math.nan}
    if labelled:
        metrics.update(
            classification_metrics(
                [r["label"] for r in labelled], np.stack([r["probs"] for r in labelled])
            )
        )
        metrics["loss"] = float(np.mean([r["loss"] for r in labelled]))
    positive = np.array([r["probs"][-1] for r in usable]) if usable else np.zeros(0)
    return {
        "val_auc": metrics["auc"],
        "val_accuracy": metrics["accuracy"],
        "val_loss": metrics["loss"],
        "slides": len(labelled),
        "prob_range": [float(positive.min()), float(positive.max())] if len(positive) else None,
        "predictions": [
            {
                "slide_id": r["slide_id"],
                "label": None if r["label"] is None else class_names[r["label"]],
                "probs": [float(p) for p in r["probs"]],
            }
            for r in usable
        ],
        "skipped": {r["slide_id"]: r["error"] for r in results if "error" in r},
    }


def write_predictions(
    path: Path, results: Sequence[dict[str, Any]], class_names: Sequence[str]
) -> Path:
    """``predictions.csv``: ``slide_id``, ``label`` (empty when unknown), ``p_<class>`` columns."""
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["slide_id", "label", *[f"p_{name}" for name in class_names]])
    for r in results:
        if "probs" not in r:
            continue
        label = "" if r["label"] is None else class_names[r["label"]]
        writer.writerow([r["slide_id"], label, *[f"{float(p):.6f}" for p in r["probs"]]])
    return atomic_write_text(path, buffer.getvalue())


def lesion_mask_for(slide_path: str | Path, slide_id: str, lesion_dir: str | Path | None = None):
    """The ground-truth lesion mask of a slide, if one exists (else ``None``).

    Looked for as ``lesion_dir/<slide_id>.png`` or, for datasets written by ``gigastream
    synth``, ``<slide folder>/../lesions/<slide_id>.png``.
    """
    from gigastream.wsi.tissue import TissueMask

    candidates = []
    if lesion_dir is not None:
        candidates.append(Path(lesion_dir) / f"{slide_id}.png")
    candidates.append(Path(slide_path).parent.parent / "lesions" / f"{slide_id}.png")
    for path in candidates:
        if path.is_file():
            try:
                return TissueMask.load(path)
            except SlideError as exc:
                logger.warning("ignoring lesion mask %s: %s", path, exc)
    return None


def instance_cell_um(slide: SlideReader, mpp: float, output_stride: int) -> float:
    """Edge in microns of one instance (one cell of the attention map) of a slide read at ``mpp``.

    The slide is read from the level :meth:`SlideReader.resolution` picks and resampled;
    ``output_stride`` input pixels make one instance (``StreamingCLAM.output_stride``).
    """
    return output_stride * slide.resolution(mpp).mpp


def write_heatmaps(
    results: Sequence[dict[str, Any]],
    rows: Sequence[ManifestRow],
    out_dir: Path,
    count: int | None,
    class_names: Sequence[str],
    output_stride: int,
    data,
    tiff: bool = False,
    lesion_dir: str | Path | None = None,
) -> list[Path]:
    """Attention heatmap PNGs (and optionally pyramidal TIFFs) of up to ``count`` slides.

    Slides are chosen alternating between classes; lesion contours are drawn when a
    ground-truth mask exists (:func:`lesion_mask_for`); the title gives the slide's label
    and p(last class).
    """
    from gigastream.viz import heatmap as hm

    by_id = {r.slide_id: r for r in rows}
    usable = [r for r in results if "attention_map" in r]
    if count is not None:
        by_class: dict[Any, list[dict[str, Any]]] = {}
        for r in usable:
            by_class.setdefault(r["label"], []).append(r)
        chosen: list[dict[str, Any]] = []
        while len(chosen) < min(count, len(usable)):
            for group in by_class.values():
                if group and len(chosen) < count:
                    chosen.append(group.pop(0))
        usable = chosen
    if not usable:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    positive = class_names[-1]
    paths = []
    for r in usable:
        row = by_id[r["slide_id"]]
        label = None if r["label"] is None else class_names[r["label"]]
        lesions = lesion_mask_for(row.path, row.slide_id, lesion_dir)
        with SlideReader.open(row.path, mpp=row.mpp, backend=data.backend) as slide:
            cell_um = instance_cell_um(slide, data.mpp, output_stride)
            title = hm.slide_title(r["slide_id"], label, float(r["probs"][-1]), positive)
            paths.append(
                hm.attention_heatmap_png(
                    slide,
                    r["attention_map"],
                    out_dir / f"{r['slide_id']}.png",
                    cell_um=cell_um,
                    title=title,
                    contours=lesions,
                )
            )
            if tiff:
                paths.append(
                    hm.attention_heatmap_tiff(
                        slide,
                        r["attention_map"],
                        out_dir / f"{r['slide_id']}.tif",
                        cell_um=cell_um,
                        contours=lesions,
                    )
                )
    return paths


# ----------------------------------------------------------------------------- checkpoints
def load_classifier(checkpoint: str | Path) -> tuple[MILClassifier, RunConfig]:
    """Rebuild a trained classifier from its checkpoint alone (``weights_only=True``).

    Raises:
        RunError: a missing, corrupt or foreign checkpoint (the message names the file).
    """
    state = load_checkpoint_file(checkpoint)
    saved = state.get("gigastream")
    if not isinstance(saved, dict) or "config" not in saved:
        raise RunError(f"{checkpoint}: not a gigastream checkpoint (no gigastream section)")
    try:
        config = load_config(saved["config"], source=f"{checkpoint} (stored config)")
    except ConfigError as exc:
        raise RunError(str(exc)) from None
    class_names = list(saved["class_names"])
    config = replace(config, model=replace(config.model, weights=None))  # weights come from ckpt
    model = build_model(config, len(class_names))
    module = MILClassifier(
        model, class_names, config.optim, config.data, config.train.seed, saved["config"]
    )
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise RunError(f"{checkpoint}: weights do not fit the stored model: {exc}") from None
    module.eval()
    return module, config


def _slide_rows(slides: Sequence[str | Path]) -> list[ManifestRow]:
    rows, seen = [], set()
    for slide in slides:
        path = Path(slide)
        if not path.exists():
            raise ConfigError(f"{path}: slide not found")
        slide_id = path.stem
        if slide_id in seen:
            raise ConfigError(f"two slides are named {slide_id!r}; give each slide once")
        seen.add(slide_id)
        rows.append(ManifestRow(slide_id, path.resolve(), "", slide_id))
    return rows


def _prediction_config(config: RunConfig, device: str | None, workers: int | None) -> RunConfig:
    train = replace(config.train, device=device or "auto", devices=1, progress=False)
    data = config.data if workers is None else replace(config.data, num_workers=workers)
    config = replace(config, train=train, data=data)
    resolve_device(config.train)  # validate before any output
    return config


def evaluate_manifest(
    checkpoint: str | Path,
    manifest: str | Path,
    out: str | Path,
    device: str | None = None,
    progress: bool = True,
    num_workers: int | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on every slide of a manifest: ``metrics.json`` + ``predictions.csv``.

    Returns:
        The metrics (``auc``, ``accuracy``, ``loss``, per-slide predictions, skipped slides).
    """
    module, config = load_classifier(checkpoint)
    config = _prediction_config(config, device, num_workers)
    rows = read_manifest(manifest).rows
    check_labels([r.label for r in rows], module.class_names)
    out = check_writable_folder(out)
    data = replace(config.data, mask_dir=str(out / "masks"))
    results = run_predictions(module, rows, config, data, progress=progress)
    final = summarize(results, module.class_names)
    metrics = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "manifest": str(Path(manifest).resolve()),
        "auc": final["val_auc"],
        "accuracy": final["val_accuracy"],
        "loss": final["val_loss"],
        "slides": final["slides"],
        "class_names": module.class_names,
        "predictions": final["predictions"],
        "skipped_slides": final["skipped"],
    }
    write_predictions(out / "predictions.csv", results, module.class_names)
    write_json(out / "metrics.json", metrics)
    return metrics


def predict_slide_files(
    checkpoint: str | Path,
    slides: Sequence[str | Path],
    out: str | Path,
    device: str | None = None,
    progress: bool = True,
    heatmaps: bool = False,
    tiff: bool = False,
    lesion_dir: str | Path | None = None,
    num_workers: int | None = None,
) -> dict[str, Any]:
    """Class probabilities (``predictions.csv``) and optionally heatmaps of slide files.

    Returns:
        ``predictions``, ``skipped_slides`` and the written ``heatmaps``.
    """
    module, config = load_classifier(checkpoint)
    config = _prediction_config(config, device, num_workers)
    rows = _slide_rows(slides)
    out = check_writable_folder(out)
    data = replace(config.data, mask_dir=str(out / "masks"))
    results = run_predictions(module, rows, config, data, progress=progress)
    final = summarize(results, module.class_names)
    write_predictions(out / "predictions.csv", results, module.class_names)
    paths = []
    if heatmaps:
        paths = write_heatmaps(
            results,
            rows,
            out,
            None,
            module.class_names,
            module.model.output_stride,
            data,
            tiff=tiff,
            lesion_dir=lesion_dir,
        )
    return {
        "class_names": module.class_names,
        "predictions": final["predictions"],
        "skipped_slides": final["skipped"],
        "heatmaps": [str(p) for p in paths],
    }


# ----------------------------------------------------------------------------- cross-validation
def fit_folds(config: RunConfig, out: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Train every fold of ``config.splits`` into ``out/fold_K``; mean ± sd of the best AUCs.

    Writes ``out/cv_metrics.json``.
    """
    if config.splits is None:
        raise ConfigError("--folds all needs --splits S.csv (written by gigastream splits)")
    folds = sorted(set(read_splits(config.splits).values()))
    for fold in folds:  # validate every fold before training any
        prepare(replace(config, fold=fold), check_plan=fold == folds[0])
    out = check_writable_folder(out)
    rows = []
    for fold in folds:
        metrics = fit(replace(config, fold=fold), out / f"fold_{fold}", **kwargs)
        best = max((e["val_auc"] or -1.0 for e in metrics["epochs"]), default=math.nan)
        rows.append({"fold": fold, "val_auc": metrics["final"]["val_auc"], "best_epoch_auc": best})
    mean, sd = mean_sd([r["val_auc"] for r in rows])
    summary = {"folds": rows, "val_auc_mean": mean, "val_auc_sd": sd}
    write_json(out / "cv_metrics.json", summary)
    return summary


__all__ = [
    "PreparedRun",
    "RunInterrupted",
    "build_model",
    "build_trainer",
    "evaluate_manifest",
    "fit",
    "fit_folds",
    "instance_cell_um",
    "lesion_mask_for",
    "load_classifier",
    "predict_slide_files",
    "prepare",
    "resolve_device",
    "run_predictions",
    "summarize",
    "write_heatmaps",
    "write_predictions",
]
