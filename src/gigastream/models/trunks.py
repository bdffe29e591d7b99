"""The trunk registry: ``build_trunk(arch, weights)`` -> (trunk, out_channels, output_stride).

A *trunk* is the local part of a CNN (everything before global pooling) as an
``nn.Sequential`` that :class:`~gigastream.streaming.module.StreamingModule` can stream
exactly: only convolutions, pooling, eval-mode BatchNorm and pointwise activations (no
GroupNorm/LayerNorm, which couple all positions).

Registered trunks:

- ``resnet18``, ``resnet34``, ``resnet50``: torchvision ResNets without global pool and
  classifier (output stride 32); ``resnet34`` is StreamingCLAM's (Dooper et al. 2023).
- ``vgg_small``: a small VGG-style trunk, conv3x3-BatchNorm-ReLU blocks with 2x2 max-pools,
  channels 16-32-64-128 (output stride 16, receptive field 70 px, ~0.25 M parameters),
  about 10x cheaper than ResNet-18 on CPU; with random initialisation its BatchNorm should
  be calibrated on data (:func:`gigastream.streaming.batchnorm.calibrate_batchnorm`;
  ``train.bn_calibration`` of a run) before it is frozen.
- ``vgg_small_s32``: the same with a fifth 128-channel block (output stride 32).

Example:
    >>> trunk, channels, stride = build_trunk("vgg_small")
    >>> trunk(torch.randn(1, 3, 64, 64)).shape, channels, stride
    (torch.Size([1, 128, 4, 4]), 128, 16)
"""

from __future__ import annotations

import functools
import logging
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from gigastream.registry import Registry

logger = logging.getLogger(__name__)

#: ``factory(weights) -> (trunk, out_channels, output_stride)``.
TrunkFactory = Callable[[str | None], tuple[nn.Sequential, int, int]]

_RESNET_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
#: Output stride of a torchvision ResNet trunk (conv1 2x, max-pool 2x, layer2-4 2x each).
RESNET_STRIDE = 32
#: Where a streamed trunk's weights are in a ``gigastream train`` checkpoint's state_dict.
CHECKPOINT_TRUNK_PREFIX = "model.trunk.trunk."


