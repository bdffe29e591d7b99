"""Training curves (``gigastream.viz.curves``): a real PNG, also with an undefined AUC."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from gigastream.viz.curves import plot_training_curve


def _epochs() -> list[dict]:
    """Three epochs as ``metrics.json`` holds them: an undefined AUC is NaN, or ``None``
    once written as strict JSON."""
    return [
        {"epoch": 1, "train_loss": 0.71, "val_loss": 0.70, "val_auc": math.nan,
         "val_accuracy": 0.5, "train_slide_losses": [0.8, 0.7, 0.65]},
        {"epoch": 2, "train_loss": 0.62, "val_loss": 0.66, "val_auc": None,
         "val_accuracy": 0.5, "train_slide_losses": [0.6, 0.64, 0.62]},
        {"epoch": 3, "train_loss": 0.41, "val_loss": 0.52, "val_auc": 0.875,
         "val_accuracy": 0.75},  # no per-slide losses
    ]  # fmt: skip


def test_writes_a_png_of_the_figure_size(tmp_path):
    out = plot_training_curve(_epochs(), tmp_path / "curve.png")
    assert out == tmp_path / "curve.png"
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (900, 360)  # 9 x 3.6 inches at 100 dpi
        pixels = np.asarray(img.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # drawn, not one flat colour


def test_one_epoch_with_an_undefined_auc(tmp_path):
    (first,) = _epochs()[:1]
    out = plot_training_curve([first], tmp_path / "one.png")
    with Image.open(out) as img:
        assert img.size == (900, 360)
