"""Files written whole or not at all (:mod:`gigastream.atomic`), and the heatmap PNG and the
training curve written through it: a write that fails part-way keeps the old file and leaves
no temporary behind (issue 15)."""

from __future__ import annotations

import errno

import numpy as np
import pytest
from matplotlib.figure import Figure

from gigastream.atomic import atomic_write, temporary_path
from gigastream.viz.curves import plot_training_curve
from gigastream.viz.heatmap import attention_heatmap_png
from gigastream.wsi.reader import SlideReader


def test_a_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    assert atomic_write(path, lambda tmp: tmp.write_text("new")) == path
    assert path.read_text() == "new" and list(tmp_path.iterdir()) == [path]


def test_a_failed_write_keeps_the_old_file_and_names_it(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def full_disk(tmp):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as caught:
        atomic_write(path, full_disk)
    assert caught.value.filename == str(path)  # not the temporary
    assert path.read_text() == "old" and not temporary_path(path).exists()


def _broken_savefig(self, fname, *args, **kwargs):
    with open(fname, "wb") as f:
        f.write(b"\x89PNG half")
    raise KeyboardInterrupt  # stopped while writing


def test_an_interrupted_heatmap_or_curve_keeps_the_last_whole_png(tmp_path, monkeypatch):
    slide = SlideReader.from_array(np.full((64, 96, 3), 200, np.uint8), mpp=1.0)
    png = attention_heatmap_png(slide, np.ones((2, 3)), tmp_path / "h.png", max_size=200)
    epochs = [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.6, "val_auc": 0.8, "val_accuracy": 0.5}]
    curve = plot_training_curve(epochs, tmp_path / "c.png")
    before = {png: png.read_bytes(), curve: curve.read_bytes()}
    monkeypatch.setattr(Figure, "savefig", _broken_savefig)
    with pytest.raises(KeyboardInterrupt):
        attention_heatmap_png(slide, np.ones((2, 3)) * 2, png, max_size=200)
    with pytest.raises(KeyboardInterrupt):
        plot_training_curve(epochs * 2, curve)
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "h.png"]
