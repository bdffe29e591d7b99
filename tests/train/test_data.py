"""Slides as training examples: label checks, splits, masks, preloaded vs lazy inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gigastream.train.config import ConfigError, DataConfig, RunConfig
from gigastream.train.config_files import load_config
from gigastream.train.data import EpochSampler, SlideExamples
from gigastream.train.selection import check_labels, split_rows
from gigastream.wsi.manifest import Manifest, read_manifest, write_splits
from gigastream.wsi.tissue import TissueMask, TissueMaskConfig


@pytest.fixture
def manifest(tmp_path):
    tissue = np.full((512, 512, 3), 244, np.uint8)
    tissue[64:448, 96:416] = (190, 100, 170)
    tissue[200:260, 200:260] = (90, 40, 120)
    Image.fromarray(tissue).save(tmp_path / "tissue.png")
    Image.fromarray(np.full((512, 512, 3), 244, np.uint8)).save(tmp_path / "glass.png")
    (tmp_path / "m.csv").write_text(
        "slide_id,path,label,mpp\ntissue,tissue.png,tumor,2.0\nglass,glass.png,normal,2.0\n"
    )
    return read_manifest(tmp_path / "m.csv")


DATA = DataConfig(mpp=4.0, tissue=TissueMaskConfig(mpp=8.0), num_workers=0)


def test_labels_differing_in_case_or_spacing_are_one_error():
    with pytest.raises(ConfigError) as info:
        check_labels(["positive", "Positive", "negative", "neg ative", "neg  ative"], None)
    text = str(info.value)
    assert "'Positive' vs 'positive'" in text and "'neg  ative' vs 'neg ative'" in text
    with pytest.raises(ConfigError, match=r"'Positive' \(did you mean 'positive'\?\)"):
        check_labels(["Positive", "negative"], ["negative", "positive"])
    with pytest.raises(ConfigError, match="at least two classes"):
        check_labels(["a", "a"], None)
    assert check_labels(["b", "a", "b"], None) == ["a", "b"]
    assert check_labels(["positive"], ["negative", "positive"]) == ["negative", "positive"]


def test_splits_from_column_file_and_stratified(manifest, tmp_path):
    from dataclasses import replace

    rows = [replace(r, split=s) for r, s in zip(manifest.rows, ["train", "val"], strict=True)]
    train, val = split_rows(Manifest(rows, ["normal", "tumor"]), RunConfig())
    assert [r.slide_id for r in train] == ["tissue"] and [r.slide_id for r in val] == ["glass"]
    splits = tmp_path / "s.csv"
    write_splits(manifest, splits, folds=2, seed=0)
    train, val = split_rows(manifest, load_config({"splits": str(splits), "fold": 1}))
    assert len(train) == 1 and len(val) == 1
    with pytest.raises(ConfigError, match="--fold 7 is not in"):
        split_rows(manifest, load_config({"splits": str(splits), "fold": 7}))


def test_examples_cache_masks_preload_and_match_lazy_reads(manifest, tmp_path):
    data = DataConfig(**{**DATA.__dict__, "mask_dir": str(tmp_path / "masks")})
    examples = SlideExamples(manifest.rows, ["normal", "tumor"], data)
    example = examples[0]
    assert example.error is None and example.label == 1
    assert example.pixels is not None and example.pixels.shape == (1, 3, 256, 256)
    assert (tmp_path / "masks" / "tissue.png").is_file()
    lazy_data = DataConfig(**{**data.__dict__, "preload_pixels": 0})
    lazy = SlideExamples(manifest.rows, ["normal", "tumor"], lazy_data)[0]
    assert lazy.pixels is None
    opened = lazy.open(lazy_data)
    try:
        whole = opened.x.read((slice(None),) * 4)
    finally:
        opened.close()
    assert torch.equal(whole, example.pixels)  # the worker's read == the lazy read


def test_tissue_free_and_unreadable_slides_become_error_examples(manifest, tmp_path):
    examples = SlideExamples(manifest.rows, ["normal", "tumor"], DATA)
    assert "glass: no tissue found" in examples[1].error
    (tmp_path / "tissue.png").write_bytes(b"broken")
    assert "tissue" in examples[0].error


def test_user_mask_file_is_used(manifest, tmp_path):
    masks = tmp_path / "user-masks"
    masks.mkdir()
    user = np.zeros((32, 32), np.uint8)
    user[:, :16] = 255  # the user says: the left half of the glass slide is tissue
    Image.fromarray(user).save(masks / "glass.png")
    data = DataConfig(**{**DATA.__dict__, "mask_dir": str(masks)})
    example = SlideExamples(manifest.rows, ["normal", "tumor"], data)[1]
    assert example.error is None
    assert example.tissue_mask.tissue_fraction == pytest.approx(0.5)


def test_epoch_sampler_is_a_seeded_permutation_per_epoch():
    sampler = EpochSampler(10, seed=3, shuffle=True)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and first == list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert list(EpochSampler(4, 0, shuffle=False)) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"train": {"epocs": 3}}, "unknown key 'train.epocs'; did you mean 'train.epochs'?"),
        ({"data": {"tissue": {"mppp": 2}}}, "'data.tissue.mppp'; did you mean 'data.tissue.mpp'?"),
        ({"modle": {}}, "unknown key 'modle'; did you mean 'model'?"),
        ({"train": {"epochs": "ten"}}, "'train.epochs' must be an integer"),
        ({"train": {"epochs": 0}}, "train.epochs must be >= 1"),
        ({"class_names": ["only"]}, "at least 2 classes"),
    ],
)
def test_config_errors_name_the_key(values, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(values, source="c.yaml")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_preloaded_and_lazy_slides_give_the_same_prediction(manifest):
    from gigastream.models.streaming_mil import StreamingMIL, StreamingMILConfig
    from gigastream.train.module import MILClassifier

    torch.manual_seed(0)
    model = StreamingMIL(
        StreamingMILConfig(tile_size=96, head="clam_sb", head_options={"attn_dim": 8})
    )
    results = []
    for preload in (4096 * 4096, 0):
        data = DataConfig(**{**DATA.__dict__, "preload_pixels": preload})
        example = SlideExamples(manifest.rows, ["normal", "tumor"], data)[0]
        assert (example.pixels is None) == (preload == 0)
        module = MILClassifier(model, ["normal", "tumor"], data=data).eval()
        results.append(module.predict_step(example, 0))
    preloaded, lazy = results
    assert preloaded["instances"] == lazy["instances"] < 16 * 16  # tissue positions only
    np.testing.assert_allclose(preloaded["probs"], lazy["probs"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np.nan_to_num(preloaded["attention_map"]), np.nan_to_num(lazy["attention_map"]), atol=1e-6
    )


def test_lazy_slides_are_augmented_like_preloaded_ones(manifest):
    """Training augmentation (flips/rot90) also reaches slides too large to preload: for the
    same draw, the lazy slide gives the preloaded one's output, instances and attention."""
    from gigastream.models.streaming_mil import StreamingMIL, StreamingMILConfig
    from gigastream.wsi.source import OrientedSource

    torch.manual_seed(0)
    model = StreamingMIL(
        StreamingMILConfig(tile_size=96, head="clam_sb", head_options={"attn_dim": 8})
    ).eval()
    outputs = []
    for seed in (3, 6):  # two draws: different orientations
        for preload in (4096 * 4096, 0):
            data = DataConfig(**{**DATA.__dict__, "preload_pixels": preload})
            example = SlideExamples(manifest.rows, ["normal", "tumor"], data)[0]
            opened = example.open(data)
            try:
                x = opened.x.augmented(torch.Generator().manual_seed(seed))
                assert isinstance(x, OrientedSource) == (preload == 0)
                with torch.no_grad():
                    outputs.append(model(x))
            finally:
                opened.close()
    for preloaded, lazy in (outputs[:2], outputs[2:]):
        assert torch.equal(preloaded.instances, lazy.instances)
        torch.testing.assert_close(preloaded.logits, lazy.logits, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            preloaded.attention_map.nan_to_num(),
            lazy.attention_map.nan_to_num(),
            atol=1e-6,
            rtol=1e-5,
        )


