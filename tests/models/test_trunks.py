"""Contract tests of the trunk registry: shapes, gradients, exact streaming, BN calibration."""

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

SMALL = [name for name in list_trunks() if name.startswith("vgg")]


def test_registry_lists_resnets_and_small_trunks():
    assert {"resnet18", "resnet34", "resnet50", "vgg_small"} <= set(list_trunks())


@pytest.mark.parametrize("name", list_trunks())
def test_shape_channels_stride(name):
    trunk, channels, stride = build_trunk(name)
    trunk.eval()
    with torch.no_grad():
        out = trunk(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, channels, 64 // stride, 96 // stride)


@pytest.mark.parametrize("name", SMALL)
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    trunk, _, _ = build_trunk(name)
    calibrate_batchnorm(trunk.eval(), [torch.randn(2, 3, 64, 64)])
    trunk(torch.randn(1, 3, 64, 64)).square().sum().backward()
    for pname, p in trunk.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", SMALL)
def test_streams_exactly_in_float64(name):
    torch.manual_seed(0)
    trunk, _, stride = build_trunk(name)
    calibrate_batchnorm(trunk.eval(), [torch.randn(2, 3, 64, 64)])
    trunk = trunk.double()
    x = torch.randn(1, 3, 208, 176, dtype=torch.float64)
    trunk.zero_grad()
    ref_in = x.clone().requires_grad_()
    ref = trunk(ref_in)
    weight = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (ref * weight).sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in trunk.named_parameters()}
    trunk.zero_grad(set_to_none=True)
    streamed = StreamingModule(trunk, tile_size=96, freeze_batchnorm=True)
    x_in = x.clone().requires_grad_()
    out = streamed(x_in)
    (out * weight).sum().backward()
    assert streamed.last_plan is None or len(streamed.last_plan.segments) >= 1
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x_in.grad, ref_in.grad, rtol=1e-10, atol=1e-10)
    for n, p in trunk.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-10, atol=1e-10, msg=n)


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


def test_imagenet_download_failure_says_to_pass_weights(monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.models, "resnet18", offline)
    with pytest.raises(ValueError, match="download.*failed.*--weights PATH"):
        build_trunk("resnet18", "imagenet")
