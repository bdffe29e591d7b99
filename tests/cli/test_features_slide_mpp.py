"""``gigastream features --slide-mpp`` (issue 16): it reads slides without mpp metadata at
the given mpp, only those, and a file's key holds the mpp (another ``--slide-mpp``
recomputes it)."""

from __future__ import annotations

import csv

import h5py

from tests.cli.clitools import cli, one_line_error
from tests.cli.test_first_day_cli import _bare_png, _write_manifest

FLAGS = ["--encoder", "small_cnn", "--patch-size", "32", "--mpp", "4.0", "--no-progress"]


def test_features_slide_mpp_reads_only_slides_without_metadata(tmp_path, manifest, capsys):
    with open(manifest, newline="") as f:
        own = next(csv.DictReader(f))
    slide = manifest.parent / own["path"]
    bare = _bare_png(slide, tmp_path / "bare.png", 1.0)  # 256^2 px, no mpp
    rows = [
        {"slide_id": "own", "path": str(slide), "label": own["label"]},
        {"slide_id": "bare", "path": bare, "label": own["label"]},
    ]
    listed = _write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "features"
    code, _, err = cli(capsys, "features", "--manifest", listed, "--out", out, *FLAGS)
    assert code == 1 and "bare" in err, err  # no mpp: a failure, with the fix named
    assert "--slide-mpp" in (out / "failures.csv").read_text()
    code, _, err = cli(capsys, "features", "--manifest", listed, "--out", out, *FLAGS,
                       "--slide-mpp", "1.0")  # fmt: skip
    assert code == 0, err
    with h5py.File(out / "bare.h5") as f, h5py.File(out / "own.h5") as g:
        bare_patches, own_patches = len(f["features"]), len(g["features"])
        first_key = f.attrs["key"]
    # the same tissue: the PNG at --slide-mpp 1 has the slide's own 0.5 um/px level 0 halved
    assert bare_patches > 0 and abs(bare_patches - own_patches) <= max(2, own_patches // 5)
    code, _, err = cli(capsys, "features", "--manifest", listed, "--out", out, *FLAGS,
                       "--slide-mpp", "2.0")  # fmt: skip
    assert code == 0, err
    with h5py.File(out / "bare.h5") as f:
        assert f.attrs["key"] != first_key  # another mpp: recomputed, not "up to date"
    code, _, err = cli(capsys, "features", "--manifest", listed, "--out", out, *FLAGS,
                       "--slide-mpp", "nan")  # fmt: skip
    one_line_error(code, err, "--slide-mpp must be a positive number")
