"""Tracebacks and misleading messages of the commands a new user meets (issue 15).

Settings refused before the run folder is written (``--seed -1``, ``--strategy nonsense``, a
non-finite number in the YAML file); messages that name the flag or key and the fix
(``--memory-budget 1..2GiB``, ``model.head_options.k: 0``); flags that were silently
ignored (``--fold`` without ``--splits``, ``heatmap --lesions`` at a missing folder);
``predict``/``evaluate``/``heatmap`` stopped promptly by SIGTERM and SIGINT with no partial
output; ``n/a`` for an undefined validation AUC, no torch warning in the NaN-loss message,
and a warning for a tile so small that streaming costs many times the compute.
"""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml

from tests.cli.clitools import cli, one_line_error, train_args
from tests.train.conftest import copy_manifest, write_tiny_yaml


def _nothing_written(tmp_path: Path, *kept: str) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


# ----------------------------------------------------------------------------- 1. before writing
@pytest.mark.parametrize(
    ("flags", "sections", "needles"),
    [
        (["--seed", "-1"], {}, ["train.seed", "--seed", ">= 0", "got -1"]),
        (["--strategy", "nonsense"], {}, ["--strategy", "'nonsense'", "auto", "ddp"]),
        (["--strategy", "dp"], {}, ["--strategy", "'dp'", "did you mean 'ddp'"]),
        ([], {"optim": {"weight_decay": math.nan}}, ["optim.weight_decay", "finite", "nan"]),
        ([], {"optim": {"grad_clip": math.inf}}, ["optim.grad_clip", "finite", "inf"]),
        ([], {"train": {"val_fraction": math.nan}}, ["train.val_fraction", "nan"]),
        ([], {"data": {"tissue": {"min_saturation": math.nan}}}, ["data.tissue.min_saturation"]),
    ],
    ids=["seed", "strategy", "strategy-typo", "nan", "inf", "train-nan", "tissue-nan"],
)
def test_bad_settings_are_refused_before_the_run_folder(
    tmp_path, manifest, capsys, flags, sections, needles
):
    config = write_tiny_yaml(tmp_path / "t.yaml", **sections)
    code, _, err = cli(capsys, *train_args(manifest, tmp_path / "run", config), *flags)
    one_line_error(code, err, *needles)
    _nothing_written(tmp_path, "t.yaml")  # no `failed` run folder that needs --overwrite


# ----------------------------------------------------------------------------- 2. named
@pytest.mark.parametrize("kind", ["streaming", "patches"])
def test_a_bad_memory_budget_names_the_flag_and_a_size(tmp_path, manifest, capsys, kind):
    config = write_tiny_yaml(tmp_path / "t.yaml")
    flags = ["--memory-budget", "1..2GiB"]
    if kind == "patches":  # the patch flags stand in for the streamed model's
        config = write_tiny_yaml(tmp_path / "t.yaml", model={"kind": "patches"})
        flags += ["--patch-size", "32"]
    code, _, err = cli(capsys, *train_args(manifest, tmp_path / "run", config), *flags)
    line = one_line_error(code, err, "--memory-budget", "'1..2GiB'", "8GiB")
    assert "could not convert" not in line
    _nothing_written(tmp_path, "t.yaml")


def test_a_bad_head_option_names_its_key_and_range(tmp_path, manifest, capsys):
    settings = yaml.safe_load(write_tiny_yaml(tmp_path / "t.yaml").read_text())
    settings["model"].update(head="topk", head_options={"k": 0})
    config = tmp_path / "t.yaml"
    config.write_text(yaml.safe_dump(settings))
    code, _, err = cli(capsys, *train_args(manifest, tmp_path / "run", config))
    one_line_error(code, err, "model.head_options.k", ">= 1", "got 0")
    _nothing_written(tmp_path, "t.yaml")


# ----------------------------------------------------------------------------- 3. not ignored
def test_fold_without_splits_is_an_error(tmp_path, manifest, capsys):
    config = write_tiny_yaml(tmp_path / "t.yaml")
    code, _, err = cli(capsys, *train_args(manifest, tmp_path / "run", config), "--fold", "0")
    one_line_error(code, err, "--fold needs --splits FILE")
    code, _, err = cli(capsys, *train_args(manifest, tmp_path / "run", config), "--folds", "all")
    one_line_error(code, err, "--folds all needs --splits")  # not told about --fold
    _nothing_written(tmp_path, "t.yaml")