# ----------------------------------------------------------------------------- faults (issue 15)
def _tissue_image(left: bool) -> np.ndarray:
    image = np.full((512, 512, 3), 244, np.uint8)
    columns = slice(32, 224) if left else slice(288, 480)
    image[96:416, columns] = (190, 100, 170)
    return image


def _one_slide(tmp_path, name: str, image: np.ndarray, slide_id: str = "s") -> Manifest:
    Image.fromarray(image).save(tmp_path / f"{name}.png")
    csv = tmp_path / f"{name}.csv"
    csv.write_text(f"slide_id,path,label,mpp\n{slide_id},{name}.png,tumor,2.0\n")
    return read_manifest(csv)


def _mask_of(manifest: Manifest, data: DataConfig) -> np.ndarray:
    example = SlideExamples(manifest.rows, ["normal", "tumor"], data)[0]
    assert example.error is None, example.error
    return example.tissue_mask.mask


def test_cached_mask_of_another_file_with_the_same_slide_id_is_recomputed(tmp_path):
    data = DataConfig(**{**DATA.__dict__, "mask_dir": str(tmp_path / "masks")})
    left = _mask_of(_one_slide(tmp_path, "left", _tissue_image(left=True)), data)
    right = _mask_of(_one_slide(tmp_path, "right", _tissue_image(left=False)), data)  # same id
    assert left[:, : left.shape[1] // 2].any() and not left[:, left.shape[1] // 2 :].any()
    assert right[:, right.shape[1] // 2 :].any() and not right[:, : right.shape[1] // 2].any()
    again = _mask_of(_one_slide(tmp_path, "right", _tissue_image(left=False)), data)
    assert np.array_equal(again, right)  # rewritten file: a new identity, the same mask


def test_cached_mask_is_recomputed_when_the_tissue_settings_change(tmp_path):
    manifest = _one_slide(tmp_path, "left", _tissue_image(left=True))
    data = DataConfig(**{**DATA.__dict__, "mask_dir": str(tmp_path / "masks")})
    coarse = _mask_of(manifest, data)
    finer = DataConfig(**{**data.__dict__, "tissue": TissueMaskConfig(mpp=2.0)})
    fine = _mask_of(manifest, finer)
    assert fine.shape == (512, 512) and coarse.shape == (256, 256)
    assert _mask_of(manifest, data).shape == (256, 256)  # and back


def test_truncated_cached_mask_is_recomputed_and_the_slide_used(manifest, tmp_path):
    data = DataConfig(**{**DATA.__dict__, "mask_dir": str(tmp_path / "masks")})
    first = _mask_of(manifest, data)
    cached = tmp_path / "masks" / "tissue.png"
    cached.write_bytes(cached.read_bytes()[: cached.stat().st_size // 2])
    assert np.array_equal(_mask_of(manifest, data), first)
    assert np.array_equal(TissueMask.load(cached).mask, first)  # rewritten whole
    names = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert names == ["tissue.png", "tissue.png.json"]  # the mask, its key; no temporaries


def test_unknown_split_values_are_one_error_with_the_closest_valid_one(tmp_path):
    splits = {"a": "trian", "b": "validaton", "c": "train", "d": "val", "e": "test", "f": "Trian"}
    lines = ["slide_id,path,label,split"]
    for i, (slide_id, split) in enumerate(splits.items()):
        _one_slide(tmp_path, slide_id, _tissue_image(left=i % 2 == 0))
        lines.append(f"{slide_id},{slide_id}.png,{'tumor' if i % 2 else 'normal'},{split}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    manifest = read_manifest(tmp_path / "m.csv")
    with pytest.raises(ConfigError) as info:
        split_rows(manifest, RunConfig(manifest=str(tmp_path / "m.csv")))
    text = str(info.value)
    assert "\n" not in text and str(tmp_path / "m.csv") in text
    assert "'trian' (a; did you mean 'train'?)" in text
    assert "'validaton' (b; did you mean 'validation'?)" in text
    assert "'Trian' (f; did you mean 'train'?)" in text
    assert "'test'" not in text  # test rows are left out on purpose


def test_the_same_file_in_training_and_validation_is_refused(tmp_path):
    _one_slide(tmp_path, "a", _tissue_image(left=True))
    _one_slide(tmp_path, "b", _tissue_image(left=False))
    (tmp_path / "sub").mkdir()
    (tmp_path / "m.csv").write_text(
        "slide_id,path,label,split\n"
        "a,a.png,tumor,train\nb,b.png,normal,train\n"
        "a_again,sub/../a.png,tumor,val\nb2,b.png,normal,train\n"
    )
    manifest = read_manifest(tmp_path / "m.csv")
    with pytest.raises(ConfigError) as info:
        split_rows(manifest, RunConfig(manifest=str(tmp_path / "m.csv")))
    text = str(info.value)
    assert "'a' (training) and 'a_again' (validation)" in text
    assert str((tmp_path / "a.png").resolve()) in text
    assert "'b'" not in text  # the same file twice within training is no leak


@pytest.mark.parametrize(
    ("slide_mpp", "run_mpp", "needles"),
    [
        (1000.0, 0.25, ["1000 um/px", "2,048,000 x 2,048,000 px", "over the limit"]),
        (2.0, 1e-4, ["2 um/px", "10,240,000 x 10,240,000 px", "over the limit"]),
        (1e-9, 4.0, ["1e-09 um/px", "under one pixel"]),
    ],
    ids=["coarse-slide-mpp", "fine-run-mpp", "tiny-slide-mpp"],
)
def test_a_slide_whose_input_at_the_run_mpp_is_absurd_is_skipped(
    tmp_path, slide_mpp, run_mpp, needles
):
    Image.fromarray(_tissue_image(left=True)).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text(f"slide_id,path,label,mpp\nodd,a.png,tumor,{slide_mpp!r}\n")
    rows = read_manifest(tmp_path / "m.csv").rows
    data = DataConfig(**{**DATA.__dict__, "mpp": run_mpp, "mask_dir": str(tmp_path / "masks")})
    example = SlideExamples(rows, ["normal", "tumor"], data)[0]
    assert example.error is not None and example.error.startswith("odd (")
    for needle in needles:
        assert needle in example.error, example.error
    assert "mpp" in example.error and not any((tmp_path / "masks").iterdir())  # nothing read


def test_the_input_size_limit_is_a_setting():
    from gigastream.wsi.reader import SlideReader
    from gigastream.wsi.source import InputSizeError, check_input_size

    slide = SlideReader.from_array(np.zeros((512, 512, 3), np.uint8), mpp=0.5)
    assert check_input_size(slide, 1.0, max_pixels=256 * 256) == (256, 256)
    with pytest.raises(InputSizeError, match=r"256 x 256 px .*over the limit of 65,535 pixels"):
        check_input_size(slide, 1.0, max_pixels=256 * 256 - 1)
    with pytest.raises(ConfigError, match="data.max_input_pixels must be a positive"):
        DataConfig(max_input_pixels=0).validate()


# ----------------------------------------------------------------------------- issue 16
def test_the_positive_class_goes_last_and_a_typo_names_the_closest_label():
    assert check_labels(["normal", "cancer", "normal"], None) == ["cancer", "normal"]
    assert check_labels(["normal", "cancer"], None, positive_class="cancer") == [
        "normal",
        "cancer",
    ]
    assert check_labels(["b", "a", "c"], ["c", "b", "a"], positive_class="b") == ["c", "a", "b"]
    with pytest.raises(ConfigError) as info:
        check_labels(["normal", "cancer"], None, positive_class="cancr")
    text = str(info.value)
    assert "positive_class 'cancr' is not one of the labels ['cancer', 'normal']" in text
    assert "(did you mean 'cancer'?)" in text and "--positive-class" in text
    with pytest.raises(ConfigError, match=r"did you mean 'cancer'\?"):
        check_labels(["normal", "cancer"], None, positive_class="Cancer")


def test_a_slide_scanned_coarser_than_the_run_is_refused_or_upsampled_with_a_warning(caplog):
    from gigastream.train.data import check_slide_input
    from gigastream.wsi.reader import SlideReader
    from gigastream.wsi.source import InputSizeError

    coarse = SlideReader.from_array(np.zeros((128, 96, 3), np.uint8), mpp=2.0)
    with pytest.raises(InputSizeError) as info:
        check_slide_input(coarse, "s1", DataConfig(mpp=0.5))  # default max_upsample 1.0
    text = str(info.value)
    for needle in ("s1 (<array>)", "scanned at 2 um/px", "the run's 0.5 um/px", "upsampled 4x"):
        assert needle in text, text
    assert "data.max_upsample 1 allows" in text and "data.max_upsample: 4" in text
    with caplog.at_level("WARNING", logger="gigastream.train.data"):
        allowed = DataConfig(mpp=0.5, max_upsample=4.0)
        assert check_slide_input(coarse, "s1", allowed) == (384, 512)
        assert check_slide_input(coarse, "s1", allowed) == (384, 512)  # warned once
    warnings = [r.getMessage() for r in caplog.records if "upsampled" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "s1 (<array>): scanned at 2 um/px" in warnings[0] and "upsampled 4x" in warnings[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="gigastream.train.data"):  # within the 1% tolerance
        near = SlideReader.from_array(np.zeros((100, 100, 3), np.uint8), mpp=0.5025)
        check_slide_input(near, "s2", DataConfig(mpp=0.5))
        check_slide_input(coarse, "s3", DataConfig(mpp=4.0))  # downsampled: fine
    assert not caplog.records
    with pytest.raises(ConfigError, match="data.max_upsample must be a number >= 1"):
        DataConfig(max_upsample=0.5).validate()


def test_slide_mpp_fills_in_only_slides_without_an_mpp_of_their_own(tmp_path):
    from gigastream.train.selection import with_slide_mpp
    from gigastream.wsi.pyramid import write_pyramid

    image = _tissue_image(left=True)
    write_pyramid(tmp_path / "own.tif", [image], 512, 512, mpp=0.5)  # metadata 0.5
    Image.fromarray(image).save(tmp_path / "bare.png")  # no metadata
    Image.fromarray(image).save(tmp_path / "given.png")
    (tmp_path / "m.csv").write_text(
        "slide_id,path,label,mpp\nown,own.tif,tumor,\nbare,bare.png,normal,\n"
        "given,given.png,normal,3.0\nmissing,missing.png,tumor,\n"
    )
    rows = read_manifest(tmp_path / "m.csv", check_files=False).rows
    mpps = {r.slide_id: r.mpp for r in with_slide_mpp(rows, 2.0)}
    # the file's own mpp and the manifest's mpp column win; an unreadable slide is left
    assert mpps == {"own": None, "bare": 2.0, "given": 3.0, "missing": None}
    assert with_slide_mpp(rows, None) == rows
    config = RunConfig(manifest=str(tmp_path / "m.csv"), data=DataConfig(slide_mpp=2.0))
    train, val = split_rows(
        Manifest(rows[:3], ["normal", "tumor"]), _with_val_fraction(config, 0.5)
    )
    assert {r.slide_id: r.mpp for r in train + val} == {"own": None, "bare": 2.0, "given": 3.0}
    with pytest.raises(ConfigError, match="data.slide_mpp .--slide-mpp. must be a positive"):
        DataConfig(slide_mpp=0.0).validate()


def _with_val_fraction(config: RunConfig, val_fraction: float) -> RunConfig:
    from dataclasses import replace

    return replace(config, train=replace(config.train, val_fraction=val_fraction))


def test_too_few_cases_for_the_hold_out_say_how_many_and_which_setting(tmp_path):
    for name, left in (("a", True), ("b", False)):
        Image.fromarray(_tissue_image(left=left)).save(tmp_path / f"{name}.png")
    (tmp_path / "m.csv").write_text("slide_id,path,label\na,a.png,tumor\nb,b.png,normal\n")
    manifest = read_manifest(tmp_path / "m.csv")
    with pytest.raises(ConfigError) as info:
        split_rows(manifest, RunConfig(manifest=str(tmp_path / "m.csv")))
    text = str(info.value)
    assert "2 slide(s) of 2 case(s) and no split column or splits file" in text
    assert "train.val_fraction 0.25" in text and "needs at least 4 cases" in text
    assert "set train.val_fraction to 0.5" in text and "cannot fill" not in text
    train, val = split_rows(manifest, _with_val_fraction(RunConfig(), 0.5))  # the fix works
    assert len(train) == 1 and len(val) == 1
