"""Training a run folder (``gigastream.train.fitting``) end to end and under faults.

A finished run holds every output; a run killed with ``kill -9`` and resumed ends with the
same weights, bit for bit, as one that was never stopped; SIGTERM/SIGINT, a NaN loss and a
late failure each leave a true ``metrics.json`` status, loadable checkpoints and no
temporary files; unreadable slides are skipped and listed.
"""

from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gigastream.train.config_files import load_config
from gigastream.train.files import RunError, load_checkpoint_file, run_lock
from gigastream.train.fitting import check_out, fit
from gigastream.train.prediction import load_classifier
from gigastream.train.preparation import prepare, resolved_config
from tests.train.conftest import TINY, copy_manifest, tiny_config, write_tiny_yaml

# A `gigastream train` process whose training steps sleep from the second epoch on, so a
# signal sent when checkpoints/last.ckpt appears (end of epoch 1) lands mid-epoch.
SLOW_TRAIN = """
import sys, time
from gigastream.train.module import MILClassifier
step = MILClassifier.training_step
def slow(self, *args):
    if self.current_epoch >= 1:
        time.sleep(0.5)
    return step(self, *args)
MILClassifier.training_step = slow
from gigastream.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text(), parse_constant=pytest.fail)


def _temporaries(out: Path) -> list[Path]:
    return sorted(out.rglob("*.tmp"))


def _start_slow_train(manifest: Path, out: Path, config: Path, epochs: int) -> subprocess.Popen:
    args = ["train", "--manifest", str(manifest), "--out", str(out), "--config", str(config)]
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_TRAIN, *args, "--epochs", str(epochs), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if process.poll() is not None:
            pytest.fail(f"training ended before {path} appeared:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


# ----------------------------------------------------------------------------- 1. outputs
def test_fit_writes_every_output(trained_run, manifest):
    out = trained_run
    metrics = _metrics(out)
    assert metrics["status"] == "completed"
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert metrics["skipped_slides"] == {}

    # config.yaml is the fully resolved config: --config RUN/config.yaml re-runs the job
    expected = resolved_config(prepare(tiny_config(manifest), check_plan=False))
    rerun = load_config(out / "config.yaml")
    assert rerun == expected
    assert rerun.class_names == ["negative", "positive"] and Path(rerun.manifest).is_absolute()
    best = load_checkpoint_file(out / "checkpoints" / "best.ckpt")
    assert load_config(best["gigastream"]["config"]) == rerun

    assert (out / "checkpoints" / "last.ckpt").is_file()
    last = load_checkpoint_file(out / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 1 and len(last["gigastream"]["epoch_log"]) == 2

    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["slide_id", "label", "p_negative", "p_positive"]
    assert sorted(r[0] for r in rows[1:]) == sorted(metrics["val_slides"])
    for row in rows[1:]:
        assert row[1] in ("negative", "positive")
        assert float(row[2]) + float(row[3]) == pytest.approx(1.0, abs=2e-6)

    assert (out / "training_curve.png").stat().st_size > 1000
    assert list((out / "logs").rglob("metrics.csv"))
    heatmaps = sorted((out / "heatmaps").glob("*.png"))
    assert len(heatmaps) == TINY["train"]["heatmaps"] == len(metrics["outputs"]["heatmaps"])
    assert _temporaries(out) == []


# ----------------------------------------------------------------------------- 6. resume
def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, manifest):
    config = write_tiny_yaml(tmp_path / "tiny.yaml")
    reference = tmp_path / "reference"
    fit(tiny_config(manifest, train={"epochs": 3}), reference)

    out = tmp_path / "killed"
    process = _start_slow_train(manifest, out, config, epochs=3)
    try:
        _wait_for(out / "checkpoints" / "last.ckpt", process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
        process.stdout.close()
    assert load_checkpoint_file(out / "checkpoints" / "last.ckpt")["epoch"] == 0
    assert _metrics(out)["status"] == "running"  # what kill -9 leaves
    with pytest.raises(RunError, match="stopped without finishing .* killed, e.g. out of memory"):
        check_out(out, resume=False, overwrite=False)  # named as such, with the fix
    with run_lock(out), pytest.raises(RunError, match="already holds a run"):
        check_out(out, resume=False, overwrite=False)  # a live process: not called killed

    metrics = fit(tiny_config(manifest, train={"epochs": 3}), out, resume=True)
    assert metrics["status"] == "completed"
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]

    resumed = load_checkpoint_file(out / "checkpoints" / "last.ckpt")
    uninterrupted = load_checkpoint_file(reference / "checkpoints" / "last.ckpt")
    assert resumed["epoch"] == uninterrupted["epoch"] == 2
    assert resumed["state_dict"].keys() == uninterrupted["state_dict"].keys()
    for name, tensor in uninterrupted["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], tensor, rtol=0, atol=0, msg=name)
    (optimizer,), (expected,) = resumed["optimizer_states"], uninterrupted["optimizer_states"]
    for index, state in expected["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(optimizer["state"][index][name], value, rtol=0, atol=0)
    assert resumed["lr_schedulers"] == uninterrupted["lr_schedulers"]
    losses = [e["train_slide_losses"] for e in metrics["epochs"]]
    assert losses == [e["train_slide_losses"] for e in _metrics(reference)["epochs"]]


# ----------------------------------------------------------------------------- 7. signals
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_interrupts_with_a_checkpoint(tmp_path, manifest, signum):
    out = tmp_path / "run"
    process = _start_slow_train(manifest, out, write_tiny_yaml(tmp_path / "tiny.yaml"), 3)
    try:
        _wait_for(out / "checkpoints" / "last.ckpt", process)
        process.send_signal(signum)
        code = process.wait(timeout=120)
        output = process.stdout.read()
    finally:
        process.kill()
        process.stdout.close()
    assert code != 0, output
    assert "interrupted" in output
    assert _metrics(out)["status"] == "interrupted"
    interrupted = load_checkpoint_file(out / "checkpoints" / "interrupted.ckpt")
    assert interrupted["epoch"] == 1  # stopped inside the second epoch
    assert _temporaries(out) == []


# ----------------------------------------------------------------------------- 8. NaN loss
def test_non_finite_loss_stops_naming_slide_and_epoch(tmp_path, manifest, monkeypatch):
    from gigastream.models.streaming_mil import StreamingMIL
    from gigastream.train.module import MILClassifier, NonFiniteLossError

    state = {"epoch": 0}
    epoch_start, loss = MILClassifier.on_train_epoch_start, StreamingMIL.loss

    def remember_epoch(self):
        state["epoch"] = self.current_epoch
        epoch_start(self)

    def nan_in_epoch_2(self, out, label):
        value = loss(self, out, label)
        return value * math.nan if state["epoch"] == 1 else value

    monkeypatch.setattr(MILClassifier, "on_train_epoch_start", remember_epoch)
    monkeypatch.setattr(StreamingMIL, "loss", nan_in_epoch_2)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"slide 'synth_\d+' in epoch 2"):
        fit(tiny_config(manifest), out)

    status = _metrics(out)["status"]
    assert status.startswith("failed: NonFiniteLossError") and "epoch 2" in status
    module, _ = load_classifier(out / "checkpoints" / "last.ckpt")  # epoch 1 stays usable
    assert load_checkpoint_file(out / "checkpoints" / "last.ckpt")["epoch"] == 0
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert not (out / "checkpoints" / "interrupted.ckpt").exists()
    assert _temporaries(out) == []


# ----------------------------------------------------------------------------- 10. bad slides
def test_garbage_slide_file_is_skipped(tmp_path, manifest):
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))

    def add_garbage(rows):
        return [*rows, {**rows[0], "slide_id": "garbage", "path": str(garbage), "case_id": "g"}]

    bad = copy_manifest(manifest, tmp_path / "manifest.csv", add_garbage)
    metrics = fit(tiny_config(bad, train={"epochs": 1, "heatmaps": 0}), tmp_path / "run")
    assert metrics["status"] == "completed"
    assert list(metrics["skipped_slides"]) == ["garbage"]
    assert "garbage.tif" in metrics["skipped_slides"]["garbage"]


def _corrupt_level0_tile(path: Path) -> None:
    """Overwrite the level-0 tile with the most tissue with bytes no decoder accepts."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offsets, counts = page.dataoffsets, page.databytecounts
        across = -(-page.imagewidth // page.tilewidth)
        image = page.asarray()
    saturation = image.max(axis=-1).astype(int) - image.min(axis=-1)
    tile = page.tilewidth
    tissue = []
    for i in range(len(offsets)):
        row, col = divmod(i, across)
        tissue.append(
            saturation[row * tile : (row + 1) * tile, col * tile : (col + 1) * tile].mean()
        )
    index = int(np.argmax(tissue))
    with open(path, "r+b") as f:
        f.seek(offsets[index])
        f.write(b"\xff\xd8" + b"\x00" * (counts[index] - 2))  # a JPEG start, then nothing


def test_corrupt_tile_read_mid_stream_is_skipped(tmp_path, manifest):
    import shutil

    victim = tmp_path / "corrupt.tif"
    shutil.copy(manifest.parent / "slides" / "synth_001.tif", victim)
    _corrupt_level0_tile(victim)

    def use_victim(rows):
        rows = [rows[i] for i in (0, 1, 2, 4)]  # two slides of each class: a 2 + 2 split
        rows[1] = {**rows[1], "slide_id": "corrupt", "path": str(victim), "case_id": "c"}
        return rows

    bad = copy_manifest(manifest, tmp_path / "manifest.csv", use_victim)
    config = tiny_config(
        bad,
        data={"mpp": 0.5, "preload_pixels": 0},  # stream level 0 lazily; the mask from level 1
        train={"epochs": 1, "heatmaps": 0, "val_fraction": 0.5},
    )
    metrics = fit(config, tmp_path / "run")
    assert metrics["status"] == "completed"
    assert list(metrics["skipped_slides"]) == ["corrupt"]
    assert "corrupt.tif: reading level 0" in metrics["skipped_slides"]["corrupt"]
    assert (tmp_path / "run" / "masks" / "corrupt.png").is_file()  # the mask read fine
    assert metrics["final"]["slides"] + len(metrics["epochs"][0]["train_slide_losses"]) == 3


# ----------------------------------------------------------------------------- 12. late failure
def test_late_failure_is_recorded(tmp_path, manifest, monkeypatch):
    from gigastream.train import fitting

    def broken(*args, **kwargs):
        raise RuntimeError("the heatmap writer broke")

    monkeypatch.setattr(fitting, "write_heatmaps", broken)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="heatmap writer broke"):
        fit(tiny_config(manifest, train={"epochs": 1}), out)
    assert _metrics(out)["status"] == "failed: RuntimeError: the heatmap writer broke"
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert _temporaries(out) == []
    assert not list(out.rglob(".write-test*"))