@pytest.mark.parametrize("where", ["missing", "file"])
def test_heatmap_lesions_must_be_a_folder(tmp_path, trained_run, manifest, capsys, where):
    lesions = tmp_path / "lesions"
    if where == "file":
        lesions.write_text("not a folder\n")
    slide = manifest.parent / "slides" / "synth_000.tif"
    checkpoint = trained_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "out"
    code, _, err = cli(
        capsys, "heatmap", "--checkpoint", checkpoint, "--out", out, "--lesions", lesions, slide
    )
    one_line_error(code, err, f"--lesions {lesions}", "folder")
    assert not out.exists()


# ----------------------------------------------------------------------------- 4. signals
def _command(name: str, trained_run: Path, manifest: Path, out: Path) -> list:
    checkpoint = trained_run / "checkpoints" / "best.ckpt"
    slides = sorted((manifest.parent / "slides").glob("*.tif"))
    inputs = ["--manifest", manifest] if name == "evaluate" else slides
    flags = ["--workers", "0", "--no-progress"]
    return [name, "--checkpoint", checkpoint, "--out", out, *flags, *inputs]


@pytest.mark.parametrize(
    ("command", "signum"),
    [("predict", signal.SIGTERM), ("evaluate", signal.SIGTERM), ("heatmap", signal.SIGINT)],
    ids=["predict-SIGTERM", "evaluate-SIGTERM", "heatmap-SIGINT"],
)
def test_a_signal_stops_prediction_at_once(
    tmp_path, trained_run, manifest, capsys, monkeypatch, command, signum
):
    from gigastream.train.module import MILClassifier

    predict_step, steps = MILClassifier.predict_step, []

    def signalled(self, example, batch_idx):
        steps.append(batch_idx)
        if batch_idx == 1:  # as a scheduler's SIGTERM (or a Ctrl+C) mid-way
            os.kill(os.getpid(), signum)
            time.sleep(0.5)  # the handler runs here
        return predict_step(self, example, batch_idx)

    monkeypatch.setattr(MILClassifier, "predict_step", signalled)
    # this process's handlers while no command runs (a SIGTERM must not end pytest)
    before = {s: signal.signal(s, lambda *a: None) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        ours = {s: signal.getsignal(s) for s in before}
        out = tmp_path / "out"
        code, _, err = cli(capsys, *_command(command, trained_run, manifest, out))
        after = {s: signal.getsignal(s) for s in before}
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 128 + signum, err
    assert len(lines) == 1 and re.match(r"^gigastream [a-z]+: interrupted: ", lines[0]), err
    assert signal.Signals(signum).name in lines[0]
    assert steps == [0, 1]  # no slide after the signal
    assert not (out / "predictions.csv").exists() and not (out / "metrics.json").exists()
    assert not list(out.glob("*.png")) and not list(out.glob(".*.tmp"))
    assert after == ours  # the handlers are given back (also SIGINT, which Lightning ignores)


# `gigastream predict` whose every slide takes a second (a big slide), touching a file when
# it starts the first
SLOW_PREDICT = """
import sys, time
from pathlib import Path
from gigastream.train.module import MILClassifier
step = MILClassifier.predict_step
def slow(self, example, batch_idx):
    Path(sys.argv[1]).touch()
    time.sleep(1.0)
    return step(self, example, batch_idx)
MILClassifier.predict_step = slow
from gigastream.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is POSIX's")
def test_sigterm_stops_a_predict_process_promptly(tmp_path, trained_run, manifest):
    out, started = tmp_path / "out", tmp_path / "started"
    args = [str(a) for a in _command("predict", trained_run, manifest, out)]
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_PREDICT, str(started), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"predict did not start:\n{process.communicate()}")
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        try:
            _, err = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"SIGTERM was ignored:\n{process.communicate()}")
        stopped = time.monotonic() - sent
    finally:
        process.kill()
    lines = [line for line in err.splitlines() if line.strip()]
    assert process.returncode == 143, err
    assert lines == ["gigastream predict: interrupted: stopped by SIGTERM"], err
    assert stopped < 5
    assert not (out / "predictions.csv").exists() and not list(out.glob(".*.tmp"))


# ----------------------------------------------------------------------------- 5. words
def test_a_one_class_validation_set_stops_before_training(tmp_path, manifest, capsys):
    def positive_validation(rows):  # the validation slides are of one class
        for row in rows:
            row["split"] = "val" if row["slide_id"] in ("synth_000", "synth_001") else "train"
        return rows

    one_class = copy_manifest(manifest, tmp_path / "m.csv", positive_validation)
    config = write_tiny_yaml(tmp_path / "t.yaml", train={"epochs": 1, "heatmaps": 0})
    code, _, err = cli(capsys, *train_args(one_class, tmp_path / "run", config))
    one_line_error(
        code, err, "the validation slides that can be used are all of class 'positive'",
        "synth_000, synth_001", "validation AUC",
    )  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_an_undefined_auc_is_na_with_the_reason():
    """What a run prints when its validation AUC is undefined after all (a validation
    class's slides failing mid-run): n/a and why, never nan."""
    from gigastream.train.recorder import scores_words

    words = scores_words({"val_auc": math.nan, "val_accuracy": 0.5})
    assert words == "AUC n/a (one class among the validation slides), accuracy 0.500"


def test_nan_loss_message_carries_no_torch_warning(tmp_path, manifest, capsys, monkeypatch):
    from gigastream.models.streaming_mil import StreamingMIL

    loss = StreamingMIL.loss
    monkeypatch.setattr(StreamingMIL, "loss", lambda self, out, y: loss(self, out, y) * math.nan)
    config = write_tiny_yaml(
        tmp_path / "t.yaml", train={"epochs": 1, "heatmaps": 0, "bn_calibration": 0}
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = cli(capsys, *train_args(manifest, tmp_path / "run", config))
    one_line_error(code, err, "the training loss is nan", "optim.lr")
    leaked = [str(w.message) for w in caught if "requires_grad" in str(w.message)]
    assert not leaked, leaked


# ----------------------------------------------------------------------------- 6. tiny tiles
def _compute_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "--tile-size" in r.getMessage()
    ]


def test_a_tiny_tile_warns_of_its_compute_in_a_dry_run(tmp_path, manifest, capsys, caplog):
    config = write_tiny_yaml(tmp_path / "t.yaml")
    flags = ["--arch", "resnet18", "--tile-size", "8", "--dry-run"]
    with caplog.at_level(logging.WARNING):
        code, _, err = cli(capsys, *train_args(manifest, tmp_path / "run", config), *flags)
    assert code == 0, err
    (line,) = _compute_warnings(caplog)
    assert "--tile-size 8" in line and "464" in line and "larger --tile-size" in line
    assert "\n" not in line

    caplog.clear()  # the tiny run's own tile: no warning
    with caplog.at_level(logging.WARNING):
        code, _, err = cli(capsys, *train_args(manifest, tmp_path / "run", config), "--dry-run")
    assert code == 0, err
    assert _compute_warnings(caplog) == []


def test_a_tiny_tile_warns_of_its_compute_before_training(
    tmp_path, manifest, capsys, caplog, monkeypatch
):
    from gigastream.train import fitting

    def stop(*args, **kwargs):  # training at 464x would take minutes: stop before it
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(fitting, "calibrate_model", stop)
    seen_at_check_out = []  # warnings already given when the run folder is first touched
    check_out = fitting.check_out

    def recording_check_out(*args, **kwargs):
        seen_at_check_out.append(len(_compute_warnings(caplog)))
        return check_out(*args, **kwargs)

    monkeypatch.setattr(fitting, "check_out", recording_check_out)
    config = write_tiny_yaml(tmp_path / "t.yaml", train={"epochs": 1, "heatmaps": 0})
    flags = ["--arch", "resnet18", "--tile-size", "8"]
    with caplog.at_level(logging.WARNING):
        code, _, err = cli(capsys, *train_args(manifest, tmp_path / "run", config), *flags)
    one_line_error(code, err, "stopped by the test")
    (line,) = _compute_warnings(caplog)  # once: the plan prepare made is not made again
    assert "464" in line and "conventional" in line
    assert seen_at_check_out == [1]  # said before the run folder was made
