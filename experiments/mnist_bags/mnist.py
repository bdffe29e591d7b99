"""MNIST bags of the QMNIST bag experiment of Andersson et al. (2022), from IDX files on disk.

Digits are split into disjoint train / validation / test *pools*; a bag of ``N`` digits is
positive when it holds the key digit (9): a configurable fraction of its digits are nines,
and negative bags hold none. Classes are balanced.

The loader reads the IDX files of MNIST (``t10k-*``, ``train-*``) and QMNIST
(``qmnist-*-images-idx3-ubyte``, ``qmnist-*-labels-idx2-int``), gzipped or not, from one
folder and uses every set it finds there.
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# (images, labels) file stems, without the optional ".gz"
_SETS = [
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("qmnist-test-images-idx3-ubyte", "qmnist-test-labels-idx2-int"),
    ("qmnist-train-images-idx3-ubyte", "qmnist-train-labels-idx2-int"),
]


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST / QMNIST format), gzipped or not.

    Args:
        path: the file.

    Returns:
        The array with the shape and dtype the file declares.

    Raises:
        ValueError: if the file is not IDX or is truncated.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    count = int(np.prod(shape))
    if len(data) - offset < count * dtype.itemsize:
        raise ValueError(f"{path} is truncated: expected {count} values of shape {shape}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def load_digits(root: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load every MNIST / QMNIST set found in ``root``.

    Args:
        root: folder holding IDX files, e.g. ``t10k-images-idx3-ubyte.gz`` and
            ``t10k-labels-idx1-ubyte.gz``.

    Returns:
        ``images`` uint8 ``(M, 28, 28)`` and ``labels`` int64 ``(M,)`` (digit classes).

    Raises:
        FileNotFoundError: if the folder or any image/label pair is missing.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"MNIST folder {root} does not exist; point --data at a folder with the IDX files "
            "(e.g. t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz)"
        )
    images, labels = [], []
    for image_stem, label_stem in _SETS:
        image_path, label_path = _find(root, image_stem), _find(root, label_stem)
        if image_path is None or label_path is None:
            continue
        x, y = read_idx(image_path), read_idx(label_path)
        if y.ndim == 2:  # QMNIST extended labels: the first column is the digit
            y = y[:, 0]
        if len(x) != len(y):
            raise ValueError(f"{image_path} has {len(x)} images but {label_path} {len(y)} labels")
        logger.info("read %d digits from %s", len(x), image_path)
        images.append(x)
        labels.append(y.astype(np.int64))
    if not images:
        raise FileNotFoundError(
            f"no MNIST/QMNIST IDX image+label files in {root} (looked for "
            f"{', '.join(s for s, _ in _SETS)}, with or without .gz)"
        )
    return np.concatenate(images), np.concatenate(labels)


@dataclass
class BagsConfig:
    """How MNIST bags are made.

    Attributes:
        bag_size: digits per bag (``N``).
        key_digit: the digit that makes a bag positive.
        key_fraction: fraction of a positive bag's digits that are the key digit (at least one).
        pool_fractions: fractions of the digits in the (train, validation, test) pools.
        split_seed: seed of the pool split (fixed across runs so every seed sees the same pools).
    """

    bag_size: int = 50
    key_digit: int = 9
    key_fraction: float = 0.1
    pool_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    split_seed: int = 0


def split_pools(
    labels: np.ndarray, fractions: tuple[float, float, float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split digit indices into disjoint train / validation / test pools (stratified by digit).

    Args:
        labels: digit labels ``(M,)``.
        fractions: the three pool fractions (they must sum to at most 1).
        seed: random seed.

    Returns:
        Three disjoint arrays of indices into ``labels``.
    """
    if min(fractions) <= 0 or sum(fractions) > 1 + 1e-9:
        raise ValueError(f"pool fractions must be > 0 and sum to <= 1, got {fractions}")
    rng = np.random.default_rng(seed)
    pools: list[list[np.ndarray]] = [[], [], []]
    for digit in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        ends = np.cumsum([round(f * len(idx)) for f in fractions])
        for k, (start, end) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
            pools[k].append(idx[start:end])
    return tuple(np.sort(np.concatenate(p)) for p in pools)  # type: ignore[return-value]


def _draw(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
    return rng.choice(pool, size=n, replace=n > len(pool))


def make_bags(
    labels: np.ndarray,
    pool: np.ndarray,
    num_bags: int,
    config: BagsConfig,
    rng: np.random.Generator,
) -> list[tuple[np.ndarray, int]]:
    """Draw balanced bags from one pool.

    Digits are drawn without replacement within a bag unless the bag needs more digits than
    the pool holds.

    Args:
        labels: digit labels of all digits ``(M,)``.
        pool: indices of the digits this split may use.
        num_bags: number of bags; half (rounded down) are positive.
        config: bag size, key digit and key fraction.
        rng: random generator.

    Returns:
        ``(indices, label)`` per bag, in random order; ``indices`` has ``bag_size`` entries.
    """
    if config.bag_size < 1:
        raise ValueError(f"bag_size must be >= 1, got {config.bag_size}")
    if not 0 < config.key_fraction <= 1:
        raise ValueError(f"key_fraction must be in (0, 1], got {config.key_fraction}")
    is_key = labels[pool] == config.key_digit
    keys, others = pool[is_key], pool[~is_key]
    if len(keys) == 0 or len(others) == 0:
        raise ValueError(f"the pool needs both key digits ({config.key_digit}) and others")
    n_key = max(1, round(config.key_fraction * config.bag_size))
    bags = []
    for b in range(num_bags):
        positive = b < num_bags // 2
        if positive:
            idx = np.concatenate(
                [_draw(rng, keys, n_key), _draw(rng, others, config.bag_size - n_key)]
            )
        else:
            idx = _draw(rng, others, config.bag_size)
        bags.append((rng.permutation(idx), int(positive)))
    order = rng.permutation(num_bags)
    return [bags[i] for i in order]


def bag_tensor(images: np.ndarray, indices: np.ndarray, dtype: torch.dtype | None = None) -> Tensor:
    """The image tensor of one bag.

    Bags stay uint8 by default (a quarter of float32's memory) and are converted by the
    encoder (:class:`~gigastream.models.encoders.PatchEncoder` normalises its input), so a chunked
    encoder only ever holds one chunk in floating point.

    Args:
        images: all digits, uint8 ``(M, 28, 28)``.
        indices: the bag's digit indices ``(N,)``.
        dtype: ``None`` for the raw uint8 pixels, or a floating dtype for values
            ``pixel / 255`` in [0, 1].

    Returns:
        ``(N, 1, 28, 28)`` tensor.
    """
    x = torch.from_numpy(images[indices]).unsqueeze(1)  # (N, 1, 28, 28) uint8
    if dtype is None:
        return x
    return x.to(dtype).div_(255.0)


class BagSet:
    """A lazy sequence of bags: ``bags[i]`` is ``(images (N, 1, 28, 28), label)``.

    Args:
        images: all digits, uint8 ``(M, 28, 28)``.
        bags: ``(indices, label)`` pairs from :func:`make_bags`.
        dtype: ``None`` for uint8 bags (the default), or a floating dtype for values in [0, 1].
    """

    def __init__(
        self,
        images: np.ndarray,
        bags: list[tuple[np.ndarray, int]],
        dtype: torch.dtype | None = None,
    ) -> None:
        self.images = images
        self.bags = bags
        self.dtype = dtype

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        indices, label = self.bags[i]
        return bag_tensor(self.images, indices, self.dtype), label

    @property
    def labels(self) -> list[int]:
        """Bag labels, in order."""
        return [label for _, label in self.bags]
