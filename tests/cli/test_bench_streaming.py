"""`gigastream bench streaming` end to end at a tiny size (each mode in its own process)."""

from __future__ import annotations

import json

import pytest

from gigastream.cli.main import main


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
            "conventional,streaming",
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
