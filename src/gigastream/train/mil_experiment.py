"""The MNIST-bags experiment (the QMNIST experiment of Andersson et al., 2022) on the engine.

A :class:`~gigastream.mil.encoders.SmallCNN` encoder and a MIL head (gated attention by
default) are trained end to end on bags of MNIST digits (positive: contains nines) with one
of the strategies ``baseline``, ``accumulate`` or ``sample``
(:class:`~gigastream.train.mil_strategies.BagClassifier`). Training runs on the project's
one engine: :class:`~gigastream.train.module.MILClassifier` in a Lightning ``Trainer``, one
bag per step, ``bags_per_step`` bags per optimiser step (``accumulate_grad_batches``). The
epoch with the best validation AUC is evaluated on the test bags. Everything is measured in
the running process: training time, time per bag and the peak resident memory
(``ru_maxrss``), so run each configuration in a fresh process (the CLI does) to compare
peak memory.

Example:
    >>> result = run_mnist_bags(MnistBagsConfig(data="../shared/data/mnist"))  # doctest: +SKIP
    >>> result["test_auc"], result["best_epoch"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from gigastream.mil.datasets import BagsConfig, BagSet, load_digits, make_bags, split_pools
from gigastream.mil.encoders import SmallCNN
from gigastream.mil.heads import create_mil_head
from gigastream.streaming.memory import current_rss_mib, peak_rss_mib
from gigastream.train.config import OptimConfig
from gigastream.train.data import example_loader
from gigastream.train.metrics import classification_metrics
from gigastream.train.mil_strategies import BagClassifier, StrategyConfig
from gigastream.train.module import MILClassifier

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_PRECISION = {"float32": "32-true", "float64": "64-true"}
CLASS_NAMES = ("negative", "positive")


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
        bags: ``(bag, label)`` pairs, e.g. a :class:`~gigastream.mil.datasets.BagSet`.
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


# ----------------------------------------------------------------------------- callbacks
class StepTimer(Callback):
    """Wall time of the training steps (forward, backward, optimiser) and of validation.

    Attributes:
        epoch_seconds: training-step seconds of each finished epoch.
        bags: training steps taken.
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


class BestWeights(Callback):
    """Keeps a copy of the weights of the epoch with the best validation AUC.

    The first epoch is kept, then any epoch with a strictly higher AUC (an undefined AUC
    counts as lowest). Reads :attr:`MILClassifier.epoch_log`.

    Attributes:
        state: the module's ``state_dict`` at the best epoch (CPU copies), or ``None``.
        epoch: the best epoch (1-based).
        val_auc: its validation AUC.
    """

    def __init__(self) -> None:
        self.state: dict[str, Tensor] | None = None
        self.epoch = 0
        self.val_auc = math.nan

    @staticmethod
    def _score(auc: float) -> float:
        return auc if math.isfinite(auc) else -math.inf

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not pl_module.epoch_log:
            return
        last = pl_module.epoch_log[-1]
        if self.state is None or self._score(last["val_auc"]) > self._score(self.val_auc):
            self.state = {
                k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()
            }
            self.epoch, self.val_auc = int(last["epoch"]), float(last["val_auc"])


# ----------------------------------------------------------------------------- training
@dataclass
class BagRun:
    """A finished :func:`train_bags`: the module (best epoch's weights), trainer and callbacks."""

    module: MILClassifier
    trainer: L.Trainer
    timer: StepTimer
    best: BestWeights


