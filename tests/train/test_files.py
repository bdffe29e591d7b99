"""Files of a run (``gigastream.train.files``): every checkpoint and YAML file is read safely,
the run lock, write failures.

``torch.load`` anywhere in the package is called with ``weights_only=True`` and YAML is read
with ``yaml.safe_load`` only, so a checkpoint or config file cannot run code. The run lock
goes with its process (never with a forked child), and the lock of a dead owner is taken
over; a failed write names its file.
"""

from __future__ import annotations

import ast
import errno
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gigastream.train.files import (
    RunError,
    RunRecord,
    describe_os_error,
    lock_is_held,
    run_lock,
    write_json,
)

SRC = Path(__file__).resolve().parents[2] / "src"


def _calls(attribute: str):
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value
                if node.func.attr == attribute and isinstance(owner, ast.Name):
                    yield path, owner.id, node


def test_every_torch_load_is_weights_only():
    loads = [(p, n) for p, owner, n in _calls("load") if owner == "torch"]
    assert loads, "no torch.load( call found: is SRC right?"
    for path, node in loads:
        flags = {k.arg: k.value for k in node.keywords}
        assert isinstance(flags.get("weights_only"), ast.Constant), f"{path}:{node.lineno}"
        assert flags["weights_only"].value is True, f"{path}:{node.lineno}"


def test_yaml_is_read_with_safe_load_only():
    unsafe = ("load", "load_all", "full_load", "full_load_all", "unsafe_load", "unsafe_load_all")
    for attribute in unsafe:
        found = [f"{p}:{n.lineno}" for p, owner, n in _calls(attribute) if owner == "yaml"]
        assert not found, f"yaml.{attribute} used: {found}"
    assert any(owner == "yaml" for _, owner, _ in _calls("safe_load"))
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "from yaml import" not in text and "yaml.Loader" not in text, path


# ----------------------------------------------------------------------------- the run lock
def _exited_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _ready_then_sleep(ready) -> None:
    ready.set()
    time.sleep(30)


def test_forked_children_do_not_hold_the_run_lock(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")  # as DataLoader workers are started
    ready = context.Event()
    with run_lock(tmp_path):
        child = context.Process(target=_ready_then_sleep, args=(ready,), daemon=True)
        child.start()
        assert ready.wait(30)
    try:
        assert not lock_is_held(tmp_path)  # the child lives on, the lock went with its run
        with run_lock(tmp_path):  # taken again by this process
            assert (tmp_path / ".lock").read_text() == str(os.getpid())
    finally:
        child.kill()
        child.join()


# a process that holds RUN/.lock for a dead owner: a child that outlived a killed run
HOLD_LOCK = """
import fcntl, sys, time
handle = open(sys.argv[1], "a+")
fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
handle.seek(0); handle.truncate(); handle.write(sys.argv[2]); handle.flush()
print("held", flush=True)
time.sleep(60)
"""


def test_lock_of_a_dead_owner_is_taken_over(tmp_path, caplog):
    dead = _exited_pid()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path / ".lock"), str(dead)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not lock_is_held(tmp_path)  # its owner is dead
        with caplog.at_level(logging.WARNING), run_lock(tmp_path):
            assert (tmp_path / ".lock").read_text() == str(os.getpid())
            with pytest.raises(RunError, match=f"another gigastream process \\(pid {os.getpid()}"):
                with run_lock(tmp_path):
                    raise AssertionError("a held lock was taken twice")
        assert f"pid {dead}" in caplog.text and "taking it over" in caplog.text
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_lock_of_a_live_owner_is_refused(tmp_path):
    with run_lock(tmp_path):
        assert lock_is_held(tmp_path)
        with pytest.raises(RunError, match="wait for it to finish or choose another --out"):
            with run_lock(tmp_path):
                raise AssertionError("a held lock was taken twice")
    assert not lock_is_held(tmp_path)


# ----------------------------------------------------------------------------- write failures
def test_failed_write_names_the_file(tmp_path, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # write(2): no file name

    monkeypatch.setattr(Path, "write_text", full)
    path = tmp_path / "metrics.json"
    with pytest.raises(OSError) as caught:
        write_json(path, {"status": "running"})
    assert caught.value.filename == str(path)
    assert describe_os_error(caught.value) == (
        f"{path}: no space left on the device: free some space or choose another --out"
    )
    assert list(tmp_path.iterdir()) == []


def test_record_that_could_not_be_saved_knows_it(tmp_path, monkeypatch):
    record = RunRecord(tmp_path / "metrics.json", {"status": "running"})
    record.save()
    assert record.saved
    write_text = Path.write_text

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError):
        record.update(epochs=[1])
    assert not record.saved
    record.update(status="failed: disk full")  # on the way out: never raises
    assert not record.saved
    monkeypatch.setattr(Path, "write_text", write_text)
    record.save()
    assert record.saved and RunRecord.load(record.path).data["status"] == "failed: disk full"
