"""PatchMIL: ``accumulate`` == ``baseline`` (logits and every gradient) for a ResNet and a
timm ViT encoder, on a tensor bag and on a lazy bag read from a slide; ``sample`` sees
``sample_size`` patches (read alone); attention on the patch grid; the engine contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gigastream.models.encoders import EncoderConfig, EncoderError
from gigastream.models.patch_mil import PatchConfig, PatchMIL
from gigastream.train.module import MILModel
from gigastream.wsi.patches import PatchBag, patch_grid
from gigastream.wsi.reader import SlideReader
from tests.exactness import FLOAT64, assert_same_gradients

VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}
ENCODERS = {
    "resnet18": EncoderConfig("resnet18"),
    "vit": EncoderConfig("timm:vit_tiny_patch16_224", options=VIT),
}


def _model(encoder: str, strategy: str, head: str = "gated_abmil", **settings) -> PatchMIL:
    torch.manual_seed(0)
    config = PatchConfig(ENCODERS[encoder], patch_size=32, strategy=strategy, **settings)
    return PatchMIL(config, head, 2, {"attn_dim": 8}).double()


def _slide_bag(patches: int = 7) -> PatchBag:
    """A lazy bag of ``patches`` 32 px patches read from an in-memory slide."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (32, 32 * patches, 3), dtype=np.uint8)
    slide = SlideReader.from_array(pixels, mpp=1.0)
    return PatchBag(slide, patch_grid(slide, mpp=1.0, patch_size=32))


def _run(model: PatchMIL, strategy: str, bag=None):
    """``x -> logits`` of ``model`` with ``strategy`` (the same parameters whatever the
    strategy); ``bag``: a lazy bag to use instead of ``x``."""

    def logits(x):
        model.strategy.name = strategy  # the StrategyConfig the model encodes bags by
        return model(x if bag is None else bag, label=1).logits

    return logits


@pytest.mark.parametrize("encoder", list(ENCODERS))
@pytest.mark.parametrize("lazy", [False, True], ids=["tensor", "lazy"])
def test_accumulate_equals_baseline_float64(encoder, lazy):
    """Logits and the gradient of every parameter (encoder and head) and of every patch; a
    lazy bag is read chunk by chunk, and again in the recompute."""
    model = _model(encoder, "baseline", chunk_size=3)  # 7 patches: chunks 3 + 3 + 1
    reads = []
    if lazy:
        bag, x = _slide_bag(7), torch.zeros(1, dtype=torch.float64)  # x: unused
        read = bag.read
        bag.read = lambda index: reads.append(len(range(7)[index[0]])) or read(index)
    else:
        bag, x = None, torch.rand(7, 3, 32, 32, dtype=torch.float64)
    ordinary, _ = assert_same_gradients(
        _run(model, "baseline", bag),
        _run(model, "accumulate", bag),
        x,
        model,
        input_grad=not lazy,
        tolerance=FLOAT64,
    )
    assert len(ordinary.grads) == len(list(model.parameters()))
    assert any(n.startswith("encoder.") for n in ordinary.grads)
    if lazy:  # baseline: the whole bag; accumulate: one patch (a probe of the feature
        # shape), the chunks 3 + 3 + 1, and again in the recompute; never the whole bag
        assert reads == [7, 1, 3, 3, 1, 3, 3, 1], reads


def test_sample_encodes_exactly_sample_size_patches_read_alone():
    model = _model("resnet18", "sample", sample_size=3)
    bag = _slide_bag(7)
    reads = []
    take = bag.take
    bag.take = lambda indices: reads.append(len(indices)) or take(indices)
    bag.read = lambda index: pytest.fail("sample read the whole bag")
    out = model(bag, label=0)
    assert out.attention.shape == (3,) and reads == [3]
    assert out.instances.sum() == 3 and out.kept.shape == (3,)
    assert out.attention_map[out.instances].sum().item() == pytest.approx(1.0)
    model.loss(out, 0).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_eval_uses_every_patch_and_lays_attention_on_the_grid():
    model = _model("vit", "sample", sample_size=2).eval()
    bag = _slide_bag(5)
    with torch.no_grad():
        out = model(bag)
    assert out.attention.shape == (5,) and out.attention_map.shape == (1, 5)
    torch.testing.assert_close(out.attention_map[0], out.attention.float())
    assert out.instances.all()


def test_patch_mil_keeps_the_engine_contract():
    model = _model("vit", "accumulate")
    assert isinstance(model, MILModel) and model.output_stride == 32
    groups = model.parameter_groups()
    assert {id(p) for p in groups["trunk"] + groups["head"]} == {id(p) for p in model.parameters()}
    assert all(key.split(".")[0] in ("encoder", "head") for key in model.state_dict())
    torch.manual_seed(0)
    frozen = PatchMIL(PatchConfig(EncoderConfig("resnet18", finetune="frozen"), patch_size=32))
    assert frozen.parameter_groups()["trunk"] == []  # only trainable encoder parameters


def test_a_small_cnn_is_built_for_the_patch_size():
    model = PatchMIL(PatchConfig(EncoderConfig("small_cnn"), patch_size=48, chunk_size=2))
    out = model(torch.randint(0, 256, (3, 3, 48, 48), dtype=torch.uint8))
    assert out.logits.shape == (2,) and out.attention_map is None  # a bare tensor: no grid


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        (PatchConfig(EncoderConfig("resnet99")), EncoderError, "unknown encoder 'resnet99'"),
        (PatchConfig(patch_size=0), ValueError, "patch_size must be a positive number"),
        (PatchConfig(strategy="all"), ValueError, "unknown strategy 'all'"),
        (PatchConfig(min_tissue=2.0), ValueError, "min_tissue must be a fraction"),
    ],
    ids=["encoder", "patch_size", "strategy", "min_tissue"],
)
def test_bad_settings_are_one_clear_error(config, error, message):
    with pytest.raises(error, match=message):
        PatchMIL(config)


def test_a_bag_of_the_wrong_patch_size_is_refused():
    model = PatchMIL(PatchConfig(EncoderConfig("small_cnn"), patch_size=32))
    with pytest.raises(
        ValueError, match=r"a bag of \(N, 3, 32, 32\) patches, got \(2, 3, 16, 16\)"
    ):
        model(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
