"""``gigastream heatmap`` on the tiny trained run: the true label in the title (``--label``
or ``--manifest``), the attention tinted only on the slide's tissue at ``--opacity``, and
bad flags refused in one line before any output."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gigastream.cli.main import main
from gigastream.viz.heatmap import mask_under
from gigastream.wsi.reader import SlideReader
from gigastream.wsi.tissue import TissueMask
from tests.cli.clitools import ERROR


@pytest.fixture(scope="session")
def checkpoint(trained_run) -> Path:
    """The best checkpoint of the tiny finished run of ``tests/train`` (read-only)."""
    return trained_run / "checkpoints" / "best.ckpt"


def _heatmap(capsys, checkpoint, out, *flags) -> tuple[int, str, str]:
    argv = ["heatmap", "--checkpoint", checkpoint, "--out", out, "--workers", "0", "--no-progress"]
    code = main([str(a) for a in [*argv, *flags]])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _title(path: Path) -> str:
    with Image.open(path) as img:
        return img.text["Title"]


def _labels(manifest: Path) -> dict[str, str]:
    with open(manifest, newline="") as f:
        return {row["slide_id"]: row["label"] for row in csv.DictReader(f)}


def test_label_from_the_flag_or_the_manifest_is_in_the_title(
    tmp_path, checkpoint, manifest, capsys
):
    slides = manifest.parent / "slides"
    labels = _labels(manifest)
    negative = next(s for s, label in labels.items() if label == "negative")
    code, printed, _ = _heatmap(capsys, checkpoint, tmp_path / "plain", slides / "synth_000.tif")
    assert code == 0 and printed.split() == [str(tmp_path / "plain" / "synth_000.png")]
    plain = _title(tmp_path / "plain" / "synth_000.png")
    assert plain.startswith("synth_000 — p(positive) = ") and "label" not in plain

    out = tmp_path / "flag"
    code, _, _ = _heatmap(capsys, checkpoint, out, "--label", "positive", slides / "synth_000.tif")
    assert code == 0
    assert _title(out / "synth_000.png").startswith("synth_000 — label: positive — p(positive) = ")
    with open(out / "predictions.csv", newline="") as f:
        assert [r["label"] for r in csv.DictReader(f)] == ["positive"]

    out = tmp_path / "manifest"
    both = [slides / "synth_000.tif", slides / f"{negative}.tif"]
    code, _, _ = _heatmap(capsys, checkpoint, out, "--manifest", manifest, *both)
    assert code == 0
    for slide_id in ("synth_000", negative):
        title = _title(out / f"{slide_id}.png")
        assert title.startswith(f"{slide_id} — label: {labels[slide_id]} — p(positive) = ")


def test_attention_is_tinted_only_on_tissue_at_the_opacity(tmp_path, checkpoint, manifest, capsys):
    slide_path = manifest.parent / "slides" / "synth_000.tif"
    out = tmp_path / "maps"
    code, _, _ = _heatmap(capsys, checkpoint, out, "--opacity", "1", "--tiff", slide_path)
    assert code == 0 and (out / "synth_000.tif").is_file()
    tissue = TissueMask.load(out / "masks" / "synth_000.png")  # the mask the prediction used
    with SlideReader.open(slide_path) as slide, SlideReader.open(out / "synth_000.tif") as tiff:
        assert tiff.dimensions == slide.dimensions
        width, height = slide.dimensions
        original = slide.read_level(0, 0, 0, width, height).astype(int)
        overlay = tiff.read_level(0, 0, 0, width, height).astype(int)
        on = mask_under(tissue, slide, (slide.mpp, slide.mpp), (height, width))
    assert 0.05 < on.mean() < 0.95
    diff = np.abs(overlay - original).max(axis=-1)
    r, g, b = (overlay[..., c] for c in range(3))
    lesion = (g > 150) & (r < 120) & (b < 120)  # the lesions' green contours, drawn anywhere
    off = diff[~on & ~lesion]  # off tissue: the slide's own pixels (up to JPEG's error)
    assert np.median(off) <= 2 and off.mean() <= 4 and np.percentile(off, 99) <= 30
    assert np.median(diff[on]) > 40  # on tissue: opaque attention colours


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--opacity", "1.5"], ["--opacity must be a number from 0", "got 1.5"]),
        (["--opacity", "-0.2"], ["--opacity must be a number from 0"]),
        (["--opacity", "nan"], ["--opacity must be a number from 0"]),
        (["--label", "tumour"], ["'tumour' not among the checkpoint's classes"]),
    ],
)
def test_bad_flags_are_refused_before_any_output(
    tmp_path, checkpoint, manifest, capsys, flags, needles
):
    slide = manifest.parent / "slides" / "synth_000.tif"
    code, _, err = _heatmap(capsys, checkpoint, tmp_path / "out", *flags, slide)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and ERROR.match(lines[0]), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


def test_label_and_manifest_are_exclusive_and_documented(tmp_path, checkpoint, manifest, capsys):
    slide = manifest.parent / "slides" / "synth_000.tif"
    with pytest.raises(SystemExit):
        _heatmap(capsys, checkpoint, tmp_path / "o", "--label", "a", "--manifest", manifest, slide)
    with pytest.raises(SystemExit):
        main(["heatmap", "--help"])
    printed = " ".join(capsys.readouterr().out.split())
    assert "--opacity OPACITY" in printed and "default 0.55" in printed
    assert "--manifest MANIFEST" in printed and "--label LABEL" in printed
