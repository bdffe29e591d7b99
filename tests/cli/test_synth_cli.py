"""``gigastream synth`` end to end at a small size, and its errors."""

from __future__ import annotations

import pytest

from gigastream import SlideReader
from gigastream.cli.main import main
from gigastream.wsi.manifest import read_manifest


def test_synth_writes_dataset(tmp_path, sources, capsys):
    code = main(
        [
            "synth",
            "--out",
            str(tmp_path / "ds"),
            "--slides",
            "2",
            "--size",
            "1024",
            "--lesion-size",
            "64",
            "--seed",
            "5",
            "--sources",
            *sources,
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "wrote 2 slides" in captured.out
    # progress bars are on by default, but not when the output is not a terminal (a log file)
    assert "strip/s" not in captured.err and "\r" not in captured.err
    manifest = read_manifest(tmp_path / "ds" / "manifest.csv")
    assert len(manifest) == 2
    for row in manifest.rows:
        with SlideReader.open(row.path) as slide:
            assert slide.dimensions == (1024, 1024) and slide.mpp == pytest.approx(0.5)
        assert (tmp_path / "ds" / "lesions" / f"{row.slide_id}.png").is_file()


def test_synth_bad_settings_and_sources(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--slides", "0", "--no-progress"]) == 1
    assert "slides must be >= 1" in capsys.readouterr().err
    assert (
        main(
            [
                "synth",
                "--out",
                str(tmp_path),
                "--size",
                "1024",
                "--no-progress",
                "--sources",
                str(tmp_path / "none"),
            ]
        )
        == 1
    )
    assert "H&E source not found" in capsys.readouterr().err


def test_synth_without_sources_or_shared_data(tmp_path, capsys, monkeypatch):
    from gigastream.cli import common

    monkeypatch.setattr(common, "find_shared_data", lambda *names: [])
    assert main(["synth", "--out", str(tmp_path / "ds"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "no H&E images found" in err and "pass --sources" in err
    assert not (tmp_path / "ds").exists()
