"""``gigastream tissue`` and ``gigastream splits`` (thin wrappers over gigastream.wsi)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from gigastream.cli.main import main


def test_tissue_cli_flags_empty_slides(tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((256, 256, 3), 245, np.uint8)).save(blank)
    tissue = tmp_path / "tissue.png"
    image = np.full((256, 256, 3), 245, np.uint8)
    image[32:224, 32:224] = (190, 100, 170)
    Image.fromarray(image).save(tissue)
    code = main(
        [
            "tissue",
            str(blank),
            str(tissue),
            "--out",
            str(tmp_path / "masks"),
            "--slide-mpp",
            "4",
            "--mpp",
            "8",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "blank.png: tissue 0.0% [NO TISSUE]" in out and "tissue.png: tissue" in out
    assert (tmp_path / "masks" / "tissue.tissue.png").is_file()
    assert main(["tissue", str(tmp_path / "absent.svs"), "--out", str(tmp_path)]) == 1
    assert "file not found" in capsys.readouterr().out


def test_splits_cli(tmp_path, capsys):
    lines = ["slide_id,path,label,case_id"] + [
        f"s{i},s{i}.tif,{'ab'[i % 2]},p{i // 2}" for i in range(12)
    ]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    code = main(
        [
            "splits",
            "--manifest",
            str(tmp_path / "m.csv"),
            "--out",
            str(tmp_path / "f.csv"),
            "--folds",
            "3",
            "--no-check-files",
        ]
    )
    assert code == 0 and "12 slides" in capsys.readouterr().out
    assert (tmp_path / "f.csv").read_text().startswith("slide_id,case_id,label,fold")
    assert (
        main(["splits", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "g.csv")])
        == 1
    )
    assert "file not found" in capsys.readouterr().err
