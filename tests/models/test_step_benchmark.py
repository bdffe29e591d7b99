"""``gigastream bench step``: one training step from a JPEG / JPEG 2000 slide file vs memory.

A 768² slide, ``vgg_small``, tile 192, one timed step per mode (the JPEG 2000 slide through
the command, each mode in a fresh process; the JPEG one in this process, which is faster):
the JSON has every field, each pixel is decoded about once per step with the input cache
(twice without), the file step's loss equals the memory step's, the JPEG 2000 slide reads
back close to the JPEG one, and bad flags are one clear error.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from gigastream.cli.main import main
from gigastream.models.step_benchmark import (
    DEFAULT_SOURCES,
    StepBenchConfig,
    in_process_launcher,
    run_step_benchmark,
    slide_path,
)

SIZE, TILE = 768, 192  # at 768² the first segment streams 5x5 tiles with 3% overlap
ROW_FIELDS = {
    "format",
    "backend",
    "file_bytes",
    "read_workers",
    "status",
    "read_seconds",
    "read_megapixels_per_s",
    "first_piece_seconds",
    "compute_seconds",
    "file_seconds",
    "file_vs_memory",
    "hidden_fraction",
    "decoded_per_slide_pixel",
    "loss_file",
    "loss_memory",
    "loss_rel_diff",
    "peak_rss_mib",
}
#: float32 streaming is exact up to rounding: the file and memory steps' losses agree to this.
LOSS_RTOL = 1e-4


@pytest.fixture(scope="module")
def sources():
    if not DEFAULT_SOURCES.is_dir():
        pytest.skip(f"H&E images not found at {DEFAULT_SOURCES} (clone with ../shared/data)")
    return DEFAULT_SOURCES


@pytest.fixture(scope="module")
def work(tmp_path_factory, sources):
    """The folder the slides are written to once and reused by every run of this module."""
    return tmp_path_factory.mktemp("step-work")


@pytest.fixture(scope="module")
def cli_run(work):
    """``gigastream bench step`` on the JPEG 2000 slide, each mode in a fresh process."""
    out = work / "step.json"
    argv = ["bench", "step", "--size", str(SIZE), "--arch", "vgg_small", "--tile", str(TILE)]
    argv += ["--formats", "jpeg2000", "--read-workers", "1", "--repeats", "1", "--warmup", "0"]
    argv += ["--threads", "1", "--work-dir", str(work), "--out", str(out)]
    assert main(argv) == 0
    return json.loads(out.read_text())


def in_process_run(work, **settings) -> dict:
    """The JPEG slide's modes run in this process (fast: no fresh interpreter per mode)."""
    config = StepBenchConfig(
        size=SIZE,
        tile_size=TILE,
        formats=("jpeg",),
        read_workers=(1,),
        repeats=1,
        warmup=0,
        threads=1,
        work_dir=work,
        **settings,
    )
    return run_step_benchmark(config, launch=in_process_launcher)


@pytest.fixture(scope="module")
def jpeg_run(work):
    return in_process_run(work)


@pytest.fixture(scope="module")
def results(cli_run, jpeg_run):
    return [cli_run, jpeg_run]


def test_json_has_every_field(cli_run, capsys):
    result = cli_run
    assert set(result) == {"config", "machine", "slide", "plan", "rows", "modes"}
    assert {"python", "torch", "cpu_count", "threads", "load_average_before"} <= set(
        result["machine"]
    )
    assert result["machine"]["threads"] == 1
    assert result["slide"]["pixels"] == SIZE * SIZE
    assert "StreamingPlan" in result["plan"]
    assert set(result["modes"]) == {"jpeg2000/memory", "jpeg2000/read/1", "jpeg2000/file/1"}


def test_rows_have_every_field(results):
    rows = [row for result in results for row in result["rows"]]
    assert [(r["format"], r["backend"]) for r in rows] == [
        ("jpeg2000", "tiffslide"),
        ("jpeg", "openslide"),
    ]
    for row in rows:
        assert set(row) == ROW_FIELDS, row
        assert row["status"] == "ok"
        assert 0.0 <= row["hidden_fraction"] <= 1.0
        assert row["read_seconds"] > 0 and row["read_megapixels_per_s"] > 0
        assert 0 < row["first_piece_seconds"] <= row["read_seconds"]
        assert set(row["peak_rss_mib"]) == {"read", "file", "memory"}
        assert all(v > 0 for v in row["peak_rss_mib"].values())
        expected = 1 - (row["file_seconds"] - row["compute_seconds"]) / row["read_seconds"]
        assert row["hidden_fraction"] == pytest.approx(min(1.0, max(0.0, expected)))


def test_each_pixel_decoded_once_per_step_with_the_cache(results):
    for result in results:
        (row,) = result["rows"]
        assert 1.0 <= row["decoded_per_slide_pixel"] <= 1.05, row
        stats = result["modes"][f"{row['format']}/file/1"]["input_stats"]
        assert stats["pixels_backward"] == 0 and stats["cached_pieces"] == stats["pieces"]


def test_file_step_loss_equals_memory_step_loss(results):
    for result in results:
        (row,) = result["rows"]
        assert row["loss_file"] == pytest.approx(row["loss_memory"], rel=LOSS_RTOL)


