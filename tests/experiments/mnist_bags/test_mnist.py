"""MNIST-bags data (``experiments/mnist_bags/mnist.py``): IDX reading, disjoint pools,
balanced bags."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from gigastream.models.encoders import build_encoder
from tests.experiments.conftest import MNIST, experiment_module

mnist = experiment_module("mnist_bags", "mnist")
bags = experiment_module("mnist_bags", "bags")
BagsConfig, BagSet, bag_tensor = mnist.BagsConfig, mnist.BagSet, mnist.bag_tensor
load_digits, make_bags, read_idx, split_pools = (
    mnist.load_digits, mnist.make_bags, mnist.read_idx, mnist.split_pools
)  # fmt: skip


def _write_idx(path: Path, array: np.ndarray, code: int) -> None:
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape
    )
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as fh:
        fh.write(data)


@pytest.fixture
def fake_mnist(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    labels = np.arange(200) % 10
    _write_idx(
        tmp_path / "t10k-images-idx3-ubyte.gz",
        rng.integers(0, 256, (200, 28, 28), dtype=np.uint8),
        0x08,
    )
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels.astype(np.uint8), 0x08)
    # a QMNIST set, uncompressed, with the 8-column int labels (digit first)
    qlabels = np.zeros((30, 8), dtype=np.int32)
    qlabels[:, 0] = 9
    _write_idx(
        tmp_path / "qmnist-test-images-idx3-ubyte", np.zeros((30, 28, 28), dtype=np.uint8), 0x08
    )
    _write_idx(tmp_path / "qmnist-test-labels-idx2-int", qlabels, 0x0C)
    return tmp_path


def test_load_digits_reads_mnist_and_qmnist(fake_mnist):
    images, labels = load_digits(fake_mnist)
    assert images.shape == (230, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (230,) and (labels[200:] == 9).all()


def test_read_idx_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    _write_idx(tmp_path / "short", np.zeros((4, 3), dtype=np.uint8), 0x08)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-2])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_digits(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no MNIST/QMNIST IDX"):
        load_digits(tmp_path)


def test_pools_are_disjoint_and_stratified():
    labels = np.repeat(np.arange(10), 50)
    pools = split_pools(labels, (0.6, 0.2, 0.2), seed=3)
    assert [len(p) for p in pools] == [300, 100, 100]
    assert not set(pools[0]) & set(pools[1]) and not set(pools[0]) & set(pools[2])
    assert not set(pools[1]) & set(pools[2])
    assert all((np.bincount(labels[p]) == len(p) // 10).all() for p in pools)
    with pytest.raises(ValueError, match="pool fractions"):
        split_pools(labels, (0.8, 0.2, 0.2), seed=0)


@pytest.mark.parametrize("bag_size,fraction,nines", [(50, 0.1, 5), (7, 0.05, 1), (300, 0.2, 60)])
def test_bags_are_balanced_with_the_key_fraction(bag_size, fraction, nines):
    labels = np.repeat(np.arange(10), 20)  # 20 nines: a bag of 300 needs replacement
    config = BagsConfig(bag_size=bag_size, key_fraction=fraction)
    bags = make_bags(labels, np.arange(200), 10, config, np.random.default_rng(0))
    assert sorted(label for _, label in bags) == [0] * 5 + [1] * 5
    for indices, label in bags:
        assert len(indices) == bag_size
        assert (labels[indices] == 9).sum() == (nines if label else 0)


def test_bag_errors():
    labels = np.arange(20) % 10
    with pytest.raises(ValueError, match="bag_size"):
        make_bags(labels, np.arange(20), 2, BagsConfig(bag_size=0), np.random.default_rng(0))
    with pytest.raises(ValueError, match="key digits"):
        make_bags(labels, np.arange(9), 2, BagsConfig(), np.random.default_rng(0))


def test_bagset_tensors(fake_mnist):
    images, labels = load_digits(fake_mnist)
    bags = make_bags(labels, np.arange(200), 4, BagsConfig(bag_size=6), np.random.default_rng(0))
    bagset = BagSet(images, bags, torch.float64)
    x, y = bagset[0]
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float64
    assert len(bagset) == 4 and bagset.labels == [label for _, label in bags]


@pytest.mark.skipif(not MNIST.is_dir(), reason=f"real MNIST data not found at {MNIST}")
def test_real_mnist_test_set():
    images, labels = load_digits(MNIST)
    assert images.shape == (10000, 28, 28)
    assert np.bincount(labels).tolist()[9] == 1009


def test_small_cnn_takes_uint8_or_unit_floats():
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8).numpy()
    encoder = build_encoder(bags.digit_encoder(out_dim=4)).double()
    raw = bag_tensor(images, [0, 2, 4])
    assert raw.dtype == torch.uint8 and raw.shape == (3, 1, 28, 28)
    torch.testing.assert_close(encoder(raw), encoder(bag_tensor(images, [0, 2, 4], torch.float64)))
