"""``gigastream train --model-kind patches``: the patch flags set the ``patches:`` section,
``--dry-run`` gives the bags and chunks, flags of the other model kind and bad patch
settings are one line before anything is written."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tests.cli.clitools import ERROR
from tests.cli.clitools import cli as _cli
from tests.cli.clitools import train_args as _train
from tests.train.conftest import write_tiny_yaml

PATCH_FLAGS = ["--model-kind", "patches", "--encoder", "small_cnn", "--patch-size", "32"]


def test_dry_run_gives_the_patch_bags_and_writes_nothing(tmp_path, manifest, capsys):
    out = tmp_path / "run"
    config = write_tiny_yaml(tmp_path / "t.yaml")
    flags = [*PATCH_FLAGS, "--bag-strategy", "accumulate", "--chunk-size", "8", "--head", "abmil"]
    code, printed, err = _cli(capsys, *_train(manifest, out, config), *flags, "--dry-run")
    assert code == 0, err
    assert "patch model: encoder small_cnn (64 features" in printed
    assert "32 px patches at 1.0 um/px; strategy accumulate" in printed
    assert "largest slide: synth_" in printed and "tissue patches of a 8x8 grid" in printed
    assert "chunks of 8; activations ~" in printed and "read by the worker" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.yaml"]


def test_a_patch_run_from_flags(tmp_path, manifest, capsys):
    """The flags land in the run's config; --weights loads the encoder's weights file."""
    from gigastream.models.encoders import EncoderConfig, build_encoder

    weights = tmp_path / "small_cnn.pt"
    encoder = build_encoder(EncoderConfig("small_cnn", options={"image_size": 32}))
    torch.save(encoder.backbone.state_dict(), weights)
    out = tmp_path / "run"
    config = write_tiny_yaml(tmp_path / "t.yaml", train={"epochs": 1, "heatmaps": 0})
    flags = [*PATCH_FLAGS, "--bag-strategy", "sample", "--sample-size", "6", "--head", "abmil"]
    flags += ["--weights", weights, "--finetune", "last:1", "--min-tissue", "0.25"]
    code, printed, err = _cli(capsys, *_train(manifest, out, config), *flags)
    assert code == 0, err
    assert "validation AUC" in printed
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["model"]["kind"] == "patches" and resolved["model"]["weights"] is None
    assert resolved["patches"]["encoder"] == {
        **resolved["patches"]["encoder"],
        "name": "small_cnn",
        "weights": str(weights),
        "finetune": "last:1",
    }
    settings = {k: resolved["patches"][k] for k in ("strategy", "sample_size", "min_tissue")}
    assert settings == {"strategy": "sample", "sample_size": 6, "min_tissue": 0.25}
    assert json.loads((out / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--encoder", "small_cnn"],
            "--encoder is a setting of a patch-bag model: add --model-kind",
        ),
        ([*PATCH_FLAGS, "--tile-size", "64"], "--tile-size is a setting of a streamed model"),
        (["--strategy", "accumulate"], "not a Lightning strategy (auto, ddp, ...): set patches."),
        ([*PATCH_FLAGS, "--patch-size", "1024"], "a 1024 px patch is larger than the slide"),
        ([*PATCH_FLAGS, "--encoder", "timm:vit_nope"], "unknown timm model 'vit_nope'"),
        ([*PATCH_FLAGS, "--weights", "missing.pt"], "--weights missing.pt: file not found"),
        ([*PATCH_FLAGS, "--finetune", "half"], "encoder.finetune must be full, frozen, lora"),
        ([*PATCH_FLAGS, "--memory-budget", "lots"], "--memory-budget 'lots' is not a memory size"),
    ],
    ids=["kind", "streaming-flag", "strategy", "patch>slide", "timm", "weights", "ft", "budget"],
)
def test_bad_patch_flags_are_one_line_before_writing(tmp_path, manifest, capsys, flags, message):
    out = tmp_path / "run"
    config = write_tiny_yaml(tmp_path / "t.yaml")
    code, _, err = _cli(capsys, *_train(manifest, out, config), *flags)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and ERROR.match(lines[0]), err
    assert message in lines[0], lines[0]
    assert not out.exists()


def test_an_encoder_of_other_than_rgb_patches_is_refused_for_slides(tmp_path, manifest, capsys):
    """A 1-channel encoder (the MNIST-bags configuration) cannot take slide patches."""
    out = tmp_path / "run"
    encoder = {"name": "small_cnn", "normalize": "none", "options": {"in_channels": 1}}
    config = write_tiny_yaml(tmp_path / "t.yaml", patches={"encoder": encoder})
    code, _, err = _cli(capsys, *_train(manifest, out, config, *PATCH_FLAGS))
    assert code == 1 and "takes 1-channel patches; slide patches are RGB" in err, err
    assert not out.exists()
