"""``experiments/targets/run.py``: running some runs keeps the earlier rows of results.json."""

from __future__ import annotations

import json

from tests.experiments.conftest import experiment_module

run = experiment_module("targets")


def _row(name: str, seed: int, spearman: float) -> dict:
    return {"run": name, "seed": seed, "test": {"spearman": spearman}}


def test_a_new_run_keeps_the_earlier_rows_and_replaces_its_own(tmp_path):
    path = tmp_path / "results.json"
    earlier = [
        _row("regression_1um", 0, 0.788),
        _row("regression_1um", 1, 0.772),
        _row("multiclass_topk", 0, 0.873),
        _row("gone_from_RUNS", 0, 0.5),
    ]
    path.write_text(json.dumps(earlier))
    now = [_row("regression_1um_48ep", 0, 0.81), _row("regression_1um", 1, 0.79)]
    rows = run.merged(path, now)
    assert [(r["run"], r["seed"], r["test"]["spearman"]) for r in rows] == [
        ("regression_1um", 0, 0.788),
        ("regression_1um", 1, 0.79),  # re-run: the new row
        ("regression_1um_48ep", 0, 0.81),
        ("multiclass_topk", 0, 0.873),
    ]
    assert run.merged(tmp_path / "none.json", now) == sorted(
        now, key=lambda r: (list(run.RUNS).index(r["run"]), r["seed"])
    )
