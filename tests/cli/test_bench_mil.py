"""`gigastream bench mil` end to end at a tiny size (one worker in its own process)."""

from __future__ import annotations

import json
import sys

import pytest

from gigastream.cli.main import main

TINY = ["bench", "mil", "--encoders", "small_cnn", "--patch-size", "16", "--repeats", "1"]


def test_bench_mil_writes_json_and_markdown(tmp_path, capsys):
    out, table = tmp_path / "bench.json", tmp_path / "bench.md"
    argv = [*TINY, "--bag-sizes", "8", "--strategies", "accumulate", "--threads", "1"]
    assert main([*argv, "--out", str(out), "--markdown", str(table)]) == 0
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert (row["encoder"], row["strategy"], row["bag_size"], row["status"]) == (
        "small_cnn",
        "accumulate",
        8,
        "ok",
    )
    assert row["seconds_per_step"] > 0 and row["peak_rss_mib"] > row["rss_before_bag_mib"] > 0
    assert row["threads"] == 1  # the worker's, a fresh process
    if sys.platform.startswith("linux"):  # the peak RSS is reset just before the bag
        assert row["peak_rss_since_bag"] is True
    assert result["settings"]["patch_size"] == 16
    printed = capsys.readouterr().out
    assert "| small_cnn | accumulate | 8 | ok |" in printed
    assert table.read_text() == result["markdown"]


def test_bench_mil_skips_what_does_not_fit(tmp_path):
    out = tmp_path / "bench.json"
    argv = [*TINY, "--bag-sizes", "8", "--strategies", "baseline", "--memory-limit", "1MiB"]
    assert main([*argv, "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["status"].startswith("skipped: estimated") and row["estimated_mib"] > 1


@pytest.mark.parametrize(
    "bad",
    [["--strategies", "fast"], ["--bag-sizes", "8", "0"], ["--patch-size", "x"]],
)
def test_bench_mil_bad_arguments_exit_2(tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as exc:
        main([*TINY, *bad, "--out", str(tmp_path / "x.json")])
    assert exc.value.code == 2
    assert "gigastream bench mil: error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (["--encoders", "no_such_net"], "encoder no_such_net: unknown encoder"),
        (["--precision", "16-mixed"], "needs --device cuda"),
        (["--memory-limit", "lots"], "cannot read memory size"),
    ],
)
def test_bench_mil_bad_settings_exit_1(tmp_path, capsys, bad, message):
    out = tmp_path / "x.json"
    assert main([*TINY, *bad, "--out", str(out)]) == 1
    assert message in capsys.readouterr().err and not out.exists()
