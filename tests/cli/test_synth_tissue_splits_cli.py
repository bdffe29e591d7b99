"""``gigastream tissue`` (masks and their overlays on the slide) and ``gigastream splits``
(thin wrappers over gigastream.wsi and gigastream.viz)."""

from __future__ import annotations

import numpy as np
import pytest
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


def test_tissue_cli_writes_an_overlay_of_the_mask_on_the_thumbnail(tmp_path, capsys):
    from gigastream.viz.tissue import TISSUE_COLOUR

    image = np.full((256, 320, 3), 245, np.uint8)
    image[64:192, 96:256] = (190, 100, 170)  # tissue: 512x640 um at 4 um/px
    Image.fromarray(image).save(tmp_path / "s1.png")
    out = tmp_path / "masks"
    flags = ["--out", str(out), "--slide-mpp", "4", "--mpp", "8"]
    assert main(["tissue", str(tmp_path / "s1.png"), *flags]) == 0
    printed = capsys.readouterr().out
    overlay = out / "s1_overlay.png"
    assert f"overlay {overlay}" in printed and (out / "s1.tissue.png").is_file()
    with Image.open(overlay) as img:
        assert img.format == "PNG" and img.size == (320, 256)  # the thumbnail (max 1024 px)
        picture = np.asarray(img.convert("RGB"))
    changed = (picture != image).any(axis=-1)
    assert (picture[changed] == TISSUE_COLOUR).all()  # the outline, opaque
    ys, xs = np.nonzero(changed)  # on the tissue's inner border (the mask is 2 px a pixel)
    assert 64 <= ys.min() <= 66 and 189 <= ys.max() <= 191
    assert 96 <= xs.min() <= 98 and 253 <= xs.max() <= 255
    assert not changed[72:184, 104:248].any()  # inside the tissue: the slide's own pixels
    np.testing.assert_array_equal(picture[:60], image[:60])  # outside it: likewise
    for side in (changed[:, :100], changed[:, 250:], changed[:70], changed[186:]):
        assert side.sum() > 100  # outlined on all four sides
    with pytest.raises(SystemExit):
        main(["tissue", "--help"])
    assert "<slide>_overlay.png" in capsys.readouterr().out


def test_tissue_cli_writes_the_contours_as_qupath_geojson(tmp_path, capsys):
    """``--geojson``: the mask's contours in level-0 pixels; read back, the same mask."""
    import json

    from gigastream.wsi.annotation_readers import read_annotations
    from gigastream.wsi.tissue import TissueMask

    image = np.full((256, 320, 3), 245, np.uint8)
    image[64:192, 96:256] = (190, 100, 170)
    Image.fromarray(image).save(tmp_path / "s1.png")
    out = tmp_path / "masks"
    flags = ["--out", str(out), "--slide-mpp", "4", "--mpp", "8", "--geojson"]
    assert main(["tissue", str(tmp_path / "s1.png"), *flags]) == 0
    path = out / "s1.tissue.geojson"
    assert f"contours {path}" in capsys.readouterr().out
    data = json.loads(path.read_text())
    (feature,) = data["features"]
    assert feature["properties"]["classification"]["name"] == "Tissue"
    xs = [x for ring in feature["geometry"]["coordinates"] for x, _ in ring]
    assert 90 <= min(xs) <= 100 and 250 <= max(xs) <= 260  # level-0 px of the tissue block
    mask = TissueMask.load(out / "s1.tissue.png", mpp=8.0)
    again = read_annotations(path).mask(mpp=8.0, slide_mpp=4.0, dimensions=(320, 256))
    np.testing.assert_array_equal(again.mask, mask.mask)


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
