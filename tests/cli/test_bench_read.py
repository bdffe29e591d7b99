"""``gigastream bench read`` on a small written slide and on a file no backend reads."""

from __future__ import annotations

import json

import numpy as np

from gigastream.cli.main import main
from gigastream.wsi.pyramid import write_pyramid


def test_bench_read_reports_both_backends_and_two_levels(tmp_path, capsys):
    slide = tmp_path / "s.tif"
    write_pyramid(slide, iter([np.full((1024, 1024, 3), 200, np.uint8)]), 1024, 1024, mpp=0.5)
    out = tmp_path / "read.json"
    code = main(
        [
            "bench",
            "read",
            "--slide",
            str(slide),
            "--out",
            str(out),
            "--reads",
            "3",
            "--region-size",
            "128",
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    runs = {(r["backend"], r["level"]) for r in report["results"]}
    assert runs == {("openslide", 0), ("openslide", 2), ("tiffslide", 0), ("tiffslide", 2)}
    assert all(r["megapixels_per_s"] > 0 for r in report["results"])
    assert "MP/s" in capsys.readouterr().out


def test_bench_read_single_level_image_reads_resized(tmp_path):
    from PIL import Image

    path = tmp_path / "one.tif"
    Image.fromarray(np.full((600, 600, 3), 128, np.uint8)).save(path, dpi=(50800, 50800))
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "bench",
                "read",
                "--slide",
                str(path),
                "--out",
                str(out),
                "--reads",
                "2",
                "--region-size",
                "64",
                "--backends",
                "tiffslide",
            ]
        )
        == 0
    )
    results = json.loads(out.read_text())["results"]
    assert [r["resized"] for r in results] in ([False, True], [False])


def test_bench_read_missing_file_fails_cleanly(tmp_path, capsys):
    assert main(["bench", "read", "--slide", str(tmp_path / "nope.svs"), "--reads", "1"]) == 1
    assert "file not found" in capsys.readouterr().out


def test_bench_read_times_each_worker_count(tmp_path):
    """``--workers 1 2``: one result per count and backend, every read counted once."""
    slide = tmp_path / "s.tif"
    rng = np.random.default_rng(0)
    write_pyramid(slide, iter([rng.integers(0, 255, (768, 768, 3), np.uint8)]), 768, 768, mpp=0.5)
    out = tmp_path / "read.json"
    args = ["bench", "read", "--slide", str(slide), "--out", str(out), "--reads", "5"]
    assert main([*args, "--region-size", "128", "--workers", "1", "2"]) == 0
    results = json.loads(out.read_text())["results"]
    for backend in ("openslide", "tiffslide"):
        level0 = [r for r in results if r["backend"] == backend and r["level"] == 0]
        assert [r["workers"] for r in level0] == [1, 2]
        assert all(r["reads"] == 5 and r["megapixels_per_s"] > 0 for r in level0)
    assert json.loads(out.read_text())["machine"]["cpus"] >= 1


def test_bench_read_refuses_zero_workers(tmp_path, capsys):
    slide = tmp_path / "s.tif"
    write_pyramid(slide, iter([np.full((256, 256, 3), 200, np.uint8)]), 256, 256, mpp=0.5)
    assert main(["bench", "read", "--slide", str(slide), "--workers", "0"]) == 1
    assert "--workers must be 1 or more threads, got 0" in capsys.readouterr().err
