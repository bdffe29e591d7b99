"""The shipped run configurations load, validate and build their models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gigastream.mil.heads import create_mil_head
from gigastream.train.config_files import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    config = load_config(path, {"train": {"device": "cpu"}})
    assert config.model.arch in ("resnet18", "resnet34", "resnet50", "vgg_small")
    head = create_mil_head(config.model.head, 512, 2, **config.model.head_options)
    assert head(torch.randn(5, 512)).logits.shape == (2,)


def test_camelyon16_config_is_the_streaming_clam_preset():
    from gigastream.models.streaming_mil import StreamingMILConfig, streaming_clam

    config = load_config(CONFIGS[0].parent / "camelyon16.yaml", {"train": {"device": "cpu"}})
    assert config.model == streaming_clam(tile_size=None, memory_budget="40GiB")
    assert load_config({}).model == StreamingMILConfig()  # the run's defaults: the class's


def test_clam_paper_preset_sizes():
    head = create_mil_head("clam_sb", 1024, 2, preset="paper")
    assert head.fc[0].out_features == 512  # 1024 -> 512 projection
    assert head.attention(torch.randn(3, 512)).shape[-1] == 3
    with pytest.raises(ValueError, match="unknown CLAM preset"):
        create_mil_head("clam_mb", 1024, 2, preset="huge")
