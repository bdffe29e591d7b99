"""Training curves (``gigastream.viz.curves``): a real PNG, also with an undefined AUC; its
title, axis labels, best epoch, undefined-AUC note and the loss's instance term."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from gigastream.viz.curves import (
    BEST_COLOUR,
    best_epoch,
    loss_terms,
    plot_training_curve,
    training_curve_figure,
)


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


# ------------------------------------------------------------------ issue 16: pictures
def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_title_axes_and_png_title(tmp_path):
    fig = training_curve_figure(_epochs(), title="f0: vgg_small + clam_sb")
    ax_loss, ax_metric = fig.axes
    assert fig.get_suptitle() == "f0: vgg_small + clam_sb"
    assert ax_loss.get_xlabel() == ax_metric.get_xlabel() == "epoch"
    assert ax_loss.get_ylabel() == "loss" and "AUC" in ax_metric.get_ylabel()
    run = tmp_path / "run_7"
    run.mkdir()
    out = plot_training_curve(_epochs(), run / "training_curve.png")
    with Image.open(out) as img:
        assert img.text["Title"] == "training curve: run_7"  # default: the run's folder
        assert img.size == (900, 360)


def test_best_epoch_is_the_checkpoint_rule():
    assert best_epoch(_epochs()) == 3  # the only defined AUC
    tie = [
        {"epoch": 1, "val_auc": 0.9, "val_loss": 0.5},
        {"epoch": 2, "val_auc": 0.9, "val_loss": 0.4},  # same AUC, lower loss
        {"epoch": 3, "val_auc": 0.9, "val_loss": 0.4},  # equal: the first stays
    ]
    assert best_epoch(tie) == 2
    undefined = [{"epoch": e, "val_auc": None, "val_loss": v} for e, v in ((1, 0.7), (2, 0.6))]
    assert best_epoch(undefined) == 2  # no AUC: the lower loss
    assert best_epoch([]) is None


def test_best_epoch_is_marked_with_its_value(tmp_path):
    fig = training_curve_figure(_epochs())
    ax_loss, ax_metric = fig.axes
    for ax in (ax_loss, ax_metric):
        (vline,) = [ln for ln in ax.lines if list(ln.get_xdata()) == [3, 3]]
        assert vline.get_color() == BEST_COLOUR
    labels = [t.get_text() for t in ax_metric.get_legend().get_texts()]
    assert "best: epoch 3, AUC 0.875" in labels
    given = training_curve_figure(_epochs(), best=2)  # the run's own best checkpoint
    labels = [t.get_text() for t in given.axes[1].get_legend().get_texts()]
    assert "best: epoch 2, val loss 0.660" in labels  # no AUC in epoch 2: its loss
    out = plot_training_curve(_epochs(), tmp_path / "c.png")
    with Image.open(out) as img:
        rgb = np.asarray(img.convert("RGB")).astype(int)
    from matplotlib.colors import to_rgb

    green = np.array(to_rgb(BEST_COLOUR)) * 255
    assert ((np.abs(rgb - green) <= 10).all(axis=-1)).sum() > 100  # the marks are drawn


def test_undefined_auc_is_noted_on_the_figure():
    fig = training_curve_figure(_epochs())
    (note,) = _texts(fig)
    assert "validation AUC undefined in epochs 1-2" in note and "one class" in note
    only_nan = [dict(r, val_auc=None) for r in _epochs()]
    fig = training_curve_figure(only_nan)
    (note,) = _texts(fig)
    assert note.startswith("validation AUC undefined:") and "one class" in note
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert "validation AUC (undefined)" in labels
    defined = [dict(r, val_auc=0.5 + r["epoch"] / 10) for r in _epochs()]
    assert _texts(training_curve_figure(defined)) == []  # no note when every AUC is defined


def test_the_loss_is_explained_when_it_has_an_instance_loss(tmp_path):
    from gigastream.mil.clam import CLAM
    from gigastream.mil.topk import TopKMIL

    clam = loss_terms(CLAM(in_dim=8, num_classes=2, bag_weight=0.6))
    assert clam == "loss = 0.6 × bag cross-entropy\n+ 0.4 × CLAM instance loss"
    assert loss_terms(CLAM(in_dim=8, num_classes=2, bag_weight=1.0)) is None
    dense = loss_terms(CLAM(in_dim=8, num_classes=2, bag_weight=0.6, instance_weight=0.5))
    assert dense == (
        "loss = 0.6 × bag cross-entropy\n+ 0.4 × CLAM instance loss\n+ 0.5 × every-instance loss"
    )
    only_dense = loss_terms(CLAM(in_dim=8, num_classes=2, bag_weight=1.0, instance_weight=2))
    assert only_dense == "loss = bag cross-entropy\n+ 2 × every-instance loss"
    assert "top-k instance loss" in loss_terms(TopKMIL(8, 2, instance_weight=0.5))
    assert loss_terms(TopKMIL(8, 2, instance_weight=0.0)) is None
    fig = training_curve_figure(_epochs(), loss=clam)
    assert fig.axes[0].get_legend().get_title().get_text() == clam
    assert training_curve_figure(_epochs()).axes[0].get_legend().get_title().get_text() == ""
    out = plot_training_curve(_epochs(), tmp_path / "clam.png", loss=clam)
    with Image.open(out) as img:
        assert img.size == (900, 360)
