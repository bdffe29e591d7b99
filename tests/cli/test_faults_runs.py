"""Faults of run folders met by a new user (issue 15), driven through ``gigastream train``.

A run folder is relocatable (moved, it resumes from its own checkpoints); ``--out`` may hold
``..`` or a symlink; ``--resume`` refuses settings that change the run (also without
``config.yaml``) and a resume that cannot go on changes no file of the run; a run killed with
``kill -9`` takes its DataLoader workers and its lock with it; a full disk names the file
and leaves ``failed: <reason>``; unreadable weights and checkpoints are one line.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gigastream.cli.main import main
from gigastream.train import fitting
from tests.cli.clitools import cli as _cli
from tests.cli.clitools import one_line_error as _one_line_error
from tests.cli.clitools import train_args as _train
from tests.train.conftest import write_tiny_yaml


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (the lock file aside) and its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _callback_paths(checkpoint: Path) -> list[str]:
    """Every path stored in a checkpoint's ModelCheckpoint states."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    paths = []
    for callback in state["callbacks"].values():
        for key in ("dirpath", "best_model_path", "kth_best_model_path", "last_model_path"):
            if callback.get(key):
                paths.append(callback[key])
        paths.extend(callback.get("best_k_models", {}))
    return paths


def _val_score(epoch: dict) -> float:
    """The monitored ``val_score`` of an epoch of ``metrics.json`` (AUC, ties: lower loss)."""
    auc = epoch["val_auc"] if epoch["val_auc"] is not None else -1.0
    return auc - 1e-3 * epoch["val_loss"]


def _copy_run(trained_run: Path, out: Path) -> Path:
    shutil.copytree(trained_run, out)
    return out


