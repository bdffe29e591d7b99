"""The MNIST-bags experiment (the QMNIST experiment of Andersson et al., 2022) on the engine.

The bag model is the project's one patch-bag model, :class:`~gigastream.models.patch_mil.
PatchMIL` (``model.kind: patches``), configured for digits: a ``small_cnn`` encoder on
1-channel 28 px "patches" (uint8 pixels, MNIST's mean and std) and a MIL head (gated
attention by default), trained end to end on bags of MNIST digits (positive: contains
nines) with one of the strategies ``baseline``, ``accumulate`` or ``sample``. The model is
built by the engine's :func:`~gigastream.train.preparation.build_model` from the
config's ``model`` and ``patches`` sections, the same sections as a slide run's. Training
runs on the project's one engine: :class:`~gigastream.train.module.MILClassifier` in the
``Trainer`` of :func:`~gigastream.train.trainer.build_trainer`, one bag per step, ``train.
accumulate_grad_batches`` bags per optimiser step. The best checkpoint
(:func:`~gigastream.train.trainer.checkpoint_callbacks`: the best validation AUC, ties to the
lower validation loss) is evaluated on the test bags. A run folder holds
``checkpoints/best.ckpt``, ``test_predictions.csv`` and ``metrics.json``
(:class:`~gigastream.train.files.RunRecord`). Everything is measured in the running process:
training time, time per bag and the peak resident memory (``ru_maxrss``), so run each
configuration in a fresh process (``run.py`` does) to compare peak memory.

Example (with ``experiments/mnist_bags`` on ``sys.path``, as for ``run.py``):
    >>> from bags import MnistBagsConfig, run_mnist_bags  # doctest: +SKIP
    >>> record = run_mnist_bags(MnistBagsConfig(data="../shared/data/mnist"), "out/bags")  # doctest: +SKIP
    >>> record["test_auc"], record["best_epoch"]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from mnist import BagsConfig, BagSet, load_digits, make_bags, split_pools
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from gigastream import precision as precisions
from gigastream.models.encoders import EncoderConfig
from gigastream.models.patch_mil import PatchConfig, PatchMIL
from gigastream.models.streaming_mil import StreamingMILConfig
from gigastream.streaming.memory import current_rss_mib, peak_rss_mib, reset_peak_rss
from gigastream.train.config import ConfigError, OptimConfig, RunConfig, TrainConfig
from gigastream.train.config_files import to_dict
from gigastream.train.data import example_loader
from gigastream.train.files import RunRecord, check_writable_folder, load_checkpoint_file
from gigastream.train.metrics import classification_metrics
from gigastream.train.module import MILClassifier
from gigastream.train.timing import StepTimer
from gigastream.train.trainer import build_trainer, checkpoint_callbacks, resolve_device

#: The experiment's logger (``run.py`` shows its INFO lines).
logger = logging.getLogger("experiments.mnist_bags")

CLASS_NAMES = ("negative", "positive")

#: mean and standard deviation of MNIST pixel values scaled to [0, 1]
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


# ----------------------------------------------------------------------------- examples
@dataclass
class BagInput:
    """An opened bag: ``x`` is the ``(N, *instance_shape)`` tensor; :meth:`close` does nothing."""

    x: Tensor

    def close(self) -> None:
        """Nothing to release (the bag is in memory)."""


@dataclass
class BagExample:
    """One bag as the engine's training step receives it (like a slide example).

    Attributes:
        slide_id: the bag's id, e.g. ``bag_0007`` (the engine names examples ``slide_id``).
        label: class index, or ``None`` when unknown.
        bag: ``(N, *instance_shape)`` instances, e.g. uint8 ``(N, 1, 28, 28)`` digits.
        error: always ``None`` (a bag in memory cannot fail to open).
    """

    slide_id: str
    label: int | None
    bag: Tensor
    error: str | None = None

    def open(self, data: Any = None, device: torch.device | str = "cpu") -> BagInput:
        """The bag on ``device`` (``data``, the slides' read settings, is not used)."""
        return BagInput(self.bag.to(device))


class BagExamples(Dataset):
    """Bags as :class:`BagExample` s: ``examples[i]`` has id ``bag_{i:04d}``.

    Args:
        bags: ``(bag, label)`` pairs, e.g. a :class:`mnist.BagSet`.
    """

    def __init__(self, bags: Sequence[tuple[Tensor, int]]) -> None:
        self.bags = bags

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, i: int) -> BagExample:
        bag, label = self.bags[i]
        return BagExample(f"bag_{i:04d}", int(label), bag)


def bag_loader(
    bags: Sequence[tuple[Tensor, int]], seed: int = 0, shuffle: bool = False
) -> DataLoader:
    """One bag per step, in the main process (bags are in memory), seeded order per epoch."""
    return example_loader(BagExamples(bags), num_workers=0, seed=seed, shuffle=shuffle)


