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
