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
