"""Patch encoders: every kind builds, chunked == whole-bag gradients, weights files, errors."""

from __future__ import annotations

import pytest
import torch

from gigastream.mil.chunked import ChunkedEncoder
from gigastream.models.encoders import (
    EncoderConfig,
    EncoderError,
    build_encoder,
)
from gigastream.models.trunks import list_trunks

VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}


def _vit(**options) -> EncoderConfig:
    return EncoderConfig("timm:vit_tiny_patch16_224", options={**VIT, **options})


@pytest.mark.parametrize("name", [*list_trunks(), "small_cnn", "timm"])
def test_every_encoder_maps_patches_to_vectors(name):
    config = _vit() if name == "timm" else EncoderConfig(name)
    encoder = build_encoder(config)
    patches = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    out = encoder(patches)
    assert out.shape == (3, encoder.out_dim)
    assert torch.isfinite(out).all()
    assert not any(type(m).__name__ == "BatchNorm2d" for m in encoder.modules())


def _grads(encoder, bag, head_weight, run):
    encoder.zero_grad(set_to_none=True)
    bag = bag.clone().requires_grad_(True)
    features = run(bag)
    loss = (features @ head_weight).tanh().sum()
    loss.backward()
    named = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.requires_grad}
    return features.detach(), bag.grad.clone(), named


def _compare(encoder, bag, chunk_size, reference):
    torch.manual_seed(0)
    weight = torch.randn(encoder.out_dim, dtype=torch.float64)
    torch.manual_seed(1)
    want = _grads(encoder, bag, weight, reference)
    torch.manual_seed(1)
    got = _grads(encoder, bag, weight, ChunkedEncoder(encoder, chunk_size))
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-10)
    assert got[2].keys() == want[2].keys() and got[2]
    for name in want[2]:
        torch.testing.assert_close(got[2][name], want[2][name], rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("name", ["resnet18", "timm"])
def test_accumulate_equals_whole_bag_float64(name):
    encoder = build_encoder(_vit() if name == "timm" else EncoderConfig(name)).double().train()
    bag = torch.rand(7, 3, 32, 32, dtype=torch.float64)
    _compare(encoder, bag, 3, encoder)


def test_dropout_and_stochastic_depth_are_replayed_float64():
    """With dropout and drop-path the reference is the ordinary forward chunk by chunk
    (the same random stream): the recompute must draw the forward's masks again."""
    encoder = build_encoder(_vit(drop_rate=0.3, drop_path_rate=0.3, proj_drop_rate=0.2))
    encoder = encoder.double().train()
    bag = torch.rand(7, 3, 32, 32, dtype=torch.float64)

    def by_chunks(x):
        return torch.cat([encoder(x[i : i + 3]) for i in range(0, len(x), 3)])

    _compare(encoder, bag, 3, by_chunks)
    # and the masks really are random: two draws differ
    assert not torch.equal(encoder(bag[:3]), encoder(bag[:3]))


def test_weights_file_round_trip(tmp_path):
    from safetensors.torch import save_file

    source = build_encoder(_vit())
    state = source.backbone.state_dict()
    torch.save({"state_dict": state}, tmp_path / "vit.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "vit.safetensors"))
    x = torch.rand(2, 3, 32, 32)
    for file in ("vit.pth", "vit.safetensors"):
        config = _vit()
        config.weights = str(tmp_path / file)
        loaded = build_encoder(config).eval()
        torch.testing.assert_close(loaded(x), source.eval()(x))


def test_weights_of_another_architecture_name_the_keys(tmp_path):
    torch.save(build_encoder(EncoderConfig("vgg_small")).backbone.state_dict(), tmp_path / "w.pt")
    config = _vit()
    config.weights = str(tmp_path / "w.pt")
    with pytest.raises(EncoderError, match=r"missing \d+ keys .*unexpected \d+ keys"):
        build_encoder(config)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (EncoderConfig("timm:vit_smal_patch16_224"), "unknown timm model .*did you mean"),
        (EncoderConfig("timm:hf-hub:MahmoodLab/UNI"), "--weights PATH"),
        (EncoderConfig("hf-hub:prov-gigapath/prov-gigapath"), "--weights PATH"),
        (EncoderConfig("resnet18", weights="/nowhere/w.pt"), "file not found"),
        (EncoderConfig("nope"), "unknown encoder 'nope'"),
        (EncoderConfig("resnet18", finetune="last:x"), "last:N"),
        (EncoderConfig("resnet18", finetune="lora"), "LoRA is for ViTs"),
        (EncoderConfig("resnet18", finetune="last:99"), "has \\d+ blocks"),
    ],
)
def test_bad_encoders_fail_with_the_fix(config, message):
    with pytest.raises(EncoderError, match=message):
        build_encoder(config)


def test_finetune_modes_choose_the_trainable_parameters():
    def trainable(config):
        encoder = build_encoder(config)
        return {n for n, p in encoder.named_parameters() if p.requires_grad}, encoder

    full, encoder = trainable(_vit())
    assert full == {n for n, _ in encoder.named_parameters()}
    frozen, _ = trainable(EncoderConfig(**{**_vit().__dict__, "finetune": "frozen"}))
    assert frozen == set()
    last, _ = trainable(EncoderConfig(**{**_vit().__dict__, "finetune": "last:1"}))
    assert last and all(
        n.startswith(("backbone.blocks.1.", "backbone.norm", "backbone.fc_norm", "backbone.head"))
        for n in last
    )
    assert "backbone.blocks.1.attn.qkv.weight" in last
    lora, encoder = trainable(EncoderConfig(**{**_vit().__dict__, "finetune": "lora"}))
    assert lora and all(".lora_" in n for n in lora)
    from peft.tuners.lora import LoraLayer

    adapted = [m for m in encoder.modules() if isinstance(m, LoraLayer)]
    base_blocks = build_encoder(_vit()).backbone.blocks  # the same ViT without adapters
    linear = sum(isinstance(m, torch.nn.Linear) for m in base_blocks.modules())
    assert linear and len(adapted) == linear  # every linear layer of the blocks is adapted
    assert {type(m.base_layer) for m in adapted} == {torch.nn.Linear}


def test_lora_without_peft_names_the_package(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)  # import peft raises ModuleNotFoundError
    with pytest.raises(EncoderError, match="needs the peft package: pip install peft"):
        build_encoder(EncoderConfig(**{**_vit().__dict__, "finetune": "lora"}))


def test_lora_starts_as_the_base_model_and_stays_exact_when_chunked():
    import copy

    from gigastream.models.encoders import apply_finetune

    base = build_encoder(_vit()).double().eval()
    lora = copy.deepcopy(base)
    assert apply_finetune(lora, "lora", rank=4) > 0
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(lora(x), base(x), rtol=0, atol=0)  # B = 0: the base model
    from peft.tuners.lora import LoraLayer

    for module in lora.modules():
        if isinstance(module, LoraLayer):
            torch.nn.init.normal_(module.lora_B["default"].weight)  # a trained adapter
    assert not torch.allclose(lora(x), base(x))
    _compare(lora.train(), x, 2, lora)


def test_stochastic_depth_alone_is_replayed_float64():
    """timm's DropPath is not a torch Dropout: the recompute must replay it all the same."""
    encoder = build_encoder(_vit(drop_path_rate=0.5)).double().train()
    assert not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in encoder.modules())
    bag = torch.rand(6, 3, 32, 32, dtype=torch.float64)

    def by_chunks(x):
        return torch.cat([encoder(x[i : i + 2]) for i in range(0, len(x), 2)])

    _compare(encoder, bag, 2, by_chunks)
