"""``experiments/breast_ucsb/run.py``: the plan, and finished runs reused only when what they
depend on (settings, split, fold, seed) is unchanged."""

from __future__ import annotations

import argparse
import json

import pytest

from tests.experiments.conftest import experiment_module

run = experiment_module("breast_ucsb")


def _args(**kw) -> argparse.Namespace:
    args = run.build_parser().parse_args([])
    return argparse.Namespace(**{**vars(args), **kw})


def test_the_plan_gives_each_configuration_its_repeats_and_epochs():
    plan = run.parse_plan(_args(plan=["gated-accumulate=0,1@5", "gated-frozen=2"], epochs=7))
    assert plan == [("gated-accumulate", [0, 1], 5), ("gated-frozen", [2], 7)]
    everything = run.parse_plan(_args(configs=["abmil-baseline"], repeats=[3], epochs=4))
    assert everything == [("abmil-baseline", [3], 4)]
    with pytest.raises(SystemExit, match="CONFIG=R,R"):
        run.parse_plan(_args(plan=["nope=0"]))


def test_every_configuration_is_valid_gigastream_settings(tmp_path):
    from gigastream.train.config_files import load_config

    args = _args(out=tmp_path)
    for name in run.CONFIGS:
        config = load_config(run.run_config(args, name))
        strategy = run.CONFIGS[name][0]
        if strategy == "streaming":
            assert config.model.kind == "streaming"
        else:
            assert config.model.kind == "patches" and config.patches.strategy == strategy


def test_a_finished_run_is_reused_only_with_the_same_settings_split_and_fold(tmp_path):
    config, splits = tmp_path / "c.yaml", tmp_path / "s.csv"
    config.write_text("train: {epochs: 5}\n")
    splits.write_text("slide_id,fold\na,0\n")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"status": "completed"}))
    key = run.run_key(config, splits, fold=0, seed=0)
    assert not run.is_done(folder, key)  # finished, but by whom is not known
    (folder / "run_key.txt").write_text(key + "\n")
    assert run.is_done(folder, key)
    assert not run.is_done(folder, run.run_key(config, splits, fold=1, seed=0))
    assert not run.is_done(folder, run.run_key(config, splits, fold=0, seed=1))
    config.write_text("train: {epochs: 8}\n")  # other settings under the same name
    assert not run.is_done(folder, run.run_key(config, splits, fold=0, seed=0))


def test_the_queue_worker_runs_jobs_in_order_and_keeps_failures(tmp_path, capsys):
    """``--reuse-processes``: a worker takes the queue's jobs in order, runs each one's
    ``gigastream`` in-process with its output in the run's log, and marks what failed."""
    queue = tmp_path / "queue"
    queue.mkdir()
    jobs = [
        (["train", "--help"], "ok"),  # exits 0 (argparse's SystemExit)
        (["train", "--manifest", str(tmp_path / "none.csv"), "--out", str(tmp_path / "x")], "bad"),
    ]
    for k, (argv, name) in enumerate(jobs):
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        job = {"argv": argv, "folder": str(folder), "key": f"key-{name}", "label": name}
        (queue / f"{k:05d}.json").write_text(json.dumps(job))
    assert run.worker(queue) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ok: ok in") and out[1].startswith("bad: FAILED (exit 1)")
    ok, bad = tmp_path / "runs" / "ok", tmp_path / "runs" / "bad"
    assert (ok / "run_key.txt").read_text() == "key-ok\n" and (ok / "wall_seconds.json").is_file()
    assert "usage: gigastream train" in (tmp_path / "runs" / "ok.log").read_text()
    assert not (bad / "run_key.txt").exists()  # a failed run is not reused
    assert "none.csv" in (tmp_path / "runs" / "bad.log").read_text()
    assert [p.name for p in queue.iterdir()] == ["00001.failed"]
