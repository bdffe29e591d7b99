"""The MIL bag benchmark's driver: rows, estimates, skips, failures (workers run in-process)."""

from __future__ import annotations

import json
import signal

import pytest

from gigastream.models import bag_bench_worker as bench_worker
from gigastream.models.bag_benchmark import (
    MILBenchConfig,
    estimate_bytes,
    run_mil_benchmark,
    worker_outcome,
)

TINY = {"encoders": ("small_cnn",), "patch_size": 16, "repeats": 1, "warmup": 0}


def in_process(args: dict) -> dict:
    """A launcher that runs the worker in this process (fast; its memory is the test's)."""
    return {"status": "ok", **bench_worker.run_worker(**args)}


def refuse(args: dict) -> dict:
    raise AssertionError(f"no worker should have been launched: {args}")


def test_tiny_run_writes_every_row(tmp_path):
    config = MILBenchConfig(**TINY, bag_sizes=(32, 8))
    out, table = tmp_path / "b.json", tmp_path / "b.md"
    result = run_mil_benchmark(config, out=out, markdown=table, launch=in_process)
    assert json.loads(out.read_text())["rows"] == result["rows"]
    rows = result["rows"]
    assert [(r["strategy"], r["bag_size"]) for r in rows] == [
        (s, n) for n in (8, 32) for s in ("baseline", "accumulate", "sample", "frozen")
    ]
    for r in rows:
        assert r["status"] == "ok", r
        assert r["seconds_per_step"] > 0 and len(r["seconds"]) == 1
        assert r["seconds_per_patch"] == pytest.approx(r["seconds_per_step"] / r["bag_size"])
        assert r["peak_rss_mib"] >= r["rss_before_bag_mib"] > 0
        assert r["working_mib"] == pytest.approx(r["peak_increase_mib"] - r["bag_mib"], abs=0.2)
        assert r["estimated_mib"] > 0
    assert rows[-1]["seconds_per_step_cached"] > 0  # frozen: the head's step on cached features
    checks = result["checks"]["small_cnn"]
    assert checks["accumulate_memory"]["largest_bag"] == 32
    assert set(checks["accumulate_vs_baseline_time"]["by_bag_size"]) == {"8", "32"}
    assert result["machine"]["torch"] and result["machine"]["cpu_count"] >= 1
    assert result["settings"]["precision"] == "32-true"
    text = table.read_text()
    assert text.count("| small_cnn |") == 8 and "target <= 1.3x" in text


def test_baseline_over_the_memory_limit_is_skipped():
    config = MILBenchConfig(
        **TINY, strategies=("baseline",), bag_sizes=(8, 32), memory_limit="1MiB"
    )
    rows = run_mil_benchmark(config, launch=refuse)["rows"]
    assert rows[0]["status"].startswith("skipped: estimated ")
    assert rows[0]["status"].endswith("GiB > available 0.0 GiB")
    assert rows[1]["status"].startswith("skipped")


def test_out_of_memory_is_a_row_and_larger_bags_are_skipped():
    def oom(args: dict) -> dict:
        return {"status": "oom", "error": "OutOfMemoryError: CUDA out of memory"}

    config = MILBenchConfig(**TINY, strategies=("baseline",), bag_sizes=(8, 32))
    rows = run_mil_benchmark(config, launch=oom)["rows"]
    assert [r["status"] for r in rows] == ["oom", "skipped: a smaller bag did not fit"]
    assert "out of memory" in rows[0]["error"]
    config.skip_unfit = False  # --no-skip: the larger bag runs anyway
    assert [r["status"] for r in run_mil_benchmark(config, launch=oom)["rows"]] == ["oom", "oom"]


@pytest.mark.parametrize(
    ("returncode", "stdout", "stderr", "status"),
    [
        (0, 'noise\n{"status": "ok", "seconds_per_step": 1.0}\n', "", "ok"),
        (3, '{"status": "oom", "error": "CUDA out of memory"}\n', "", "oom"),
        (-signal.SIGKILL, "", "", "oom"),
        (1, "", "Traceback ...\nValueError: bad things\n", "failed"),
    ],
)
def test_worker_outcome(returncode, stdout, stderr, status):
    outcome = worker_outcome(returncode, stdout, stderr)
    assert outcome["status"] == status
    if status == "failed":
        assert outcome["error"] == "ValueError: bad things"


def test_estimate_grows_with_the_graph_and_extrapolates_measurements():
    from gigastream.models.bag_benchmark import _EncoderProbe

    config = MILBenchConfig(**TINY, chunk_size=4)
    probe = _EncoderProbe(out_dim=8, parameters=0, activation_bytes_per_patch=2**20, fixed_bytes=0)
    base = estimate_bytes("baseline", 100, config, probe, [])
    acc = estimate_bytes("accumulate", 100, config, probe, [])
    assert base - acc == pytest.approx(96 * 2**20, rel=0.01)  # 100 vs 4 patches with a graph
    measured = [
        {"status": "ok", "bag_size": 10, "peak_mib": 100.0},
        {"status": "ok", "bag_size": 20, "peak_mib": 120.0},
    ]
    assert estimate_bytes("baseline", 40, config, probe, measured) == 160 * 2**20


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"strategies": ("fast",)}, "unknown strategy"),
        ({"bag_sizes": (8, 0)}, "bag sizes must be >= 1"),
        ({"chunk_size": 0}, "chunk_size must be >= 1"),
        ({"encoders": ("no_such_net",)}, "encoder no_such_net: unknown encoder"),
        ({"precision": "16-mixed"}, "needs --device cuda"),
        ({"memory_limit": "lots"}, "cannot read memory size"),
        ({"allocator": "jemalloc"}, "allocator must be one of default, tuned"),
    ],
)
def test_bad_settings_are_refused_before_any_run(change, match):
    with pytest.raises(ValueError, match=match):
        run_mil_benchmark(MILBenchConfig(**{**TINY, **change}), launch=refuse)


@pytest.mark.parametrize("argv", [[], ["--bag-size", "8"], ["--worker"]])
def test_worker_reads_only_its_json(argv, capsys):
    assert bench_worker.main(argv) == 2
    assert "--worker JSON" in capsys.readouterr().err


def test_bf16_mixed_runs_on_the_cpu():
    config = MILBenchConfig(
        **TINY, strategies=("accumulate",), bag_sizes=(8,), precision="bf16-mixed"
    )
    result = run_mil_benchmark(config, launch=in_process)
    assert result["settings"]["precision"] == "bf16-mixed"
    assert result["rows"][0]["status"] == "ok"


def test_tuned_allocator_reaches_the_worker_process():
    """``--allocator tuned`` fixes glibc's mmap threshold in each fresh worker process (not in
    the driver), and the row says so; the default leaves glibc as it is."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the allocator setting is glibc's")
    config = MILBenchConfig(**TINY, strategies=("accumulate",), bag_sizes=(8,))
    default = run_mil_benchmark(config)["rows"][0]
    config.allocator = "tuned"
    result = run_mil_benchmark(config)
    tuned = result["rows"][0]
    assert (default["status"], tuned["status"]) == ("ok", "ok"), (default, tuned)
    assert (default["allocator_tuned"], tuned["allocator_tuned"]) == (False, True)
    assert result["settings"]["allocator"] == "tuned"
