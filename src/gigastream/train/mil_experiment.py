"""The MNIST-bags experiment (the QMNIST experiment of Andersson et al., 2022).

A :class:`~gigastream.mil.encoders.SmallCNN` encoder and a MIL head (gated attention by
default) are trained end to end on bags of MNIST digits (positive: contains nines) with one
of the strategies ``baseline``, ``accumulate`` or ``sample``. The epoch with the best
validation AUC is evaluated on the test bags. Everything is measured in the running process:
training time, time per bag and the peak resident memory (``ru_maxrss``), so run each
configuration in a fresh process (the CLI does) to compare peak memory.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gigastream.mil.datasets import BagsConfig, BagSet, load_digits, make_bags, split_pools
from gigastream.mil.encoders import SmallCNN
from gigastream.mil.heads import create_mil_head
from gigastream.streaming.memory import current_rss_mib, peak_rss_mib
from gigastream.train.mil_strategies import BagEncoder, StrategyConfig
from gigastream.train.mil_trainer import evaluate_auc, model_parameters, train_epoch

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


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
        seed: seed of the bags, the initialisation and the sampling.
        key_fraction: fraction of nines in a positive bag (at least one nine).
        head: registered MIL head name.
        feature_dim: encoder output size ``D``.
        attn_dim: attention hidden size.
        chunk_size: instances per chunk (``accumulate`` and evaluation).
        sample_size: instances per step (``sample``).
        memory_budget_mib: ``accumulate``: memory for chunks that keep their graph.
        bags_per_step: bags per optimiser step (gradient accumulation over bags).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        dtype: ``float32`` or ``float64``.
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
    progress: bool = True
    bags: BagsConfig = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        for name in ("bag_size", "train_bags", "val_bags", "test_bags", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        StrategyConfig(self.strategy, self.chunk_size, self.sample_size, self.memory_budget_mib)
        self.bags = BagsConfig(bag_size=self.bag_size, key_fraction=self.key_fraction)


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


def run_mnist_bags(config: MnistBagsConfig) -> dict[str, Any]:
    """Train and evaluate one MNIST-bags model.

    Args:
        config: the run's configuration.

    Returns:
        A JSON-serialisable dict with ``test_auc`` (of the best validation epoch's model,
        which the encoder and head hold on return), ``val_auc``, ``best_epoch``,
        ``train_seconds``, ``seconds_per_bag``, ``eval_seconds``, ``peak_rss_mib`` (whole
        run), ``setup_rss_mib`` (RSS when training starts: torch, data, model),
        ``train_peak_rss_mib`` (peak during training and evaluation, measured after resetting
        the peak; ``None`` where that is unsupported), ``history`` and the resolved ``config``.

    Raises:
        FileNotFoundError: if the MNIST folder or its files are missing.
    """
    dtype = _DTYPES[config.dtype]
    images, labels = load_digits(Path(config.data))
    pools = split_pools(labels, config.bags.pool_fractions, config.bags.split_seed)
    rng = np.random.default_rng(config.seed)
    splits = [
        BagSet(images, make_bags(labels, pool, n, config.bags, rng))  # uint8 bags
        for pool, n in zip(pools, (config.train_bags, config.val_bags, config.test_bags),
                           strict=True)
    ]
    train, val, test = splits
    torch.manual_seed(config.seed)
    encoder = SmallCNN(out_dim=config.feature_dim).to(dtype)
    head = create_mil_head(config.head, config.feature_dim, 2, attn_dim=config.attn_dim).to(dtype)
    strategy = StrategyConfig(config.strategy, config.chunk_size, config.sample_size,
                              config.memory_budget_mib)
    bag_encoder = BagEncoder(encoder, strategy)
    optimizer = torch.optim.Adam(model_parameters(encoder, head), lr=config.lr,
                                 weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    setup_peak = peak_rss_mib()
    setup_rss = current_rss_mib()
    can_reset = reset_peak_rss()

    history: list[dict[str, float]] = []
    best: tuple[float, int, dict, dict] | None = None
    train_seconds, eval_seconds, bags_seen = 0.0, 0.0, 0
    for epoch in range(config.epochs):
        order = rng.permutation(len(train)).tolist()
        stats = train_epoch(
            bag_encoder, head, train, optimizer, bags_per_step=config.bags_per_step,
            generator=generator, order=order, progress=config.progress,
            description=f"{config.strategy} N={config.bag_size} epoch {epoch + 1}/{config.epochs}",
        )
        train_seconds += stats.seconds
        bags_seen += stats.bags
        start = time.perf_counter()
        val_auc = evaluate_auc(bag_encoder, head, val, val.labels)
        eval_seconds += time.perf_counter() - start
        history.append({"epoch": epoch + 1, "train_loss": stats.loss, "val_auc": val_auc,
                        "seconds": stats.seconds})
        logger.info("epoch %d: loss %.4f, val AUC %.4f, %.1f s", epoch + 1, stats.loss,
                    val_auc, stats.seconds)
        if best is None or val_auc > best[0]:
            best = (val_auc, epoch + 1, copy.deepcopy(encoder.state_dict()),
                    copy.deepcopy(head.state_dict()))
    assert best is not None
    encoder.load_state_dict(best[2])
    head.load_state_dict(best[3])
    start = time.perf_counter()
    test_auc = evaluate_auc(bag_encoder, head, test, test.labels)
    eval_seconds += time.perf_counter() - start
    resolved = asdict(config)
    resolved.pop("bags", None)
    resolved["bags"] = asdict(config.bags)
    return {
        "test_auc": test_auc,
        "val_auc": best[0],
        "best_epoch": best[1],
        "train_seconds": train_seconds,
        "seconds_per_bag": train_seconds / max(1, bags_seen),
        "eval_seconds": eval_seconds,
        "peak_rss_mib": max(setup_peak, peak_rss_mib()),
        "setup_rss_mib": setup_rss,
        "train_peak_rss_mib": peak_rss_mib() if can_reset else None,
        "history": history,
        "config": resolved,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