# ----------------------------------------------------------------------------- 1. relocatable
def test_moved_run_resumes_from_its_own_checkpoints(
    tmp_path, trained_run, manifest, capsys, monkeypatch
):
    runs = tmp_path / "runs"
    config = write_tiny_yaml(tmp_path / "t.yaml", train={"epochs": 1, "heatmaps": 0})

    def killed(*args, **kwargs):
        raise RuntimeError("killed after the predictions")

    with monkeypatch.context() as patch:  # a: its epoch done, its report cut short
        patch.setattr(fitting, "write_heatmaps", killed)
        code, _, _ = _cli(capsys, *_train(manifest, runs / "a", config))
    assert code == 1
    own_predictions = (runs / "a" / "predictions.csv").read_bytes()

    (runs / "a").rename(runs / "a_old")  # mv runs/a runs/a_old; another run at runs/a
    _copy_run(trained_run, runs / "a")
    new_run = _files(runs / "a")
    # other weights: a report from runs/a's best model would not give a's own predictions
    assert new_run["predictions.csv"] != own_predictions

    old = runs / "a_old"
    code, printed, err = _cli(capsys, *_train(manifest, old, config), "--resume")
    assert code == 0, err
    assert str(old / "checkpoints" / "best.ckpt") in printed
    metrics = _metrics(old)
    assert (
        metrics["status"] == "completed" and metrics["best_checkpoint"] == "checkpoints/best.ckpt"
    )
    assert (old / "predictions.csv").read_bytes() == own_predictions  # its own best model
    assert _files(runs / "a") == new_run  # the other run is untouched

    code, _, err = _cli(capsys, *_train(manifest, old, config), "--resume", "--epochs", "2")
    assert code == 0, err
    paths = _callback_paths(old / "checkpoints" / "last.ckpt")  # what the next resume reads
    assert paths and all(p.startswith(str(old / "checkpoints")) for p in paths), paths
    # the best score of the epochs before the move was kept: best.ckpt is the best epoch's
    state = torch.load(old / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    (best_state,) = [s for s in state["callbacks"].values() if s["monitor"] == "val_score"]
    scores = [_val_score(e) for e in _metrics(old)["epochs"]]
    assert len(scores) == 2
    assert float(best_state["best_model_score"]) == pytest.approx(max(scores), abs=1e-6)
    assert _metrics(old)["best_epoch"] == scores.index(max(scores)) + 1
    assert _files(runs / "a") == new_run


# ----------------------------------------------------------------------------- 2. --out paths
@pytest.mark.parametrize("kind", ["dotdot", "symlink"])
def test_out_through_dotdot_or_a_symlink(tmp_path, manifest, capsys, kind):
    (tmp_path / "real").mkdir()
    if kind == "dotdot":
        (tmp_path / "other").mkdir()
        out = tmp_path / "other" / ".." / "real" / "run"
    else:
        (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
        out = tmp_path / "link" / "run"
    config = write_tiny_yaml(tmp_path / "t.yaml", train={"epochs": 1, "heatmaps": 0})
    code, printed, err = _cli(capsys, *_train(manifest, out, config))
    assert code == 0, err
    assert "validation AUC" in printed
    metrics = _metrics(tmp_path / "real" / "run")
    assert metrics["status"] == "completed" and "val_auc" in metrics["final"]
    assert metrics["best_checkpoint"] == "checkpoints/best.ckpt"


# ----------------------------------------------------------------------------- 3. same job
def test_resume_without_config_yaml_refuses_other_settings(tmp_path, trained_run, manifest, capsys):
    out = _copy_run(trained_run, tmp_path / "run")
    (out / "config.yaml").unlink()
    before = _files(out)
    config = write_tiny_yaml(tmp_path / "t.yaml", train={"heatmaps": 0})
    flags = ("--resume", "--epochs", "3")
    code, _, err = _cli(
        capsys, *_train(manifest, out, config), *flags, "--seed", "3", "--lr", "0.05"
    )
    line = _one_line_error(code, err, str(out), "train.seed 0 -> 3", "optim.lr 0.0003 -> 0.05")
    assert "epochs" not in line.split("only")[0]  # more epochs is no difference
    assert _files(out) == before

    # what may change on resume: more epochs, the device, progress bars, workers, heatmaps
    code, _, err = _cli(
        capsys, *_train(manifest, out, config), *flags, "--device", "cpu", "--workers", "0"
    )
    assert code == 0, err
    assert [e["epoch"] for e in _metrics(out)["epochs"]] == [1, 2, 3]


# ----------------------------------------------------------------------------- 4. failed resume
def test_resume_of_a_finished_run_changes_nothing(tmp_path, trained_run, manifest, capsys):
    out = _copy_run(trained_run, tmp_path / "run")
    before = _files(out)
    config = write_tiny_yaml(tmp_path / "t.yaml")
    code, _, err = _cli(capsys, *_train(manifest, out, config), "--resume", "--epochs", "1")
    _one_line_error(code, err, str(out), "--epochs 1", "finished 2 epochs", "--epochs 3")
    code, _, err = _cli(capsys, *_train(manifest, out, config), "--resume")
    _one_line_error(code, err, str(out), "already finished", "--epochs 3")
    assert _files(out) == before
    assert _metrics(out)["status"] == "completed"


def test_resume_from_a_truncated_checkpoint_changes_nothing(
    tmp_path, trained_run, manifest, capsys
):
    out = _copy_run(trained_run, tmp_path / "run")
    last = out / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    before = _files(out)
    config = write_tiny_yaml(tmp_path / "t.yaml")
    code, _, err = _cli(capsys, *_train(manifest, out, config), "--resume", "--epochs", "3")
    _one_line_error(code, err, str(last), "not a readable checkpoint")
    assert _files(out) == before


def test_run_without_a_checkpoint_is_not_told_to_resume(tmp_path, trained_run, manifest, capsys):
    out = _copy_run(trained_run, tmp_path / "run")  # killed in its first epoch
    shutil.rmtree(out / "checkpoints")
    metrics = _metrics(out)
    (out / "metrics.json").write_text(json.dumps({**metrics, "status": "running"}))
    config = write_tiny_yaml(tmp_path / "t.yaml")
    code, _, err = _cli(capsys, *_train(manifest, out, config))
    line = _one_line_error(code, err, str(out), "--overwrite")
    assert "--resume" not in line
    code, _, err = _cli(capsys, *_train(manifest, out, config), "--resume")
    line = _one_line_error(code, err, "nothing to resume", "--overwrite")
    assert "without --resume" not in line


def test_interrupted_checkpoint_goes_once_the_resumed_run_finishes(
    tmp_path, trained_run, manifest, capsys
):
    out = _copy_run(trained_run, tmp_path / "run")
    shutil.copy(out / "checkpoints" / "last.ckpt", out / "checkpoints" / "interrupted.ckpt")
    config = write_tiny_yaml(tmp_path / "t.yaml", train={"heatmaps": 0})
    code, _, err = _cli(capsys, *_train(manifest, out, config), "--resume", "--epochs", "3")
    assert code == 0, err
    assert not (out / "checkpoints" / "interrupted.ckpt").exists()
    assert _metrics(out)["outputs"]["checkpoints"] == [
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
    ]


# ----------------------------------------------------------------------------- 5. kill -9
# `gigastream train` whose DataLoader workers block in reading a slide (as on a huge slide)
BLOCKED_WORKERS = """
import sys, time
import torch.utils.data
from gigastream.train.data import SlideExamples
get = SlideExamples.__getitem__
def blocked(self, index):
    if torch.utils.data.get_worker_info() is not None:
        time.sleep(300)
    return get(self, index)
SlideExamples.__getitem__ = blocked
from gigastream.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid`` (Linux ``/proc``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux's")
def test_kill_9_takes_the_workers_and_the_lock_with_it(tmp_path, manifest, capsys):
    out = tmp_path / "run"
    config = write_tiny_yaml(tmp_path / "t.yaml", train={"epochs": 1, "heatmaps": 0})
    args = [str(a) for a in _train(manifest, out, config, "--workers", "2", "--no-progress")]
    process = subprocess.Popen(
        [sys.executable, "-c", BLOCKED_WORKERS, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"no DataLoader workers appeared:\n{process.communicate()[0]}")
            time.sleep(0.1)
            workers = _children(process.pid)
        time.sleep(1.0)  # the workers are in their (blocked) read
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        deadline = time.monotonic() + 3
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = [pid for pid in workers if _alive(pid)]
        assert not alive, f"DataLoader workers {alive} outlived their killed parent"
    finally:
        process.kill()
        process.stdout.close()
        for pid in workers:  # never leave orphans behind (the code before the fix did)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    code, _, err = _cli(capsys, *_train(manifest, out, config), "--overwrite", "--workers", "0")
    assert code == 0, err  # the folder is free again
    assert _metrics(out)["status"] == "completed"


# ----------------------------------------------------------------------------- 6. full disk
def test_full_disk_names_the_checkpoint(tmp_path, manifest, capsys, monkeypatch):
    def full(obj, file, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # write(2): no file name

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "run"
    config = write_tiny_yaml(tmp_path / "t.yaml", train={"epochs": 1, "heatmaps": 0})
    code, _, err = _cli(capsys, *_train(manifest, out, config))
    best = out / "checkpoints" / "best.ckpt"
    _one_line_error(code, err, f"{best}: no space left on the device", "--out")
    assert "?" not in err
    assert _metrics(out)["status"] == f"failed: {best}: no space left on the device: " + (
        "free some space or choose another --out"
    )


def test_full_disk_while_recording_ends_failed(tmp_path, manifest, capsys, monkeypatch):
    """The disk is full for two writes of metrics.json (the epoch's and the failure's), then
    the space of the failed writes is free again: the record must still end ``failed``."""
    write_text = pathlib.Path.write_text
    calls = {"metrics": 0}

    def full_twice(self, *args, **kwargs):
        if self.name.startswith(".metrics.json."):
            calls["metrics"] += 1
            if calls["metrics"] in (2, 3):
                raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full_twice)
    out = tmp_path / "run"
    config = write_tiny_yaml(tmp_path / "t.yaml", train={"epochs": 1, "heatmaps": 0})
    code, _, err = _cli(capsys, *_train(manifest, out, config))
    _one_line_error(code, err, f"{out / 'metrics.json'}: no space left on the device")
    status = _metrics(out)["status"]
    assert status.startswith("failed: ") and "metrics.json: no space left" in status, status


# ----------------------------------------------------------------------------- 7. one line
def test_garbage_weights_file_is_one_line(tmp_path, manifest, capsys):
    garbage = tmp_path / "weights.pt"
    garbage.write_bytes(bytes(range(256)) * 8)
    out = tmp_path / "run"
    config = write_tiny_yaml(tmp_path / "t.yaml", train={"epochs": 1})
    code, _, err = _cli(capsys, *_train(manifest, out, config), "--weights", garbage)
    line = _one_line_error(code, err, str(garbage), "not a PyTorch state_dict or checkpoint")
    assert "weights_only=False" not in line
    assert not out.exists()


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_text_file_as_checkpoint_is_one_line(tmp_path, manifest, capsys, command):
    text = tmp_path / "notes.ckpt"
    text.write_text("these are my notes, not a checkpoint\n" * 20)
    out = tmp_path / "out"
    inputs = (
        [manifest.parent / "slides" / "synth_000.tif"]
        if command == "predict"
        else ["--manifest", manifest]
    )
    code, _, err = _cli(capsys, command, "--checkpoint", text, "--out", out, *inputs)
    _one_line_error(code, err, str(text), "not a readable checkpoint")
    assert not out.exists()


def _raising(exc: BaseException):
    def run(args):
        raise exc

    return run


@pytest.mark.parametrize(
    "exc, needles",
    [
        (PermissionError(errno.EACCES, "Permission denied", "/data/run"), ["/data/run:", "--out"]),
        (MemoryError(), ["out of memory", "--memory-budget"]),
        (pickle.UnpicklingError("Weights only load failed. ... weights_only=False ..."), []),
    ],
    ids=["PermissionError", "MemoryError", "UnpicklingError"],
)
def test_library_errors_are_one_line(tmp_path, capsys, monkeypatch, exc, needles):
    from gigastream.cli import train

    monkeypatch.setattr(train, "run", _raising(exc))
    code, _, err = _cli(capsys, "train", "--out", tmp_path / "run")
    line = _one_line_error(code, err, *needles)
    assert "weights_only=False" not in line


def test_lightning_misconfiguration_is_one_line(tmp_path, capsys, monkeypatch):
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from gigastream.cli import train

    message = "You restored a checkpoint with current_epoch=2, but max_epochs=1."
    monkeypatch.setattr(train, "run", _raising(MisconfigurationException(message)))
    code, _, err = _cli(capsys, "train", "--out", tmp_path / "run")
    _one_line_error(code, err, message)
    code, _, err = _cli(capsys, "-v", "train", "--out", tmp_path / "run")  # and the traceback
    assert code == 1 and "Traceback" in err and err.strip().endswith(message)


def test_a_bug_keeps_its_traceback(tmp_path, capsys, monkeypatch):
    from gigastream.cli import train

    monkeypatch.setattr(train, "run", _raising(KeyError("a bug")))
    with pytest.raises(KeyError, match="a bug"):
        main(["train", "--out", str(tmp_path / "run")])