# ----------------------------------------------------------------------------- training
@dataclass
class BagRun:
    """A finished :func:`train_bags`.

    Attributes:
        module: the engine's module, holding the best checkpoint's weights (its
            ``epoch_log`` has every epoch).
        trainer: the Lightning ``Trainer`` it was trained with.
        timer: training-step and validation times.
        best_checkpoint: ``OUT/checkpoints/best.ckpt``.
        best_epoch: the epoch of the best checkpoint (1-based).
    """

    module: MILClassifier
    trainer: L.Trainer
    timer: StepTimer
    best_checkpoint: Path
    best_epoch: int

    @property
    def best_val_auc(self) -> float:
        """The validation AUC of the best epoch (NaN if undefined)."""
        return float(self.module.epoch_log[self.best_epoch - 1]["val_auc"])


def train_bags(
    model: PatchMIL,
    train_set: Sequence[tuple[Tensor, int]],
    val_set: Sequence[tuple[Tensor, int]],
    *,
    optim: OptimConfig,
    train: TrainConfig,
    out: str | Path,
    run_config: dict[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
) -> BagRun:
    """Train a bag model with the engine and load its best checkpoint's weights.

    Args:
        model: the bag model (its parameters already in
            :func:`~gigastream.precision.param_dtype` of ``train.precision``).
        train_set: training ``(bag, label)`` pairs, visited in a new seeded order every epoch.
        val_set: validation pairs (the best checkpoint is chosen on them).
        optim: optimiser settings (AdamW; ``schedule="constant"`` for a fixed lr).
        train: the loop: ``epochs``, ``seed`` (bag order, every epoch's random state),
            ``device``, ``precision``, ``accumulate_grad_batches`` (bags per optimiser step:
            each bag's loss is divided by it; the last, partial step of an epoch is taken
            too) and ``progress``; one device only.
        out: the run folder: ``checkpoints/best.ckpt`` is written there.
        run_config: the resolved configuration stored in the checkpoint.
        callbacks: more Lightning callbacks.

    Returns:
        The :class:`BagRun`; ``run.module.model`` holds the best checkpoint's weights.

    Raises:
        ConfigError: impossible ``optim``/``train`` settings, or an unavailable device.
    """
    optim.validate()
    train.validate()
    if train.devices != 1 or train.num_nodes != 1:
        raise ConfigError("MNIST bags train on one device: train.devices and num_nodes must be 1")
    if not len(val_set):
        raise ValueError("val_set holds no bags: the best checkpoint is chosen on them")
    accelerator, devices = resolve_device(train)
    out = Path(out)
    module = MILClassifier(model, CLASS_NAMES, optim, seed=train.seed, run_config=run_config)
    timer = StepTimer()
    best, _ = checkpoint_callbacks(out / "checkpoints")  # best.ckpt only: no resuming here
    callbacks = [best, timer, *callbacks]
    trainer = build_trainer(
        train, out, accelerator, devices, callbacks, grad_clip=optim.grad_clip, loggers=False
    )
    trainer.fit(module, bag_loader(train_set, train.seed, shuffle=True), bag_loader(val_set))
    path = Path(best.best_model_path)
    state = load_checkpoint_file(path)
    module.load_state_dict(state["state_dict"])
    return BagRun(module, trainer, timer, path, int(state["epoch"]) + 1)


def predict_records(run: BagRun, bags: Sequence[tuple[Tensor, int]]) -> list[dict[str, Any]]:
    """The engine's prediction record of every bag: ``slide_id`` (``bag_0007``), ``label``,
    ``probs`` (all instances, no graph) and ``loss``."""
    return run.trainer.predict(run.module, bag_loader(bags))


def records_auc(records: Sequence[dict[str, Any]]) -> float:
    """ROC AUC of p(positive) of prediction records (NaN if only one class is present)."""
    labels = [r["label"] for r in records]
    return classification_metrics(labels, np.stack([r["probs"] for r in records]))["auc"]


def bags_auc(run: BagRun, bags: Sequence[tuple[Tensor, int]]) -> float:
    """ROC AUC of the model on ``bags`` (NaN if only one class is present)."""
    return records_auc(predict_records(run, bags))


# ----------------------------------------------------------------------------- experiment
def _optim() -> OptimConfig:
    return OptimConfig(lr=5e-4, weight_decay=1e-4, schedule="constant")


def _train() -> TrainConfig:
    return TrainConfig(epochs=5, device="cpu", precision="32", accumulate_grad_batches=1)


def _model() -> StreamingMILConfig:
    return StreamingMILConfig(kind="patches", head="gated_abmil", head_options={"attn_dim": 64})


def digit_encoder(out_dim: int = 64, width: int = 8) -> EncoderConfig:
    """The ``small_cnn`` encoder of 1-channel 28 px digits (uint8 pixels standardised by
    MNIST's mean and std); ``width`` channels in the first conv, ``out_dim`` features."""
    return EncoderConfig(
        "small_cnn",
        normalize="none",
        mean=[MNIST_MEAN],
        std=[MNIST_STD],
        options={"in_channels": 1, "image_size": 28, "out_dim": out_dim, "width": width},
    )


def _patches() -> PatchConfig:
    return PatchConfig(encoder=digit_encoder(), patch_size=28, min_tissue=0.0)


@dataclass
class MnistBagsConfig:
    """Configuration of one MNIST-bags run (defaults < YAML file < command-line flags).

    Attributes:
        data: folder with the MNIST / QMNIST IDX files (``run.py`` looks for
            ``../shared/data/mnist`` when ``None``).
        bag_size: digits per bag.
        train_bags: training bags (balanced), drawn once and visited in a new order each epoch.
        val_bags: validation bags (the best checkpoint).
        test_bags: test bags.
        key_fraction: fraction of nines in a positive bag (at least one nine).
        model: the run's ``model`` section, as in a slide run: ``kind: patches`` (the
            only kind here), ``head`` (a registered MIL head, ``--head``; default
            ``gated_abmil``) and ``head_options`` (default ``attn_dim: 64``).
        patches: the run's ``patches`` section, as in a slide run
            (:class:`~gigastream.models.patch_mil.PatchConfig`): ``encoder`` (default
            :func:`digit_encoder`), ``patch_size`` (28, a digit), ``strategy``
            (``--strategy``: ``baseline``, ``accumulate`` or ``sample``), ``chunk_size``
            (``accumulate`` and evaluation), ``sample_size`` (``sample``),
            ``memory_budget_mib`` (``accumulate``: memory for chunks that keep their graph).
            ``min_tissue`` is not used (digits are not cut from a slide).
        optim: AdamW with a constant learning rate (default 5e-4, weight decay 1e-4).
        train: the loop: ``epochs`` (default 5), ``seed`` (of the bags, the initialisation,
            the bag order and the sampling), ``device`` (default ``cpu``), ``precision``
            (Lightning's name: ``32`` or ``64``), ``accumulate_grad_batches`` (bags per
            optimiser step, ``--bags-per-step``; default 1), ``progress``, ``threads``. The
            slide-only settings (``balanced``, ``early_stopping_patience``, ``val_fraction``,
            ``heatmaps``, ``bn_calibration``) are not used.
    """

    data: str | None = None
    bag_size: int = 50
    train_bags: int = 100
    val_bags: int = 40
    test_bags: int = 100
    key_fraction: float = 0.1
    model: StreamingMILConfig = field(default_factory=_model)
    patches: PatchConfig = field(default_factory=_patches)
    optim: OptimConfig = field(default_factory=_optim)
    train: TrainConfig = field(default_factory=_train)

    def validate(self) -> None:
        """Raise ConfigError (a ValueError) on impossible settings."""
        for name in ("bag_size", "train_bags", "val_bags", "test_bags"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.key_fraction <= 1:
            raise ConfigError(f"key_fraction must be in (0, 1], got {self.key_fraction}")
        if self.model.kind != "patches":
            raise ConfigError(
                f"model.kind must be patches (a bag of digits is a bag of patches), got "
                f"{self.model.kind!r}"
            )
        if self.patches.strategy == "frozen":
            raise ConfigError(
                "patches.strategy frozen caches slide features; use baseline, accumulate or "
                "sample for digit bags"
            )
        try:
            self.patches.validate()
        except ValueError as exc:
            raise ConfigError(f"patches: {exc}") from None
        self.optim.validate()
        self.train.validate()

    def bags(self) -> BagsConfig:
        """How the bags are made."""
        return BagsConfig(bag_size=self.bag_size, key_fraction=self.key_fraction)


def build_bag_model(config: MnistBagsConfig) -> PatchMIL:
    """The run's :class:`~gigastream.models.patch_mil.PatchMIL` (2 classes), built by the
    engine's :func:`~gigastream.train.preparation.build_model` from ``config.model`` and
    ``config.patches``, in the precision's parameter dtype, seeded by ``config.train.seed``."""
    from gigastream.train.preparation import build_model

    dtype = precisions.param_dtype(config.train.precision)
    torch.manual_seed(config.train.seed)
    run = RunConfig(model=config.model, patches=config.patches)
    model = build_model(run, num_classes=len(CLASS_NAMES))
    return model.to(dtype)


def _failure(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"failed: {text.splitlines()[0] if text else type(exc).__name__}"


def run_mnist_bags(config: MnistBagsConfig, out: str | Path) -> dict[str, Any]:
    """Train and evaluate one MNIST-bags model on the engine, into the run folder ``out``.

    Args:
        config: the run's configuration (``config.data`` must be set).
        out: the run folder: ``checkpoints/best.ckpt``, ``test_predictions.csv``
            (``slide_id`` = bag id, ``label``, ``p_negative``, ``p_positive``) and
            ``metrics.json``.

    Returns:
        The contents of ``metrics.json``: ``status`` (``running``, then ``completed``,
        ``interrupted`` or ``failed: <reason>``), ``test_auc`` (of the best checkpoint),
        ``val_auc``, ``best_epoch``, ``best_checkpoint``, ``train_seconds`` (training steps:
        forward, backward, optimiser), ``seconds_per_bag``, ``eval_seconds`` (validation and
        test), ``peak_rss_mib`` (whole run), ``setup_rss_mib`` (RSS when training starts:
        torch, Lightning, data, model), ``train_peak_rss_mib`` (peak during training and
        evaluation, measured after resetting the peak; ``None`` where that is unsupported),
        ``history`` (per epoch: training loss, validation loss/AUC/accuracy, seconds) and the
        resolved ``config``.

    Raises:
        ConfigError: impossible settings or an unavailable device (nothing is written).
        FileNotFoundError: if the MNIST folder or its files are missing (nothing is written).
    """
    from gigastream.train.prediction import write_predictions

    config.validate()
    if config.data is None:
        raise ConfigError("data: give the folder of the MNIST IDX files (--data)")
    resolve_device(config.train)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    images, labels = load_digits(Path(config.data))
    out = check_writable_folder(out)
    bags = config.bags()
    pools = split_pools(labels, bags.pool_fractions, bags.split_seed)
    rng = np.random.default_rng(config.train.seed)
    sizes = (config.train_bags, config.val_bags, config.test_bags)
    train, val, test = (
        BagSet(images, make_bags(labels, pool, n, bags, rng))  # uint8 bags
        for pool, n in zip(pools, sizes, strict=True)
    )
    model = build_bag_model(config)
    resolved = {**to_dict(config), "bags": to_dict(bags)}
    setup_peak = peak_rss_mib()
    setup_rss = current_rss_mib()
    can_reset = reset_peak_rss()

    record = RunRecord(out / "metrics.json", {"status": "running", "config": resolved})
    record.save()
    try:
        run = train_bags(
            model, train, val, optim=config.optim, train=config.train, out=out, run_config=resolved
        )
        start = time.perf_counter()
        records = predict_records(run, test)
        test_auc = records_auc(records)
        test_seconds = time.perf_counter() - start
        write_predictions(out / "test_predictions.csv", records, CLASS_NAMES)
    except KeyboardInterrupt:
        record.update(status="interrupted")
        raise
    except BaseException as exc:
        record.update(status=_failure(exc))
        raise
    train_seconds = sum(run.timer.epoch_seconds)
    history = [
        {
            "epoch": e["epoch"],
            "train_loss": e["train_loss"],
            "val_loss": e["val_loss"],
            "val_auc": e["val_auc"],
            "val_accuracy": e["val_accuracy"],
            "seconds": seconds,
        }
        for e, seconds in zip(run.module.epoch_log, run.timer.epoch_seconds, strict=True)
    ]
    for e in history:
        logger.info(
            "epoch %d: loss %.4f, val AUC %.4f, %.1f s",
            e["epoch"],
            e["train_loss"],
            e["val_auc"],
            e["seconds"],
        )
    record.update(
        status="completed",
        test_auc=test_auc,
        val_auc=run.best_val_auc,
        best_epoch=run.best_epoch,
        best_checkpoint=str(run.best_checkpoint.relative_to(out)),
        train_seconds=train_seconds,
        seconds_per_bag=train_seconds / max(1, run.timer.bags),
        eval_seconds=run.timer.val_seconds + test_seconds,
        peak_rss_mib=max(setup_peak, peak_rss_mib()),
        setup_rss_mib=setup_rss,
        train_peak_rss_mib=peak_rss_mib() if can_reset else None,
        history=history,
        engine="lightning",
        optimizer=f"AdamW ({config.optim.schedule} lr)",
        torch_threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        lightning_version=L.__version__,
        outputs={"predictions": "test_predictions.csv", "checkpoints": ["checkpoints/best.ckpt"]},
    )
    return record.data


__all__ = [
    "CLASS_NAMES",
    "BagExample",
    "BagExamples",
    "BagInput",
    "BagRun",
    "MnistBagsConfig",
    "bag_loader",
    "bags_auc",
    "build_bag_model",
    "predict_records",
    "records_auc",
    "reset_peak_rss",
    "run_mnist_bags",
    "train_bags",
]
