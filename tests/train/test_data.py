"""Slides as training examples: label checks, splits, masks, preloaded vs lazy inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gigastream.train.config import ConfigError, DataConfig, RunConfig
from gigastream.train.config_files import load_config
from gigastream.train.data import EpochSampler, SlideExamples, check_labels, split_rows
from gigastream.wsi.manifest import Manifest, read_manifest, write_splits
from gigastream.wsi.tissue import TissueMaskConfig


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
