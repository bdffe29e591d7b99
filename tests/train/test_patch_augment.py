"""Per-patch augmentation of patch bags (issue 14: ``patches.augment: patch``,
``patches.color_jitter``): each patch gets its own orientation and colour factors, drawn
once per step and indexed by patch, so chunks, ``take``, lazy and preloaded bags see the
same pixels, ``accumulate`` stays exactly ``baseline`` (float64), ``sample`` gets the
augmentation of the patches it took, the ``frozen`` cache key follows the draws, bad
settings are one line, and a tiny run trains with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gigastream.models.encoders import EncoderConfig
from gigastream.models.patch_mil import PatchConfig, PatchMIL
from gigastream.train.config import ConfigError
from gigastream.train.config_files import load_config, to_dict
from gigastream.train.patch_data import PatchDraws, PatchSource, jitter_colors
from gigastream.wsi.patches import PatchBag, patch_grid
from gigastream.wsi.reader import SlideReader
from gigastream.wsi.source import draw_orientation, orient_tensor
from tests.exactness import FLOAT64, assert_same_gradients
from tests.train.conftest import tiny_config

SMALL = {"name": "small_cnn", "options": {"out_dim": 16, "width": 8}}
MODEL = {"kind": "patches", "head": "abmil", "head_options": {"attn_dim": 16}}


def _slide(patches: int, rows: int = 1) -> SlideReader:
    """An in-memory slide of ``rows x patches`` random 32 px patches."""
    pixels = np.random.default_rng(0).integers(0, 256, (32 * rows, 32 * patches, 3), np.uint8)
    return SlideReader.from_array(pixels, mpp=1.0)


def _sources(slide: SlideReader, **how) -> tuple[PatchSource, PatchSource]:
    """``(preloaded, lazy)`` sources of the slide's patch bag."""
    grid = patch_grid(slide, mpp=1.0, patch_size=32)
    bag = PatchBag(slide, grid)
    return PatchSource(bag.load(), grid, **how), PatchSource(bag, grid, **how)