def test_jpeg2000_slide_reads_back_close_to_the_jpeg_one(work, results):
    from gigastream.wsi.reader import SlideReader

    pixels = {}
    for compression in ("jpeg", "jpeg2000"):
        with SlideReader.open(slide_path(work, SIZE, compression, 0), backend="tiffslide") as r:
            assert r.mpp == pytest.approx(0.5)
            pixels[compression] = r.read_level(0, 0, 0, SIZE, SIZE).astype(np.int16)
    difference = np.abs(pixels["jpeg"] - pixels["jpeg2000"]).mean()
    assert difference < 4.0  # both lossy (~2-3 grey levels each from the original)
    assert pixels["jpeg2000"].std() > 10  # tissue texture, not blank glass


def test_without_the_cache_every_tile_is_read_twice(work, jpeg_run):
    result = in_process_run(work, input_cache="0")  # the slide written above is reused
    (row,) = result["rows"]
    assert row["decoded_per_slide_pixel"] > 1.9
    assert result["modes"]["jpeg/file/1"]["input_stats"]["cached_pieces"] == 0


def test_with_no_memory_for_the_cache_a_spill_file_keeps_decoding_once(work, tmp_path, jpeg_run):
    """``--input-cache 0 --input-spill DIR``: the decoded tiles go to disk, not decoded again;
    the loss is the in-memory cache's and nothing is left in DIR."""
    result = in_process_run(work, input_cache="0", input_spill=tmp_path / "spill")
    (row,) = result["rows"]
    stats = result["modes"]["jpeg/file/1"]["input_stats"]
    assert row["decoded_per_slide_pixel"] < 1.05 and stats["pixels_backward"] == 0
    assert stats["cached_bytes"] == 0 and stats["spilled_pieces"] == stats["pieces"] > 1
    assert row["loss_file"] == pytest.approx(jpeg_run["rows"][0]["loss_file"], rel=LOSS_RTOL)
    assert result["config"]["input_spill"] == str(tmp_path / "spill")
    assert list((tmp_path / "spill").iterdir()) == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--formats", "jpeg", "png"], "--formats png: not a slide compression; choose from"),
        (["--read-workers", "1", "0"], "--read-workers must be 1 or more threads each"),
        (["--input-cache", "lots"], "cannot read memory size 'lots'"),
        (["--precision", "16-mixed"], "--precision 16-mixed needs --device cuda"),
        (["--device", "tpu"], "--device 'tpu': use cpu or cuda[:N]"),
        (["--memory-budget", "lots"], "cannot read memory size 'lots'"),
    ],
    ids=["format", "workers", "cache", "half-on-cpu", "device", "budget"],
)
def test_bad_flags_are_one_clear_error(flags, message, capsys, tmp_path):
    code = main(["bench", "step", "--work-dir", str(tmp_path / "never"), *flags])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "never").exists()  # nothing was written before the check


def test_config_raises_value_error():
    with pytest.raises(ValueError, match="--formats png"):
        StepBenchConfig(formats=("png",)).validate()
    with pytest.raises(ValueError, match="--read-workers"):
        StepBenchConfig(read_workers=(0,)).validate()
    with pytest.raises(ValueError, match="cannot read JPEG 2000"):
        StepBenchConfig(backend="openslide").validate()
    with pytest.raises(ValueError, match="--modes fast: choose from read file memory"):
        StepBenchConfig(modes=("file", "fast")).validate()


def test_bf16_mixed_step_runs_under_autocast(work, jpeg_run):
    """``--precision bf16-mixed``: the trunk and head run under bfloat16 autocast (the loss
    is not the float32 one), and the file and memory steps still agree."""
    result = in_process_run(work, precision="bf16-mixed")
    (row,) = result["rows"]
    assert row["status"] == "ok" and result["config"]["precision"] == "bf16-mixed"
    assert row["loss_file"] == pytest.approx(row["loss_memory"], rel=1e-2)
    assert row["loss_file"] != jpeg_run["rows"][0]["loss_file"]  # float32's, exactly
    assert row["loss_file"] == pytest.approx(jpeg_run["rows"][0]["loss_file"], rel=0.1)
    assert 1.0 <= row["decoded_per_slide_pixel"] <= 1.05


def test_modes_run_only_what_is_asked(work, jpeg_run):
    """``--modes read file`` leaves out the memory step (which needs the whole slide as a
    tensor): its figures are None and the table shows ``-``."""
    from gigastream.models.step_benchmark import format_table

    result = in_process_run(work, modes=("read", "file"))
    assert set(result["modes"]) == {"jpeg/read/1", "jpeg/file/1"}
    (row,) = result["rows"]
    assert row["status"] == "ok" and row["file_seconds"] > 0 and row["read_seconds"] > 0
    assert row["compute_seconds"] is None and row["file_vs_memory"] is None
    assert row["hidden_fraction"] is None and row["loss_memory"] is None
    assert row["loss_file"] == jpeg_run["rows"][0]["loss_file"]
    assert set(row["peak_rss_mib"]) == {"read", "file"}
    assert " - " in format_table(result).splitlines()[1]


def test_a_random_resnet34_step_has_a_loss_that_can_differ():
    """The head normalises the pooled features: a random-init ResNet-34 does not saturate
    the logits (a loss of exactly 0 would make the file-vs-memory loss check vacuous)."""
    import torch

    from gigastream.models.step_bench_worker import TrainingStep

    step = TrainingStep("resnet34", 256, "auto", False, 0)
    loss = step(torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)))
    assert 1e-3 < loss < 10
