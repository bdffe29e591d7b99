"""Patch-bag runs (``model.kind: patches``): bags made in the workers (preloaded or lazy),
unusable slides skipped, bad settings refused before training, and one end-to-end run whose
checkpoint alone reproduces its predictions."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from gigastream.models.patch_mil import PatchConfig
from gigastream.train.config import ConfigError, DataConfig
from gigastream.train.config_files import load_config
from gigastream.train.patch_data import PatchExamples, PatchSource
from gigastream.train.preparation import prepare
from gigastream.wsi.manifest import read_manifest
from gigastream.wsi.tissue import TissueMaskConfig
from tests.train.conftest import copy_manifest, tiny_config

DATA = DataConfig(mpp=4.0, tissue=TissueMaskConfig(mpp=8.0), num_workers=0)
PATCHES = PatchConfig(patch_size=32)
#: A patch-bag model on the tiny synthetic slides of ``tests/train/conftest.py``.
MODEL = {"kind": "patches", "head": "abmil", "head_options": {"attn_dim": 16}}
SMALL = {"name": "small_cnn", "options": {"out_dim": 16, "width": 8}}


@pytest.fixture
def pngs(tmp_path):
    """Two 512 px images at 2 um/px: tissue (a 384 x 320 px block) and bare glass."""
    tissue = np.full((512, 512, 3), 244, np.uint8)
    tissue[64:448, 96:416] = (190, 100, 170)
    Image.fromarray(tissue).save(tmp_path / "tissue.png")
    Image.fromarray(np.full((512, 512, 3), 244, np.uint8)).save(tmp_path / "glass.png")
    (tmp_path / "m.csv").write_text(
        "slide_id,path,label,mpp\ntissue,tissue.png,tumor,2.0\nglass,glass.png,normal,2.0\n"
    )
    return read_manifest(tmp_path / "m.csv")


def test_bags_are_preloaded_or_lazy_with_the_same_patches(pngs, tmp_path):
    data = replace(DATA, mask_dir=str(tmp_path / "masks"))
    example = PatchExamples(pngs.rows, ["normal", "tumor"], data, PATCHES)[0]
    assert example.error is None and example.label == 1
    assert example.grid.grid_shape == (8, 8) and 20 <= len(example.grid) <= 40
    assert example.pixels.shape == (len(example.grid), 3, 32, 32)
    assert example.pixels.dtype == torch.uint8
    assert (tmp_path / "masks" / "tissue.png").is_file()  # the slides' mask cache
    lazy_data = replace(data, preload_pixels=0)
    lazy = PatchExamples(pngs.rows, ["normal", "tumor"], lazy_data, PATCHES)[0]
    assert lazy.pixels is None and np.array_equal(lazy.grid.cells, example.grid.cells)
    opened = lazy.open(lazy_data)
    try:
        assert torch.equal(opened.x.read((slice(None),)), example.pixels)
        picks = torch.tensor([5, 0, 2])
        assert torch.equal(opened.x.take(picks), example.pixels[picks])
        turned = opened.x.augmented(torch.Generator().manual_seed(1))
        k, flip = turned.orientation
        want = torch.rot90(example.pixels[:3], k, (-2, -1))
        assert torch.equal(turned.read((slice(0, 3),)), want.flip(-1) if flip else want)
    finally:
        opened.close()


def test_unusable_slides_become_error_examples(pngs):
    names = ["normal", "tumor"]
    assert "glass: no tissue found" in PatchExamples(pngs.rows, names, DATA, PATCHES)[1].error
    large = PatchExamples(pngs.rows, names, DATA, PatchConfig(patch_size=512))[0]
    assert "a 512 px patch is larger than the slide at 4.0 µm/px (256x256 px)" in large.error
    strict = PatchExamples(pngs.rows, names, DATA, PatchConfig(patch_size=256, min_tissue=1.0))
    assert "no 256 px patch at 4.0 µm/px has a tissue fraction >= 1.0" in strict[0].error


@pytest.mark.parametrize(
    ("patches", "message"),
    [
        (
            {"patch_size": 1024},
            "none of the first 3 slides has a patch: .*synth_001.tif: a 1024 px patch is larger",
        ),
        ({"patch_size": 256, "min_tissue": 1.0}, "has a tissue fraction >= 1.0"),
        ({"encoder": {"name": "resnet99"}}, "patches.encoder: unknown encoder 'resnet99'"),
        ({"encoder": {"name": "timm:vit_tinny_patch16_224"}}, "did you mean vit_tiny_patch16"),
        ({"encoder": {"name": "timm:vit_tiny_patch16_224"}}, "does not take 32 px patches"),
        ({"strategy": "all"}, "patches: unknown strategy 'all'"),
        ({"encoder": {"name": "resnet18", "finetune": "some"}}, "encoder.finetune must be"),
    ],
    ids=["patch>slides", "no-tissue-patch", "encoder", "timm-name", "vit-size", "strategy", "ft"],
)
def test_bad_patch_settings_fail_before_training(manifest, patches, message):
    with pytest.raises(ConfigError, match=message) as caught:
        prepare(tiny_config(manifest, model=MODEL, patches={"patch_size": 32, **patches}))
    assert "\n" not in str(caught.value)


def test_keys_of_the_patches_section_are_checked():
    with pytest.raises(
        ConfigError, match="unknown key 'patches.chunk'; did you mean 'patches.chunk_size'"
    ):
        load_config({"patches": {"chunk": 3}})
    with pytest.raises(
        ConfigError, match="model: kind must be streaming, patches or features, got 'patch'"
    ):
        load_config({"model": {"kind": "patch"}})
    with pytest.raises(ConfigError, match="--bag-strategy accumulate"):
        load_config({"train": {"strategy": "accumulate"}})
    assert load_config({}).model.kind == "streaming"  # old configs: today's model


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory, manifest):
    """A two-epoch patch-bag run (small_cnn, 32 px patches, accumulate; one loader worker)."""
    from gigastream.train.fitting import fit

    out = tmp_path_factory.mktemp("patch_run") / "run"
    patches = {"encoder": SMALL, "patch_size": 32, "chunk_size": 16}
    config = tiny_config(manifest, model=MODEL, patches=patches, data={"num_workers": 1})
    return out, fit(config, out)


def _csv(path):
    with open(path, newline="") as f:
        return {r["slide_id"]: float(r["p_positive"]) for r in csv.DictReader(f)}


def test_a_patch_run_writes_metrics_predictions_and_heatmaps(patch_run):
    out, metrics = patch_run
    assert metrics["status"] == "completed" and len(metrics["epochs"]) == 2
    assert json.loads((out / "metrics.json").read_text())["final"]["slides"] == 2
    assert metrics["skipped_slides"] == {}
    assert len(_csv(out / "predictions.csv")) == 2
    assert metrics["outputs"]["heatmaps"] and (out / metrics["outputs"]["heatmaps"][0]).is_file()
    assert load_config(out / "config.yaml").patches.encoder.name == "small_cnn"


def test_the_checkpoint_alone_reproduces_the_predictions(patch_run, manifest, tmp_path):
    from gigastream.train.prediction import load_classifier, predict_slide_files

    out, metrics = patch_run
    module, config = load_classifier(out / metrics["best_checkpoint"])
    assert config.model.kind == "patches" and module.model.output_stride == 32
    want = _csv(out / "predictions.csv")
    rows = {r["slide_id"]: r["path"] for r in csv.DictReader(open(manifest))}
    slides = [manifest.parent / rows[slide_id] for slide_id in want]
    result = predict_slide_files(
        out / metrics["best_checkpoint"], slides, tmp_path / "pred", progress=False, heatmaps=True
    )
    assert _csv(tmp_path / "pred" / "predictions.csv") == pytest.approx(want, abs=2e-6)
    assert len(result["heatmaps"]) == 2


def test_lazy_bags_predict_like_preloaded_ones(patch_run, manifest, tmp_path):
    from gigastream.train.prediction import load_classifier, run_predictions

    out, metrics = patch_run
    module, config = load_classifier(out / metrics["best_checkpoint"])
    rows = read_manifest(copy_manifest(manifest, tmp_path / "m.csv")).rows[:2]
    data = replace(config.data, num_workers=0, mask_dir=str(tmp_path / "masks"))
    preloaded = run_predictions(module, rows, config, data, device="cpu")
    lazy = run_predictions(module, rows, config, replace(data, preload_pixels=0), device="cpu")
    for a, b in zip(preloaded, lazy, strict=True):
        np.testing.assert_array_equal(a["probs"], b["probs"])
        np.testing.assert_array_equal(a["attention_map"], b["attention_map"])
        assert a["instances"] == b["instances"] > 0


@pytest.mark.parametrize("strategy", ["baseline", "sample", "frozen"])
def test_every_strategy_trains_on_the_engine(manifest, tmp_path, strategy):
    from gigastream.train.fitting import fit

    patches = {"encoder": SMALL, "patch_size": 32, "strategy": strategy, "sample_size": 8}
    config = tiny_config(manifest, model=MODEL, patches=patches, train={"epochs": 1, "heatmaps": 0})
    metrics = fit(config, tmp_path / "run")
    assert metrics["status"] == "completed" and metrics["final"]["slides"] == 2


def test_the_frozen_cache_key_follows_the_slide_file_grid_and_orientation(pngs, tmp_path):
    import os
    import shutil

    row = pngs.rows[0]
    (tmp_path / "copy").mkdir()
    path = tmp_path / "copy" / "tissue.png"
    shutil.copy(row.path, path)
    dataset = PatchExamples([replace(row, path=path)], ["normal", "tumor"], DATA, PATCHES)
    example = dataset[0]
    source = example.open(DATA).x
    key = source.cache_key
    assert key is not None and example.open(DATA).x.cache_key == key  # the same bag
    turned = PatchSource(source.bag, source.grid, (1, False), source.slide)
    assert turned.cache_key != key
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file changed
    assert example.open(DATA).x.cache_key != key


def test_a_random_encoders_batchnorm_is_calibrated_on_patches(pngs):
    from gigastream.models.patch_mil import PatchMIL
    from gigastream.streaming.batchnorm import FrozenBatchNorm
    from gigastream.train.calibration import calibrate_model

    config = load_config({"model": {"kind": "patches"}, "patches": {"patch_size": 32}})
    model = PatchMIL(config.patches)  # resnet18, random initialisation: calibrated (auto)
    norm = next(m for m in model.encoder.modules() if isinstance(m, FrozenBatchNorm))
    dataset = PatchExamples(pngs.rows, ["normal", "tumor"], DATA, config.patches)
    assert calibrate_model(model, config, dataset, DATA) == 1  # the glass slide has no bag
    assert not torch.allclose(norm.running_mean, torch.zeros_like(norm.running_mean))
    small = replace(
        config,
        patches=replace(config.patches, encoder=replace(config.patches.encoder, name="small_cnn")),
    )
    assert calibrate_model(PatchMIL(small.patches), small, dataset, DATA) == 0  # no BatchNorm


def test_unreadable_and_corrupt_slides_are_skipped_with_the_default_workers(manifest, tmp_path):
    """A patch run the way it fails for users: the default DataLoader workers, a file that is
    no slide (fails in a worker) and a slide whose tile cannot be decoded (fails in the
    training step, read lazily patch chunk by chunk): both skipped and listed, the run ends."""
    import shutil

    from gigastream.train.config import DataConfig as Defaults
    from gigastream.train.fitting import fit
    from tests.train.test_fitting import _corrupt_level0_tile

    garbage, victim = tmp_path / "garbage.tif", tmp_path / "corrupt.tif"
    garbage.write_bytes(b"not a slide at all")
    shutil.copy(manifest.parent / "slides" / "synth_001.tif", victim)
    _corrupt_level0_tile(victim)

    def use_bad(rows):
        rows = rows[:6]
        rows[1] = {**rows[1], "slide_id": "corrupt", "path": str(victim), "case_id": "c"}
        rows[2] = {**rows[2], "slide_id": "garbage", "path": str(garbage), "case_id": "g"}
        return rows

    bad = copy_manifest(manifest, tmp_path / "manifest.csv", use_bad)
    patches = {"encoder": SMALL, "patch_size": 32, "strategy": "accumulate", "chunk_size": 16}
    config = tiny_config(
        bad,
        model=MODEL,
        patches=patches,
        data={"mpp": 0.5, "preload_pixels": 0, "num_workers": Defaults().num_workers},
        train={"epochs": 1, "heatmaps": 0, "val_fraction": 0.5},
    )
    assert config.data.num_workers == 2  # the default
    metrics = fit(config, tmp_path / "run")
    assert metrics["status"] == "completed"
    assert sorted(metrics["skipped_slides"]) == ["corrupt", "garbage"]
    assert "garbage.tif" in metrics["skipped_slides"]["garbage"]