def _load_state_dict(path: str | Path) -> dict[str, Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: trunk weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, IndexError) as exc:
        raise ValueError(
            f"{path}: not a PyTorch state_dict or checkpoint ({type(exc).__name__}); give the "
            "file saved with torch.save(model.state_dict(), PATH)"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state_dict (got {type(state).__name__})")
    return state


def _resnet_trunk(arch: str, weights: str | None = None) -> tuple[nn.Sequential, int, int]:
    """A torchvision ResNet without global pool and classifier.

    Args:
        arch: ``resnet18``, ``resnet34`` or ``resnet50``.
        weights: ``None`` (random initialisation), ``"imagenet"`` (torchvision's
            IMAGENET1K_V1 weights, downloaded by torchvision if not cached) or a local
            ``state_dict`` path of the full torchvision ResNet (``fc.*`` is ignored).
    """
    import torchvision

    if weights == "imagenet":
        enum = getattr(torchvision.models, f"ResNet{arch[len('resnet') :]}_Weights").IMAGENET1K_V1
        try:
            resnet = getattr(torchvision.models, arch)(weights=enum)
        except Exception as exc:  # offline: URLError, OSError, ...
            raise ValueError(
                f"downloading the ImageNet weights of {arch} failed ({type(exc).__name__}: "
                f"{exc}); pass a local torchvision state_dict with --weights PATH"
            ) from None
        logger.info("loaded torchvision ImageNet weights into %s", arch)
    else:
        resnet = getattr(torchvision.models, arch)(weights=None)
        if weights is not None:
            state = {k: v for k, v in _load_state_dict(weights).items() if not k.startswith("fc.")}
            try:
                missing, unexpected = resnet.load_state_dict(state, strict=False)
            except RuntimeError as exc:  # shape mismatches
                raise ValueError(f"{weights}: not a torchvision {arch} state_dict: {exc}") from None
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing or unexpected:
                raise ValueError(
                    f"{weights}: not a torchvision {arch} state_dict "
                    f"(missing {missing[:3]}..., unexpected {unexpected[:3]}...)"
                )
            logger.info("loaded %s trunk weights from %s", arch, weights)
    trunk = nn.Sequential(*list(resnet.children())[:-2])
    return trunk, _RESNET_CHANNELS[arch], RESNET_STRIDE


def vgg_trunk(
    blocks: Sequence[Sequence[int]], in_channels: int = 3, batchnorm: bool = True
) -> nn.Sequential:
    """A VGG-style trunk: per block, conv3x3(-BatchNorm)-ReLU layers, then a 2x2 max-pool.

    Args:
        blocks: output channels of each block's convolutions, e.g. ``[[16], [32], [64, 64]]``.
        in_channels: input channels.
        batchnorm: put a BatchNorm2d after every convolution (to be calibrated and frozen).

    Returns:
        ``(B, in_channels, H, W) -> (B, blocks[-1][-1], H / 2**len(blocks), W / 2**len(blocks))``.
        Convolutions are Kaiming-initialised (fan-out, ReLU gain), biases zero.
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for block in blocks:
        for out in block:
            conv = nn.Conv2d(channels, out, 3, padding=1, bias=not batchnorm)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
            layers.append(conv)
            if batchnorm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            channels = out
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


def _vgg_factory(
    blocks: Sequence[Sequence[int]], weights: str | None = None
) -> tuple[nn.Sequential, int, int]:
    trunk = vgg_trunk(blocks)
    if weights == "imagenet":
        raise ValueError("vgg_small trunks have no ImageNet weights; pass a local state_dict")
    if weights is not None:
        try:
            trunk.load_state_dict(_load_state_dict(weights))
        except RuntimeError as exc:
            raise ValueError(f"{weights}: not a state_dict of this trunk: {exc}") from None
    return trunk, blocks[-1][-1], 2 ** len(blocks)


_VGG_SMALL = ([16], [32], [64, 64], [128, 128])

_TRUNKS: Registry[TrunkFactory] = Registry(
    "trunk",
    {
        **{arch: functools.partial(_resnet_trunk, arch) for arch in _RESNET_CHANNELS},
        "vgg_small": functools.partial(_vgg_factory, _VGG_SMALL),
        "vgg_small_s32": functools.partial(_vgg_factory, (*_VGG_SMALL, [128])),
    },
)


def register_trunk(name: str, factory: TrunkFactory) -> None:
    """Add a trunk to the registry.

    Args:
        name: the registry name; must be new.
        factory: called as ``factory(weights)``; returns ``(trunk, out_channels, output_stride)``.

    Raises:
        ValueError: if the name is taken.
    """
    _TRUNKS.register(name, factory)


def list_trunks() -> list[str]:
    """Names of the registered trunks, sorted.

    Example:
        >>> list_trunks()
        ['resnet18', 'resnet34', 'resnet50', 'vgg_small', 'vgg_small_s32']
    """
    return _TRUNKS.names()


def build_trunk(arch: str, weights: str | None = None) -> tuple[nn.Sequential, int, int]:
    """Build a registered trunk.

    Args:
        arch: one of :func:`list_trunks`.
        weights: ``None`` (random initialisation), a local ``state_dict`` path, a
            ``gigastream train`` checkpoint (``.ckpt``: its trained trunk, to start a new
            run from it), or for torchvision ResNets ``"imagenet"`` (torchvision's
            weights API).

    Returns:
        ``(trunk, out_channels, output_stride)``: ``trunk`` maps ``(B, 3, H, W)`` to
        ``(B, out_channels, H / output_stride, W / output_stride)``.

    Raises:
        ValueError: unknown ``arch``; weights that do not fit; an ImageNet download that
            failed (the message says to pass a local state_dict with ``--weights PATH``).
        FileNotFoundError: a weights path that does not exist.

    Example:
        >>> trunk, channels, stride = build_trunk("resnet18")
        >>> channels, stride
        (512, 32)
    """
    if weights is not None and weights != "imagenet":
        state = checkpoint_trunk_state(weights, arch)
        if state is not None:
            trunk, channels, stride = _TRUNKS.get(arch)(None)
            try:
                trunk.load_state_dict(state)
            except RuntimeError as exc:  # missing/unexpected keys, shapes
                raise ValueError(
                    f"{weights}: its trunk does not fit {arch}: {exc}".splitlines()[0]
                ) from None
            logger.info("loaded the trunk of the gigastream checkpoint %s into %s", weights, arch)
            return trunk, channels, stride
    return _TRUNKS.get(arch)(None if weights is None else str(weights))


def checkpoint_trunk_state(path: str | Path, arch: str) -> dict[str, Tensor] | None:
    """The trunk weights of a ``gigastream train`` checkpoint (``best.ckpt``, ``last.ckpt``),
    to start a new run from a trained one's trunk; ``None`` for any other file.

    Raises:
        ValueError: the checkpoint's trunk is another architecture than ``arch``, or it is
            a patch or feature model's checkpoint (no streamed trunk).
    """
    path = Path(path)
    if path.suffix.lower() != ".ckpt" or not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, IndexError):
        return None  # _load_state_dict names the problem
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("gigastream"), dict)):
        return None
    model = checkpoint["gigastream"].get("config", {}).get("model", {})
    trained = model.get("arch")
    kind = model.get("kind", "streaming")
    if kind != "streaming" or trained is None:
        raise ValueError(
            f"{path}: a {kind} model's checkpoint has no streamed trunk; give a streaming "
            "run's checkpoint (or a state_dict file) with --weights"
        )
    if trained != arch:
        raise ValueError(
            f"{path}: its trunk is {trained}, not {arch}; pass --arch {trained} to start from it"
        )
    state = {
        key[len(CHECKPOINT_TRUNK_PREFIX) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(CHECKPOINT_TRUNK_PREFIX)
    }
    if not state:
        raise ValueError(f"{path}: a gigastream checkpoint without trunk weights")
    return state
