"""Contract tests over every registered trunk: shapes, gradients, exact streaming; BN calibration.

Every trunk of :func:`list_trunks` must map ``(B, 3, H, W)`` to ``(B, out_channels, H / stride,
W / stride)``, give every parameter a finite non-zero gradient, and stream exactly (float64:
output, input gradient and every parameter gradient, :mod:`tests.exactness`) with its first
streamed segment cut into at least 2 x 2 tiles.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gigastream.models.trunks import (
    build_trunk,
    list_trunks,
    register_trunk,
    vgg_trunk,
)
from gigastream.streaming import StreamingModule
from gigastream.streaming.batchnorm import calibrate_batchnorm
from tests.exactness import assert_same_runs, run_backward

TRUNKS = list_trunks()

# Streaming cases (input size, StreamingModule options), chosen so that the first streamed
# segment has at least 2 x 2 tiles at a small cost (float64, one core: a few seconds each).
# ResNets: fixed cuts before layer2-4, so conv1..layer1 (residual blocks included) streams
# in 2 x 2 (resnet34: 4 x 4) tiles; the planner's own cuts at this size leave tiles of a
# few pixels (24 x 24 tiles, ten times slower). A trunk without a case gets the default.
_RESNET_CASE = ((96, 96), dict(tile_size=80, segments=["5", "6", "7"]))
_DEFAULT_CASE = ((128, 128), dict(tile_size=64))
STREAM_CASES = {
    "resnet18": _RESNET_CASE,
    "resnet34": _RESNET_CASE,
    "resnet50": _RESNET_CASE,
    "vgg_small": ((208, 176), dict(tile_size=96)),
    "vgg_small_s32": ((208, 176), dict(tile_size=96)),
}


def _calibrated(name: str, dtype: torch.dtype = torch.float32) -> tuple[nn.Sequential, int, int]:
    """A registered trunk with its BatchNorm calibrated on random data, in eval mode."""
    torch.manual_seed(0)
    trunk, channels, stride = build_trunk(name)
    calibrate_batchnorm(trunk.eval(), [torch.randn(2, 3, 64, 64)])
    return trunk.to(dtype), channels, stride


def test_registry_lists_resnets_and_small_trunks():
    assert {"resnet18", "resnet34", "resnet50", "vgg_small", "vgg_small_s32"} <= set(TRUNKS)


@pytest.mark.parametrize("name", TRUNKS)
def test_shape_channels_stride_and_every_parameter_gets_a_gradient(name):
    trunk, channels, stride = _calibrated(name)
    out = trunk(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, channels, 64 // stride, 96 // stride)
    out.square().sum().backward()
    for pname, p in trunk.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}: {pname}"


@pytest.mark.parametrize("name", TRUNKS)
def test_streams_exactly_in_float64(name):
    trunk, _, _ = _calibrated(name, torch.float64)
    size, options = STREAM_CASES.get(name, _DEFAULT_CASE)
    x = torch.randn(1, 3, *size, dtype=torch.float64)
    ordinary = run_backward(trunk, x, trunk)
    # built after the ordinary run: freeze_batchnorm replaces the trunk's BatchNorm modules
    streamed = StreamingModule(trunk, freeze_batchnorm=True, **options)
    assert_same_runs(run_backward(streamed, x, trunk), ordinary, trunk)
    first = next(s for s in streamed.last_plan.segments if s.mode == "stream")
    assert first.tiles[0] >= 2 and first.tiles[1] >= 2, str(streamed.last_plan)


def test_calibrate_batchnorm_normalises():
    torch.manual_seed(0)
    trunk = vgg_trunk([[8]])  # conv, BN, ReLU, pool
    x = torch.randn(4, 3, 32, 32) * 5 + 3
    trunk.eval()
    calibrate_batchnorm(trunk, [x[:2], x[2:]])
    bn = trunk[1]
    assert not bn.training  # the mode is restored
    with torch.no_grad():
        z = bn(trunk[0](x))
    assert z.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (z.var(dim=(0, 2, 3)) - 1).abs().max() < 1e-2


def test_calibrate_batchnorm_needs_a_batch():
    trunk, _, _ = build_trunk("vgg_small")
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate_batchnorm(trunk, [])


def test_unknown_trunk_and_taken_name():
    with pytest.raises(ValueError, match="unknown trunk 'nope'.*vgg_small"):
        build_trunk("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_trunk("resnet18", lambda weights: (nn.Sequential(), 1, 1))


def test_register_trunk():
    register_trunk("_test_identity", lambda weights: (nn.Sequential(nn.Identity()), 3, 1))
    trunk, channels, stride = build_trunk("_test_identity")
    assert (channels, stride) == (3, 1)


def test_local_weights_round_trip(tmp_path):
    trunk, _, _ = build_trunk("vgg_small")
    path = tmp_path / "w.pt"
    torch.save(trunk.state_dict(), path)
    loaded, _, _ = build_trunk("vgg_small", str(path))
    for a, b in zip(trunk.state_dict().values(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_missing_and_wrong_weights(tmp_path):
    with pytest.raises(FileNotFoundError):
        build_trunk("resnet18", str(tmp_path / "missing.pt"))
    path = tmp_path / "small.pt"
    torch.save(build_trunk("vgg_small")[0].state_dict(), path)
    with pytest.raises(ValueError, match="not a torchvision resnet18 state_dict"):
        build_trunk("resnet18", str(path))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint\n" * 10)
    with pytest.raises(ValueError, match=r"garbage.pt: not a PyTorch state_dict or checkpoint"):
        build_trunk("resnet18", str(garbage))


def test_imagenet_download_failure_says_to_pass_weights(monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.models, "resnet18", offline)
    with pytest.raises(ValueError, match="download.*failed.*--weights PATH"):
        build_trunk("resnet18", "imagenet")
