"""The two-stage baseline: cached patch features of tiny slides (shapes, coords, attributes,
the encoder's exact output), resumed and stale runs, failures that are recorded and not
fatal, then a head trained on the files, evaluated and predicted from its checkpoint."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gigastream.models.encoders import EncoderConfig, build_encoder
from gigastream.models.patch_mil import PatchConfig
from gigastream.train.config import ConfigError, DataConfig
from gigastream.train.config_files import load_config
from gigastream.train.features import INIT_SEED, extract_features
from gigastream.train.patch_data import slide_patch_grid
from gigastream.wsi.feature_files import FeatureFileError, read_features, write_features
from gigastream.wsi.manifest import read_manifest
from gigastream.wsi.patches import PatchBag
from gigastream.wsi.reader import SlideReader
from gigastream.wsi.tissue import TissueMaskConfig
from tests.exactness import FLOAT32, Tolerance, assert_exact

#: 256 px slides at 2 um/px read at 4 um/px: 128 px, a 4 x 4 grid of 32 px patches.
DATA = DataConfig(mpp=4.0, tissue=TissueMaskConfig(mpp=8.0), num_workers=0)
SMALL = EncoderConfig("small_cnn", options={"out_dim": 16, "width": 8})
PATCHES = PatchConfig(SMALL, patch_size=32, chunk_size=5)  # chunks of 5: 5 + 5 + ... + rest
#: A float64 computation stored as float32: both round to the same or adjacent float32.
FLOAT32_STORAGE = Tolerance(rtol=1.2e-7, atol=0.0)
#: A head on the features (the run's ``model:``), tiny and fast.
MODEL = {"head": "abmil", "head_options": {"attn_dim": 8}}
TRAIN = {"epochs": 2, "threads": 1, "heatmaps": 1, "progress": False, "device": "cpu"}


def make_slides(folder: Path, count: int = 8, extra: bool = False) -> Path:
    """``count`` 256 px PNG slides (half ``tumor``: a darker block) with a ``split`` column
    (the last two validate) and their manifest ``folder/m.csv``; with ``extra`` also a
    slide of bare glass, a missing slide and a corrupt one."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["slide_id,path,label,mpp,split"]
    for i in range(count):
        image = np.full((256, 256, 3), 244, np.uint8)
        image[32:224, 40:216] = (190, 100, 170)
        if i % 2:
            image[64:128, 64:160] = (120, 40, 110)
        Image.fromarray(image).save(folder / f"s{i}.png")
        split = "val" if i >= count - 2 else "train"
        lines.append(f"s{i},s{i}.png,{'tumor' if i % 2 else 'normal'},2.0,{split}")
    if extra:
        Image.fromarray(np.full((256, 256, 3), 244, np.uint8)).save(folder / "glass.png")
        (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
        lines += [
            "glass,glass.png,normal,2.0,train",
            "missing,missing.png,normal,2.0,train",
            "corrupt,corrupt.png,tumor,2.0,train",
        ]
    (folder / "m.csv").write_text("\n".join(lines) + "\n")
    return folder / "m.csv"


def _rows(manifest: Path):
    return read_manifest(manifest, check_files=False).rows


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """``(manifest, features folder, summary)`` of the tiny slides with failing extras."""
    root = tmp_path_factory.mktemp("features")
    manifest = make_slides(root / "slides", extra=True)
    summary = extract_features(
        _rows(manifest), root / "feats", DATA, PATCHES, "cpu", progress=False
    )
    return manifest, root / "feats", summary


def test_files_hold_the_patch_grid_features_and_attributes(extracted):
    manifest, folder, summary = extracted
    assert summary.written == [f"s{i}" for i in range(8)] and summary.feature_dim == 16
    row = _rows(manifest)[0]
    with SlideReader.open(row.path, mpp=row.mpp) as slide:
        grid = slide_patch_grid(slide, row.slide_id, DATA, PATCHES, save_mask=False)
    f = read_features(folder / "s0.h5", feature_dim=16)
    assert f.features.shape == (len(grid), 16) and f.features.dtype == np.float32
    np.testing.assert_array_equal(f.coords, grid.coords)  # level-0 (x, y) of the corners
    assert f.coords[:, 0].max() <= 256 - 64 and set(np.unique(f.coords) % 64) == {0}
    attrs = f.attrs
    assert attrs["encoder"] == "small_cnn" and attrs["weights_sha256"] == "random"
    assert (attrs["mpp"], attrs["patch_size"], attrs["min_tissue"]) == (4.0, 32, 0.5)
    assert attrs["feature_dim"] == 16 and attrs["patch_size_level0"] == 64.0
    assert len(attrs["key"]) == 64 and attrs["key"] != read_features(folder / "s1.h5").attrs["key"]
    report = json.loads((folder / "features.json").read_text())
    assert report["settings"]["patch_size"] == 32 and report["settings"]["mpp"] == 4.0
    assert report["slides"]["s0"] == {"status": "written", "file": "s0.h5"}
    assert (report["written"], report["failed"]) == (8, 3)
    assert not list(folder.glob(".*.tmp"))


def test_a_slide_that_fails_is_recorded_and_the_others_are_written(extracted):
    _, folder, summary = extracted
    assert sorted(summary.failed) == ["corrupt", "glass", "missing"]
    with open(folder / "failures.csv", newline="") as f:
        failures = {r["slide_id"]: r for r in csv.DictReader(f)}
    assert sorted(failures) == ["corrupt", "glass", "missing"]
    assert "no tissue found" in failures["glass"]["error"]
    assert "slide file not found" in failures["missing"]["error"]
    assert "cannot read the image" in failures["corrupt"]["error"]
    assert failures["missing"]["path"].endswith("missing.png")
    report = json.loads((folder / "features.json").read_text())
    assert report["slides"]["glass"]["status"] == "failed"
    assert not (folder / "glass.h5").exists()


@pytest.mark.parametrize("precision", ["64", "32"])
def test_cached_features_are_the_encoders_output_on_the_patches(tmp_path, precision):
    """The file holds what the encoder gives for the slide's patches all at once: chunked
    and lazily read, the result is the same (float64 arithmetic: to float32's rounding;
    float32: the suite's float32 tolerance, batch sizes change the kernels' sums)."""
    manifest = make_slides(tmp_path / "slides", count=1)
    row = _rows(manifest)[0]
    extract_features([row], tmp_path / "f", DATA, PATCHES, "cpu", precision, progress=False)
    cached = torch.from_numpy(read_features(tmp_path / "f" / "s0.h5").features)
    torch.manual_seed(INIT_SEED)
    encoder = build_encoder(PATCHES.encoder_config()).eval()
    dtype = torch.float64 if precision == "64" else torch.float32
    with SlideReader.open(row.path, mpp=row.mpp) as slide:
        grid = slide_patch_grid(slide, row.slide_id, DATA, PATCHES, save_mask=False)
        patches = PatchBag(slide, grid).load()  # (N, 3, 32, 32) uint8, one read
    assert len(grid) > PATCHES.chunk_size  # several chunks
    with torch.no_grad():
        direct = encoder.to(dtype)(patches)
    if precision == "64":
        assert_exact(cached, direct.float(), "cached features", FLOAT32_STORAGE)
    else:
        assert_exact(cached, direct, "cached features", FLOAT32)


def test_a_resumed_run_skips_finished_slides_and_recomputes_stale_ones(tmp_path):
    manifest = make_slides(tmp_path / "slides", count=2)
    rows, out = _rows(manifest), tmp_path / "f"
    extract_features(rows, out, DATA, PATCHES, "cpu", progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    again = extract_features(rows, out, DATA, PATCHES, "cpu", progress=False)
    assert again.skipped == ["s0", "s1"] and again.written == []
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")} == before
    # another patch size: another key, the same file names -> recomputed
    key = read_features(out / "s0.h5").attrs["key"]
    larger = extract_features(
        rows, out, DATA, replace(PATCHES, patch_size=64), "cpu", progress=False
    )
    assert larger.written == ["s0", "s1"] and larger.skipped == []
    f = read_features(out / "s0.h5")
    assert f.attrs["key"] != key and f.attrs["patch_size"] == 64 and len(f.features) <= 4
    # a changed slide file (a new mtime) -> recomputed
    stat = os.stat(rows[1].path)
    os.utime(rows[1].path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = extract_features(
        rows, out, DATA, replace(PATCHES, patch_size=64), "cpu", progress=False
    )
    assert touched.skipped == ["s0"] and touched.written == ["s1"]


def test_a_stale_file_of_a_slide_that_now_fails_is_removed(tmp_path):
    manifest = make_slides(tmp_path / "slides", count=1)
    out = tmp_path / "f"
    extract_features(_rows(manifest), out, DATA, PATCHES, "cpu", progress=False)
    (tmp_path / "slides" / "s0.png").unlink()
    summary = extract_features(_rows(manifest), out, DATA, PATCHES, "cpu", progress=False)
    assert list(summary.failed) == ["s0"] and not (out / "s0.h5").exists()


@pytest.mark.parametrize(
    ("patches", "device", "message"),
    [
        (replace(PATCHES, encoder=EncoderConfig("resnet99")), "cpu", "unknown encoder"),
        (replace(PATCHES, patch_size=8), "cpu", "small_cnn: patches of 8 px are too small"),
        (PATCHES, "tpu", "--device must be cpu, cuda, cuda:N or auto"),
    ],
    ids=["encoder", "patch-size", "device"],
)
def test_bad_settings_fail_before_any_slide(tmp_path, patches, device, message):
    manifest = make_slides(tmp_path / "slides", count=1)
    with pytest.raises(ConfigError, match=message):
        extract_features(_rows(manifest), tmp_path / "f", DATA, patches, device, progress=False)
    assert not (tmp_path / "f").exists()


# --------------------------------------------------------------------------- stage two
def _config(manifest: Path, folder: Path, **sections):
    values = {
        "model": {"kind": "features", **MODEL},
        "data": {"num_workers": 0, "features_dir": str(folder), **sections.pop("data", {})},
        "train": {**TRAIN, **sections.pop("train", {})},
        **sections,
    }
    return load_config(values, {"manifest": str(manifest)}, source="test")


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory, extracted):
    """A two-epoch head on the cached features (the failed slides are skipped and listed)."""
    from gigastream.train.fitting import fit

    manifest, folder, _ = extracted
    out = tmp_path_factory.mktemp("feature_run") / "run"
    return out, fit(_config(manifest, folder), out)


def test_a_head_trains_on_the_cached_features(feature_run, extracted):
    out, metrics = feature_run
    assert metrics["status"] == "completed" and len(metrics["epochs"]) == 2
    assert metrics["final"]["slides"] == 2
    assert sorted(metrics["skipped_slides"]) == ["corrupt", "glass", "missing"]
    assert "feature file not found" in metrics["skipped_slides"]["glass"]
    config = load_config(out / "config.yaml")
    assert config.model.kind == "features" and config.features.feature_dim == 16
    assert config.features.encoder["encoder"] == "small_cnn"
    assert config.features.encoder["weights_sha256"] == "random"
    assert Path(config.data.features_dir).is_absolute()
    assert metrics["outputs"]["heatmaps"] and (out / metrics["outputs"]["heatmaps"][0]).is_file()


def test_the_checkpoint_records_the_features_and_predicts_like_validation(feature_run, tmp_path):
    from gigastream.train.prediction import load_classifier, predict_slide_files

    out, metrics = feature_run
    checkpoint = out / metrics["best_checkpoint"]
    module, config = load_classifier(checkpoint)
    assert module.model.feature_dim == 16 and config.features.encoder["mpp"] == 4.0
    with open(out / "predictions.csv", newline="") as f:
        want = {r["slide_id"]: float(r["p_tumor"]) for r in csv.DictReader(f)}
    folder = Path(config.data.features_dir)
    result = predict_slide_files(
        checkpoint, [folder / f"{s}.h5" for s in want], tmp_path / "p", "cpu", progress=False
    )
    got = {p["slide_id"]: p["probs"][1] for p in result["predictions"]}
    assert got == pytest.approx(want, abs=2e-6)


def test_a_moved_features_folder_is_up_to_date_and_gives_the_same_predictions(
    feature_run, extracted, tmp_path
):
    """``mv`` of a features folder: its files stay up to date (a key holds the slide and the
    settings, not the folder) and a checkpoint evaluated on it predicts as on the original."""
    import shutil

    from gigastream.train.evaluation import evaluate_manifest

    out, metrics = feature_run
    manifest, folder, summary = extracted
    shutil.copytree(folder, tmp_path / "copy")  # the module's folder stays for other tests
    moved = tmp_path / "elsewhere" / "feats"
    moved.parent.mkdir()
    os.rename(tmp_path / "copy", moved)  # mv
    again = extract_features(_rows(manifest), moved, DATA, PATCHES, "cpu", progress=False)
    assert again.written == [] and sorted(again.skipped) == sorted(summary.written)
    checkpoint = out / metrics["best_checkpoint"]
    scores = {}
    for name, where in (("original", folder), ("moved", moved)):
        result = evaluate_manifest(
            checkpoint, manifest, tmp_path / name, "cpu", False, features_dir=where, split="all"
        )
        scores[name] = {p["slide_id"]: p["probs"] for p in result["predictions"]}
    assert scores["moved"] == scores["original"] and len(scores["moved"]) == len(summary.written)


def test_evaluate_refuses_features_of_another_dimension(feature_run, extracted, tmp_path):
    from gigastream.train.evaluation import evaluate_manifest

    out, metrics = feature_run
    manifest = extracted[0]
    bad = tmp_path / "bad"
    write_features(bad / "s3.h5", np.ones((4, 24)), np.zeros((4, 2)), {"encoder": "resnet18"})
    with pytest.raises(FeatureFileError) as caught:
        checkpoint = out / metrics["best_checkpoint"]
        evaluate_manifest(
            checkpoint, manifest, tmp_path / "e", "cpu", False, features_dir=bad, split="all"
        )
    message = str(caught.value)
    assert str(bad / "s3.h5") in message and "dimension 24 (from resnet18)" in message
    assert "the model expects 16" in message and not (tmp_path / "e").exists()


def test_a_file_of_another_dimension_in_training_is_skipped_and_listed(extracted, tmp_path):
    from gigastream.train.fitting import fit

    manifest, folder, _ = extracted
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for path in folder.glob("s*.h5"):
        (mixed / path.name).write_bytes(path.read_bytes())
    write_features(mixed / "s2.h5", np.ones((3, 24)), np.zeros((3, 2)), {"encoder": "other"})
    config = _config(manifest, mixed, train={"epochs": 1, "heatmaps": 0})
    metrics = fit(config, tmp_path / "run")
    assert metrics["status"] == "completed"
    reason = metrics["skipped_slides"]["s2"]
    assert "s2.h5: features of dimension 24" in reason and "expects 16" in reason


def test_a_trident_layout_file_trains(tmp_path):
    """Files as TRIDENT/CLAM write them with h5py: features at the root, coords with
    patch_size/patch_level attributes, no gigastream key; no slide files at all."""
    import h5py

    from gigastream.train.fitting import fit

    rng = np.random.default_rng(0)
    folder = tmp_path / "trident"
    folder.mkdir()
    lines = ["slide_id,path,label,split"]
    for i in range(6):
        with h5py.File(folder / f"t{i}.h5", "w") as f:
            f.create_dataset("features", data=rng.standard_normal((5 + i, 12)).astype(np.float32))
            xy = np.stack([np.arange(5 + i) * 512, np.full(5 + i, 1024)], axis=1)
            coords = f.create_dataset("coords", data=xy.astype(np.int64))
            coords.attrs["patch_size"] = 512
            coords.attrs["patch_level"] = 0
            coords.attrs["name"] = np.bytes_(f"t{i}".encode())
        lines.append(
            f"t{i},nowhere/t{i}.svs,{'b' if i % 2 else 'a'},{'val' if i >= 4 else 'train'}"
        )
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    config = _config(tmp_path / "m.csv", folder, train={"epochs": 1})
    metrics = fit(config, tmp_path / "run")
    assert metrics["status"] == "completed" and metrics["skipped_slides"] == {}
    assert metrics["outputs"]["heatmaps"] == []  # no slide to draw on: skipped
    assert load_config(tmp_path / "run" / "config.yaml").features.feature_dim == 12


def test_a_feature_run_needs_its_files(tmp_path):
    from gigastream.train.preparation import prepare

    manifest = make_slides(tmp_path / "slides", count=4)
    with pytest.raises(ConfigError, match="features folder not found; write it with gigastream"):
        prepare(_config(manifest, tmp_path / "none"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no readable feature file of the manifest's 4 slides"):
        prepare(_config(manifest, tmp_path / "empty"))
    write_features(tmp_path / "empty" / "s0.h5", np.ones((2, 8)), np.zeros((2, 2)), {})
    with pytest.raises(ConfigError, match="dimension 8, but features.feature_dim is 9"):
        prepare(_config(manifest, tmp_path / "empty", features={"feature_dim": 9}))
    assert prepare(_config(manifest, tmp_path / "empty")).config.features.feature_dim == 8


def test_features_dir_and_the_feature_kind_go_together():
    with pytest.raises(ConfigError, match="model.kind features trains on cached features"):
        load_config({"model": {"kind": "features"}})
    with pytest.raises(ConfigError, match="data.features_dir is for a head on cached features"):
        load_config({"data": {"features_dir": "f"}})
    with pytest.raises(ConfigError, match="unknown key .features.feature_dims.; did you mean"):
        load_config({"features": {"feature_dims": 3}})
