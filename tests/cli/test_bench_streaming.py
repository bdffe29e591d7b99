"""`gigastream bench streaming` end to end at a tiny size (each mode in its own process)."""

from __future__ import annotations

import json

import pytest

from gigastream.cli.main import main


@pytest.fixture(autouse=True)
def _one_thread_per_mode(monkeypatch):
    """Each mode's process uses one torch thread, as this one does (``tests/conftest.py``):
    on a loaded 2-core machine two threads per process made this file 1.5x slower
    (measured: 100 s against 68 s); no result here depends on the thread count."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_bench_streaming_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "streaming",
            "--arch",
            "resnet18",
            "--size",
            "160",
            "--tile",
            "96",
            "--repeats",
            "1",
            "--modes",
            "conventional,streaming,streaming-folded",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["config"]["size"] == 160 and result["plan"]["segments"]
    conv, streamed = result["modes"]["conventional"], result["modes"]["streaming"]
    assert conv["seconds_median"] > 0 and conv["peak_rss_mib"] > 0
    assert streamed["max_rel_grad_error"] < 1e-4  # float32, same seed: rounding only
    # against the plain (unfolded) trunk: the fold changes the order of float32 operations,
    # and this random-init ResNet's cross-entropy gradients at 160 px are ill-conditioned
    # (plain float32 itself is 0.9% off float64 on its worst parameter, the folded 2.2%);
    # float64 exactness of the folded streaming is tests/streaming/test_folding.py's
    folded = result["modes"]["streaming-folded"]
    assert 0 < folded["max_rel_grad_error"] < 5e-2 and folded["seconds_median"] > 0
    assert "StreamingPlan" in capsys.readouterr().out


def test_bench_streaming_rejects_unknown_mode(tmp_path):
    assert main(["bench", "streaming", "--modes", "fast", "--out", str(tmp_path / "x.json")]) == 1


@pytest.mark.parametrize("arch", ["alexnet_typo"])
def test_bench_streaming_unknown_arch(tmp_path, arch):
    assert (
        main(
            [
                "bench",
                "streaming",
                "--arch",
                arch,
                "--size",
                "64",
                "--out",
                str(tmp_path / "x.json"),
            ]
        )
        == 1
    )


def test_bench_streaming_flags_parse():
    from gigastream.cli.main import build_parser

    args = build_parser().parse_args(
        [
            "bench",
            "streaming",
            "--device",
            "cuda",
            "--precision",
            "bf16-mixed",
            "--tf32",
            "--size",
            "65536",
            "--lazy",
        ]
    )
    assert (args.device, args.precision, args.size, args.lazy) == (
        "cuda",
        "bf16-mixed",
        65536,
        True,
    )
    assert args.tf32 is True
    args = build_parser().parse_args(["bench", "streaming"])
    assert (args.device, args.precision, args.tf32, args.lazy) == ("cpu", "32", False, None)


def test_bench_streaming_tf32_needs_cuda(tmp_path, capsys):
    assert main(["bench", "streaming", "--tf32", "--out", str(tmp_path / "x.json")]) == 1
    assert "--tf32 needs --device cuda" in capsys.readouterr().err


def test_bench_streaming_16_mixed_needs_cuda(tmp_path, capsys):
    out = str(tmp_path / "x.json")
    assert main(["bench", "streaming", "--precision", "16-mixed", "--out", out]) == 1
    assert "16-mixed needs --device cuda" in capsys.readouterr().err


def test_bench_streaming_bf16_lazy_tiny_cpu_run(tmp_path):
    """bf16 autocast on CPU, streaming from the procedural image (never whole in memory)."""
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench", "streaming", "--arch", "resnet18", "--size", "128", "--tile", "96",
            "--precision", "bf16-mixed", "--lazy", "--repeats", "1",
            "--modes", "conventional,streaming", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["config"]["precision"] == "bf16-mixed" and result["config"]["lazy_input"] is True
    assert result["plan"]["lazy_input"] is True and result["plan"]["bytes_per_elem"] == 2
    streamed = result["modes"]["streaming"]
    assert streamed["lazy_input"] is True and streamed["seconds_median"] > 0
    assert streamed["max_rel_grad_error"] < 0.1  # bf16 autocast: same pixels, rounding only


def test_bench_streaming_skips_what_cannot_fit(tmp_path, monkeypatch):
    """A conventional run whose estimate exceeds the memory is reported as skipped."""
    from gigastream.streaming import benchmark

    monkeypatch.setattr(benchmark, "_mem_available", lambda: 8 * 2**20)
    result = benchmark.run_benchmark(
        "resnet18", 256, tile_size=128, repeats=1, modes=("conventional",), out=tmp_path / "b.json"
    )
    conv = result["modes"]["conventional"]
    assert conv["skipped"] and conv["est_bytes"] > 0.9 * 8 * 2**20
    assert result["config"]["lazy_input"] is True


def test_bench_streaming_warmup_channels_last_profile(tmp_path):
    """Warm-up runs are untimed; channels_last in every mode; a profiler table per mode."""
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench", "streaming", "--arch", "resnet18", "--size", "128", "--tile", "96",
            "--repeats", "2", "--warmup", "1", "--channels-last",
            "--profile", str(tmp_path / "prof"),
            "--modes", "conventional,streaming", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["config"]["warmup"] == 1 and result["config"]["channels_last"] is True
    for mode in ("conventional", "streaming"):
        assert len(result["modes"][mode]["seconds"]) == 2  # the warm-up is not timed
        table = (tmp_path / f"prof-{mode}.txt").read_text()
        assert "aten::" in table and "CPU total" in table
        # what the host did in each timed step
        host = result["modes"][mode]["host"]
        assert len(host) == 2 and all(h["cpu_seconds"] > 0 and h["minor_faults"] >= 0 for h in host)
        assert result["modes"][mode]["host_summary"]["steps"] == 2
    streamed = [s for s in result["plan"]["segments"] if s["mode"] == "stream"]
    assert streamed  # the profile names each streamed segment's two passes
    table = (tmp_path / "prof-streaming.txt").read_text()
    assert "gigastream stream 0-" in table and " forward" in table and " backward" in table
    assert "gigastream stream" not in (tmp_path / "prof-conventional.txt").read_text()
    assert result["modes"]["streaming"]["max_rel_grad_error"] < 1e-4
    assert result["config"]["machine"]["cpu"] and "load_average_1min" in result["config"]["machine"]


def test_bench_streaming_no_skip_runs_what_the_estimate_refuses(tmp_path, monkeypatch):
    from gigastream.streaming import benchmark

    monkeypatch.setattr(benchmark, "_mem_available", lambda: 8 * 2**20)
    result = benchmark.run_benchmark(
        "resnet18", 128, tile_size=96, repeats=1, modes=("conventional",), skip_unfit=False
    )
    assert result["modes"]["conventional"]["seconds_median"] > 0


def test_bench_streaming_negative_warmup_is_refused(tmp_path, capsys):
    assert main(["bench", "streaming", "--warmup", "-1", "--out", str(tmp_path / "x.json")]) == 1
    assert "--warmup" in capsys.readouterr().err