def _seeded(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _whole(source: PatchSource) -> torch.Tensor:
    return source.read((slice(None),))


def test_each_patch_gets_its_own_orientation():
    preloaded, _ = _sources(_slide(8, rows=8))  # 64 patches
    raw = _whole(preloaded)
    turned = PatchSource(preloaded.bag, preloaded.grid, augment="patch").augmented(_seeded())
    codes = turned.draws.orientations
    assert codes.shape == (64,) and len(codes.unique()) > 1
    assert turned.orientation == (0, False) and turned.draws.colors is None
    got = _whole(turned)
    for i, code in enumerate(codes.tolist()):
        assert torch.equal(got[i], orient_tensor(raw[i], code % 4, code >= 4))


def test_the_bag_unit_keeps_one_orientation_per_bag():
    """``augment: bag`` without jitter is today's draw: one orientation, no per-patch draws."""
    preloaded, _ = _sources(_slide(6))
    turned = preloaded.augmented(_seeded())
    assert turned.orientation == draw_orientation(_seeded()) and turned.draws is None
    jittered = PatchSource(preloaded.bag, preloaded.grid, color_jitter=0.2).augmented(_seeded())
    assert jittered.orientation == turned.orientation  # the same first draw
    colors = jittered.draws.colors
    assert jittered.draws.orientations is None and torch.equal(colors, colors[:1].expand(6, 2))


@pytest.mark.parametrize("jitter", [0.0, 0.3], ids=["orientation", "jitter"])
def test_draws_are_indexed_by_patch_whatever_reads_them(jitter):
    """Same generator state, same pixels; chunks, ``take`` and a lazy bag agree with the
    whole read of the preloaded bag."""
    how = {"augment": "patch", "color_jitter": jitter}
    preloaded, lazy = _sources(_slide(8, rows=2), **how)  # 16 patches
    a, b = preloaded.augmented(_seeded()), preloaded.augmented(_seeded())
    whole = _whole(a)
    assert whole.dtype == torch.uint8 and torch.equal(_whole(b), whole)
    assert not torch.equal(_whole(preloaded.augmented(_seeded(4))), whole)
    chunks = torch.cat([a.read((slice(i, i + 5),)) for i in range(0, 16, 5)])
    assert torch.equal(chunks, whole)
    picks = torch.tensor([9, 0, 15, 3, 3])
    assert torch.equal(a.take(picks), whole[picks])
    lazy_a = lazy.augmented(_seeded())
    assert torch.equal(_whole(lazy_a), whole)
    assert torch.equal(lazy_a.read((slice(4, 11),)), whole[4:11])
    assert torch.equal(lazy_a.take(picks), whole[picks])
    if jitter:  # the colours change too, patch by patch
        oriented = PatchSource(a.bag, a.grid, draws=PatchDraws(a.draws.orientations))
        changed = (_whole(oriented) != whole).flatten(1).any(1)
        assert changed.sum() > 8


def test_color_jitter_scales_brightness_and_contrast():
    x = torch.tensor([[[[50, 150], [100, 100]]]], dtype=torch.uint8).expand(2, 3, 2, 2)
    same = jitter_colors(x, torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
    assert torch.equal(same, x)
    out = jitter_colors(x, torch.tensor([[2.0, 1.0], [1.0, 0.5]]))
    assert out[0, 0].tolist() == [[100, 255], [200, 200]]  # brightness x2, clamped
    assert out[1, 0].tolist() == [[75, 125], [100, 100]]  # contrast /2 around the mean 100


def test_the_frozen_cache_key_follows_the_per_patch_draws(tmp_path):
    path = tmp_path / "slide.bin"
    path.write_bytes(b"a slide file")
    preloaded, _ = _sources(_slide(8))
    source = PatchSource(preloaded.bag, preloaded.grid, slide=(str(path), None), augment="patch")
    key = source.cache_key
    first, again = source.augmented(_seeded()), source.augmented(_seeded())
    assert key is not None and first.cache_key == again.cache_key != key
    assert source.augmented(_seeded(4)).cache_key != first.cache_key
    jittered = PatchSource(source.bag, source.grid, slide=source.slide, color_jitter=0.1)
    assert jittered.augmented(_seeded()).cache_key not in (key, first.cache_key)


def _model(strategy: str, **settings) -> PatchMIL:
    torch.manual_seed(0)
    encoder = EncoderConfig(SMALL["name"], options=SMALL["options"])
    config = PatchConfig(encoder, patch_size=32, strategy=strategy, **settings)
    return PatchMIL(config, "gated_abmil", 2, {"attn_dim": 8}).double()


@pytest.mark.parametrize("lazy", [False, True], ids=["preloaded", "lazy"])
def test_accumulate_equals_baseline_with_per_patch_augmentation_float64(lazy):
    """Logits, loss and every parameter gradient; the chunks are read in the forward pass
    and again in the recompute of the backward pass, with the same augmented pixels."""
    model = _model("baseline", chunk_size=3)  # 7 patches: chunks 3 + 3 + 1
    how = {"augment": "patch", "color_jitter": 0.25}
    source = _sources(_slide(7), **how)[lazy].augmented(_seeded())
    reads = []
    read = source.read
    source.read = lambda index: reads.append(len(range(7)[index[0]])) or read(index)

    def run(strategy):
        def outputs(x):
            model.strategy.name = strategy
            out = model(source, label=1)
            return {"logits": out.logits, "loss": model.loss(out, 1)}

        return outputs

    x = torch.zeros(1, dtype=torch.float64)  # unused: the bag is the source
    ordinary, _ = assert_same_gradients(
        run("baseline"), run("accumulate"), x, model, input_grad=False, tolerance=FLOAT64
    )
    assert len(ordinary.grads) == len(list(model.parameters()))
    assert reads == [7, 1, 3, 3, 1, 3, 3, 1], reads  # baseline; probe, chunks, recompute


def test_sample_gets_the_augmentation_of_the_patches_it_took():
    model = _model("sample", sample_size=3)
    how = {"augment": "patch", "color_jitter": 0.25}
    source = _sources(_slide(7), **how)[1].augmented(_seeded())
    features, kept = model._bags.train_instances(source, _seeded(5))
    assert kept.shape == (3,)
    with torch.no_grad():
        want = model.encoder(_whole(source))[kept]  # (3, D)
    torch.testing.assert_close(features.detach(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("patches", "message"),
    [
        ({"augment": "nonsense"}, "patches: augment must be bag .* or patch .*'nonsense'"),
        ({"color_jitter": -0.1}, r"patches: color_jitter must be in \[0, 1\).* got -0.1"),
        ({"color_jitter": 1.0}, r"patches: color_jitter must be in \[0, 1\).* got 1.0"),
    ],
    ids=["unit", "negative", "one"],
)
def test_bad_augmentation_settings_are_one_line(patches, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_config({"model": {"kind": "patches"}, "patches": patches})
    assert "\n" not in str(caught.value)


def test_the_settings_round_trip_and_come_from_the_flags(tmp_path):
    from gigastream.cli import common
    from gigastream.cli.main import build_parser

    config = load_config({"model": {"kind": "patches"}, "patches": {"augment": "patch"}})
    config.patches.color_jitter = 0.2
    again = load_config(to_dict(config))  # as a checkpoint's stored config is read back
    assert (again.patches.augment, again.patches.color_jitter) == ("patch", 0.2)
    assert load_config({}).patches.augment == "bag"  # old configs: today's behaviour
    flags = ["--model-kind", "patches", "--patch-augment", "patch", "--color-jitter", "0.2"]
    args = build_parser().parse_args(
        ["train", "--manifest", "m.csv", "--out", str(tmp_path), *flags]
    )
    patches = common.run_overrides(args)["patches"]
    assert (patches["augment"], patches["color_jitter"]) == ("patch", 0.2)
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["train", "--manifest", "m", "--out", "o", "--patch-augment", "x"]
        )


def test_a_tiny_run_trains_with_per_patch_augmentation(manifest, tmp_path, monkeypatch):
    from gigastream.train.fitting import fit

    seen = []
    augmented = PatchSource.augmented
    monkeypatch.setattr(
        PatchSource, "augmented", lambda self, g=None: seen.append(augmented(self, g)) or seen[-1]
    )
    patches = {"encoder": SMALL, "patch_size": 32, "chunk_size": 16, "augment": "patch"}
    patches["color_jitter"] = 0.1
    config = tiny_config(manifest, model=MODEL, patches=patches, train={"epochs": 1, "heatmaps": 0})
    metrics = fit(config, tmp_path / "run")
    assert metrics["status"] == "completed" and metrics["final"]["slides"] == 2
    assert seen and all(s.draws is not None and s.draws.orientations is not None for s in seen)
    from gigastream.train.prediction import load_classifier

    _, stored = load_classifier(tmp_path / "run" / metrics["best_checkpoint"])
    assert (stored.patches.augment, stored.patches.color_jitter) == ("patch", 0.1)