def bag_trainer(
    epochs: int,
    bags_per_step: int = 1,
    dtype: str = "float32",
    device: str = "cpu",
    progress: bool = False,
    callbacks: Sequence[Callback] = (),
) -> L.Trainer:
    """A Lightning ``Trainer`` for bags: one device, no logger, no checkpoint files."""
    return L.Trainer(
        accelerator=device,
        devices=1,
        precision=_PRECISION[dtype],
        max_epochs=epochs,
        accumulate_grad_batches=bags_per_step,
        callbacks=list(callbacks),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Lightning's advice that does not apply here (bags are in memory: no workers)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        yield


def train_bags(
    model: BagClassifier,
    train: Sequence[tuple[Tensor, int]],
    val: Sequence[tuple[Tensor, int]],
    *,
    optim: OptimConfig,
    epochs: int = 1,
    bags_per_step: int = 1,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    progress: bool = False,
    callbacks: Sequence[Callback] = (),
) -> BagRun:
    """Train a bag model with the engine and restore the best validation epoch's weights.

    Args:
        model: the bag model (its parameters already in ``dtype``).
        train: training ``(bag, label)`` pairs, visited in a new seeded order every epoch.
        val: validation pairs (the best epoch by validation AUC).
        optim: optimiser settings (AdamW; ``schedule="constant"`` for a fixed lr).
        epochs: passes over ``train``.
        bags_per_step: bags per optimiser step (``accumulate_grad_batches``: each bag's loss
            is divided by it; the last, partial step of an epoch is taken too).
        seed: seed of the bag order and of every epoch's random state.
        dtype: ``float32`` or ``float64`` (the Trainer's precision).
        device: Lightning accelerator: ``cpu``, ``cuda``, ``auto``.
        progress: show progress bars.
        callbacks: more Lightning callbacks.

    Returns:
        The :class:`BagRun`; ``run.module.model`` holds the best epoch's weights.

    Raises:
        ValueError: if ``bags_per_step`` or ``epochs`` is below 1.
    """
    if bags_per_step < 1 or epochs < 1:
        raise ValueError(f"bags_per_step and epochs must be >= 1, got {bags_per_step}, {epochs}")
    module = MILClassifier(model, CLASS_NAMES, optim, seed=seed)
    timer, best = StepTimer(), BestWeights()
    trainer = bag_trainer(epochs, bags_per_step, dtype, device, progress, [timer, best, *callbacks])
    with _quiet():
        trainer.fit(module, bag_loader(train, seed, shuffle=True), bag_loader(val))
    if best.state is not None:
        module.load_state_dict(best.state)
    return BagRun(module, trainer, timer, best)


def _predict(run: BagRun, bags: Sequence[tuple[Tensor, int]]) -> list[dict[str, Any]]:
    with _quiet():
        return run.trainer.predict(run.module, bag_loader(bags))


def predict_bags(run: BagRun, bags: Sequence[tuple[Tensor, int]]) -> np.ndarray:
    """Class probabilities ``(num_bags, num_classes)`` of every bag (all instances, no graph)."""
    return np.stack([r["probs"] for r in _predict(run, bags)])


def bags_auc(run: BagRun, bags: Sequence[tuple[Tensor, int]]) -> float:
    """ROC AUC of the model on ``bags`` (NaN if only one class is present)."""
    records = _predict(run, bags)
    labels = [r["label"] for r in records]
    return classification_metrics(labels, np.stack([r["probs"] for r in records]))["auc"]


# ----------------------------------------------------------------------------- experiment
@dataclass
class MnistBagsConfig:
    """Configuration of one MNIST-bags run (defaults < YAML file < command-line flags).

    Attributes:
        data: folder with the MNIST / QMNIST IDX files.
        strategy: ``baseline``, ``accumulate`` or ``sample``.
        bag_size: digits per bag.
        train_bags: training bags (balanced), drawn once and visited in a new order each epoch.
        val_bags: validation bags (best epoch by validation AUC).
        test_bags: test bags.
        epochs: passes over the training bags.
        seed: seed of the bags, the initialisation, the bag order and the sampling.
        key_fraction: fraction of nines in a positive bag (at least one nine).
        head: registered MIL head name.
        feature_dim: encoder output size ``D``.
        attn_dim: attention hidden size.
        chunk_size: instances per chunk (``accumulate`` and evaluation).
        sample_size: instances per step (``sample``).
        memory_budget_mib: ``accumulate``: memory for chunks that keep their graph.
        bags_per_step: bags per optimiser step (gradient accumulation over bags).
        lr: AdamW learning rate (constant).
        weight_decay: AdamW (decoupled) weight decay.
        dtype: ``float32`` or ``float64``.
        device: ``cpu``, ``cuda`` or ``auto`` (Lightning accelerator).
        progress: show progress bars.
    """

    data: str = "../shared/data/mnist"
    strategy: str = "accumulate"
    bag_size: int = 50
    train_bags: int = 100
    val_bags: int = 40
    test_bags: int = 100
    epochs: int = 5
    seed: int = 0
    key_fraction: float = 0.1
    head: str = "gated_abmil"
    feature_dim: int = 64
    attn_dim: int = 64
    chunk_size: int = 64
    sample_size: int = 64
    memory_budget_mib: float | None = None
    bags_per_step: int = 1
    lr: float = 5e-4
    weight_decay: float = 1e-4
    dtype: str = "float32"
    device: str = "cpu"
    progress: bool = True
    bags: BagsConfig = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        for name in ("bag_size", "train_bags", "val_bags", "test_bags", "epochs", "bags_per_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device must be cpu, cuda or auto, got {self.device!r}")
        self.strategy_config()
        self.optim_config().validate()
        self.bags = BagsConfig(bag_size=self.bag_size, key_fraction=self.key_fraction)

    def strategy_config(self) -> StrategyConfig:
        """The training strategy."""
        return StrategyConfig(
            self.strategy, self.chunk_size, self.sample_size, self.memory_budget_mib
        )

    def optim_config(self) -> OptimConfig:
        """The engine's optimiser settings: AdamW, constant ``lr`` for encoder and head."""
        return OptimConfig(lr=self.lr, weight_decay=self.weight_decay, schedule="constant")


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux ``/proc/self/clear_refs``); ``False`` if unsupported.

    After the reset, :func:`peak_rss_mib` measures the peak from now on, so a phase of the
    run (training) can be measured apart from the fixed cost of importing torch.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def build_bag_model(config: MnistBagsConfig) -> BagClassifier:
    """SmallCNN + the configured head in ``config.dtype``, initialised from ``config.seed``."""
    dtype = _DTYPES[config.dtype]
    torch.manual_seed(config.seed)
    encoder = SmallCNN(out_dim=config.feature_dim).to(dtype)
    head = create_mil_head(config.head, config.feature_dim, 2, attn_dim=config.attn_dim).to(dtype)
    return BagClassifier(encoder, head, config.strategy_config())


def run_mnist_bags(config: MnistBagsConfig) -> dict[str, Any]:
    """Train and evaluate one MNIST-bags model on the engine.

    Args:
        config: the run's configuration.

    Returns:
        A JSON-serialisable dict with ``test_auc`` (of the best validation epoch's model),
        ``val_auc``, ``best_epoch``, ``train_seconds`` (training steps: forward, backward,
        optimiser), ``seconds_per_bag``, ``eval_seconds`` (validation and test),
        ``peak_rss_mib`` (whole run), ``setup_rss_mib`` (RSS when training starts: torch,
        Lightning, data, model), ``train_peak_rss_mib`` (peak during training and
        evaluation, measured after resetting the peak; ``None`` where that is unsupported),
        ``history`` (per epoch: training loss, validation loss/AUC/accuracy, seconds) and the
        resolved ``config``.

    Raises:
        FileNotFoundError: if the MNIST folder or its files are missing.
    """
    images, labels = load_digits(Path(config.data))
    pools = split_pools(labels, config.bags.pool_fractions, config.bags.split_seed)
    rng = np.random.default_rng(config.seed)
    sizes = (config.train_bags, config.val_bags, config.test_bags)
    train, val, test = (
        BagSet(images, make_bags(labels, pool, n, config.bags, rng))  # uint8 bags
        for pool, n in zip(pools, sizes, strict=True)
    )
    model = build_bag_model(config)
    setup_peak = peak_rss_mib()
    setup_rss = current_rss_mib()
    can_reset = reset_peak_rss()

    run = train_bags(
        model,
        train,
        val,
        optim=config.optim_config(),
        epochs=config.epochs,
        bags_per_step=config.bags_per_step,
        seed=config.seed,
        dtype=config.dtype,
        device=config.device,
        progress=config.progress,
    )
    start = time.perf_counter()
    test_auc = bags_auc(run, test)
    test_seconds = time.perf_counter() - start
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
    resolved = asdict(config)
    resolved.pop("bags", None)
    resolved["bags"] = asdict(config.bags)
    return {
        "test_auc": test_auc,
        "val_auc": run.best.val_auc,
        "best_epoch": run.best.epoch,
        "train_seconds": train_seconds,
        "seconds_per_bag": train_seconds / max(1, run.timer.bags),
        "eval_seconds": run.timer.val_seconds + test_seconds,
        "peak_rss_mib": max(setup_peak, peak_rss_mib()),
        "setup_rss_mib": setup_rss,
        "train_peak_rss_mib": peak_rss_mib() if can_reset else None,
        "history": history,
        "config": resolved,
        "engine": "lightning",
        "optimizer": "AdamW (constant lr)",
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "lightning_version": L.__version__,
    }


__all__ = [
    "BagExample",
    "BagExamples",
    "BagInput",
    "BagRun",
    "BestWeights",
    "MnistBagsConfig",
    "StepTimer",
    "bag_loader",
    "bag_trainer",
    "bags_auc",
    "build_bag_model",
    "predict_bags",
    "reset_peak_rss",
    "run_mnist_bags",
    "train_bags",
]
