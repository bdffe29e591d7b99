"""Patch encoders for bags of patches: registered trunks, timm models, local weights.

An *encoder* maps a chunk of patches ``(n, 3, H, W)`` to instance features ``(n, out_dim)``;
a MIL head pools them (Andersson et al. 2022: end-to-end MIL with gradient accumulation over
instance chunks, :class:`~gigastream.mil.chunked.ChunkedEncoder`). :func:`build_encoder`
makes one from an :class:`EncoderConfig`:

- ``name``: a registered trunk (:func:`~gigastream.models.trunks.list_trunks`, followed by
  global average pooling), ``small_cnn`` (a LeNet-style CNN for small patches), or
  ``timm:<model>`` for any timm model (``timm:vit_small_patch16_224``; timm's own
  keyword arguments via ``options``, e.g. ``img_size``);
- ``weights``: ``None`` (random initialisation), ``imagenet`` (torchvision trunks), or a
  local ``state_dict`` file (``.pt``/``.pth``/``.bin`` or ``.safetensors``): the gated
  foundation-model weights (UNI, Virchow, H-optimus, GigaPath's tile encoder are timm
  ViTs) are used this way. Nothing is downloaded: a hub name fails at once.
- ``finetune``: ``full`` (every parameter trains), ``frozen`` (none), ``last:N`` (only the
  last ``N`` blocks and what follows them) or ``lora`` (low-rank adapters from the peft
  package on the attention and MLP linear layers of a ViT; the base weights stay frozen).

Chunked gradient accumulation is exact for an encoder whose forward does not couple the
patches of a chunk: ViTs, LayerNorm and eval-mode BatchNorm are fine; train-mode BatchNorm
is not (its statistics are per chunk), so the BatchNorm layers of an encoder are frozen
(:class:`~gigastream.streaming.batchnorm.FrozenBatchNorm`: running statistics, trainable
affine) by :func:`build_encoder`.

Example:
    >>> import torch
    >>> encoder = build_encoder(EncoderConfig("timm:vit_tiny_patch16_224",
    ...                                       options={"img_size": 32, "patch_size": 8}))
    >>> encoder(torch.rand(4, 3, 32, 32)).shape, encoder.out_dim
    (torch.Size([4, 192]), 192)
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gigastream.streaming.batchnorm import freeze_batchnorm

logger = logging.getLogger(__name__)

#: ImageNet statistics (torchvision's and most timm models'), for pixels in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_HUB_PREFIXES = ("hf-hub:", "hf_hub:", "hf:", "http://", "https://")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


class EncoderError(ValueError):
    """An encoder cannot be built: unknown name, weights that do not fit, bad setting."""


@dataclass
class EncoderConfig:
    """A patch encoder.

    Attributes:
        name: a registered trunk (``resnet18``, ``vgg_small``, ...), ``small_cnn``, or
            ``timm:<model name>``.
        weights: ``None`` (random init), ``imagenet`` (torchvision trunks) or a local
            state_dict file (``.pt``, ``.pth``, ``.bin``, ``.safetensors``).
        finetune: ``full``, ``frozen``, ``last:N`` or ``lora``.
        lora_rank: rank of the LoRA adapters (``finetune: lora``).
        lora_alpha: LoRA scale numerator (the update is ``alpha / rank * B @ A``).
        normalize: ``imagenet`` (subtract ImageNet mean, divide by std after scaling to
            [0, 1]) or ``none`` (pixels in [0, 1]); ``mean`` and ``std`` replace either.
        mean: per-channel means of pixels in [0, 1] (one value per input channel, or one
            for all), e.g. ``[0.1307]`` for MNIST digits; ``None``: ``normalize``'s.
        std: per-channel standard deviations (with ``mean``), e.g. ``[0.3081]``.
        options: keyword arguments of the model constructor (timm: ``img_size``,
            ``patch_size``, ``in_chans``, ``drop_path_rate``, ...; ``small_cnn``:
            ``out_dim``, ``width``, ``image_size``, ``dropout``, ``in_channels``).
    """

    name: str = "resnet18"
    weights: str | None = None
    finetune: str = "full"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    normalize: str = "imagenet"
    mean: list[float] | None = None
    std: list[float] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        """Channels of the patches the encoder takes (``options``' ``in_channels`` or timm's
        ``in_chans``; 3 by default)."""
        return int(self.options.get("in_channels", self.options.get("in_chans", 3)))

    def statistics(self) -> tuple[list[float], list[float]]:
        """``(mean, std)`` subtracted from and divided into pixels scaled to [0, 1]."""
        if self.mean is not None and self.std is not None:
            return [float(v) for v in self.mean], [float(v) for v in self.std]
        if self.normalize == "imagenet":
            return list(IMAGENET_MEAN), list(IMAGENET_STD)
        return [0.0], [1.0]

    def validate(self) -> None:
        """Raise EncoderError on impossible settings (before any model is built)."""
        if self.name.startswith(_HUB_PREFIXES) or (
            self.name.startswith("timm:") and self.name[5:].startswith(_HUB_PREFIXES)
        ):
            raise EncoderError(
                f"encoder {self.name!r}: models cannot be downloaded here; build the "
                "architecture by its timm name (e.g. timm:vit_large_patch16_224) and pass "
                "the weights file you downloaded with --weights PATH"
            )
        if self.name.startswith("timm:") and not self.name[5:]:
            raise EncoderError(
                "encoder 'timm:' needs a model name, e.g. timm:vit_small_patch16_224"
            )
        finetune_modes(self.finetune)
        if self.lora_rank < 1:
            raise EncoderError(f"encoder.lora_rank must be >= 1, got {self.lora_rank}")
        if self.normalize not in ("imagenet", "none"):
            raise EncoderError(
                f"encoder.normalize must be imagenet or none, got {self.normalize!r}"
            )
        if (self.mean is None) != (self.std is None):
            raise EncoderError("encoder.mean and encoder.std go together: give both or neither")
        if self.mean is not None and self.std is not None:
            channels = self.in_channels
            for name, values in (("mean", self.mean), ("std", self.std)):
                if len(values) not in (1, channels):
                    raise EncoderError(
                        f"encoder.{name} has {len(values)} values; give 1 or one per input "
                        f"channel ({channels})"
                    )
            if not all(math.isfinite(v) and v > 0 for v in self.std):
                raise EncoderError(f"encoder.std must be positive numbers, got {self.std}")
        if self.normalize == "imagenet" and self.mean is None and self.in_channels != 3:
            raise EncoderError(
                f"encoder.normalize imagenet is for 3-channel patches, the encoder takes "
                f"{self.in_channels}; set normalize: none or give encoder.mean and encoder.std"
            )
        weights = self.weights
        if weights not in (None, "imagenet"):
            if str(weights).startswith(_HUB_PREFIXES):
                raise EncoderError(
                    f"--weights {weights}: weights cannot be downloaded here; download the "
                    "file elsewhere and pass its local path with --weights PATH"
                )
            path = Path(str(weights))
            if not path.is_file():
                raise EncoderError(f"--weights {weights}: file not found")
            if path.suffix.lower() not in _WEIGHT_SUFFIXES:
                raise EncoderError(
                    f"--weights {weights}: unknown weights format {path.suffix!r}; give a "
                    f"state_dict file ({', '.join(_WEIGHT_SUFFIXES)})"
                )


def finetune_modes(finetune: str) -> tuple[str, int]:
    """``(mode, last_blocks)`` of a ``finetune`` setting; EncoderError if malformed."""
    if finetune in ("full", "frozen", "lora"):
        return finetune, 0
    match = re.fullmatch(r"last:(\d+)", finetune)
    if match and int(match.group(1)) >= 1:
        return "last", int(match.group(1))
    raise EncoderError(
        f"encoder.finetune must be full, frozen, lora or last:N (N >= 1), got {finetune!r}"
    )


class PatchEncoder(nn.Module):
    """A backbone with its input normalisation: ``(n, C, H, W)`` -> ``(n, out_dim)``.

    Integer patches (uint8 pixels) are scaled to [0, 1] in the backbone's dtype first, so
    a chunked encoder holds only one chunk in floating point.

    Attributes:
        backbone: the network (its output is ``(n, out_dim)``).
        out_dim: instance feature size.
        config: the :class:`EncoderConfig` it was built from.
    """

    def __init__(
        self, backbone: nn.Module, out_dim: int, config: EncoderConfig | None = None
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.out_dim = int(out_dim)
        self.config = config or EncoderConfig()
        # float64 statistics, cast to the input's dtype in forward (exact in float64 runs);
        # the probe follows the model's dtype (the dtype integer patches are scaled into)
        mean, std = self.config.statistics()
        for name, values in (("mean", mean), ("std", std)):
            tensor = torch.tensor(values, dtype=torch.float64).view(1, -1, 1, 1)
            self.register_buffer(name, tensor, persistent=False)
        self.register_buffer("_dtype_probe", torch.zeros(()), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Encode patches ``(n, C, H, W)`` (uint8, or floats in [0, 1]) into ``(n, out_dim)``."""
        if not x.is_floating_point():
            x = x.to(self._dtype_probe.dtype) / 255.0
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out = self.backbone(x)
        if out.ndim != 2:
            out = out.flatten(1)
        return out


# ----------------------------------------------------------------------------- backbones
def _trunk_backbone(config: EncoderConfig) -> tuple[nn.Module, int]:
    from gigastream.models.trunks import build_trunk

    try:
        trunk, channels, _ = build_trunk(config.name, config.weights)
    except FileNotFoundError as exc:
        raise EncoderError(str(exc)) from None
    except ValueError as exc:
        raise EncoderError(str(exc)) from None
    return nn.Sequential(trunk, nn.AdaptiveAvgPool2d(1), nn.Flatten()), channels


def _small_cnn_backbone(config: EncoderConfig) -> tuple[nn.Module, int]:
    options = dict(config.options)
    out_dim = int(options.pop("out_dim", 64))
    width = int(options.pop("width", 16))
    image_size = int(options.pop("image_size", 32))
    dropout = float(options.pop("dropout", 0.0))
    in_channels = int(options.pop("in_channels", 3))
    if options:
        raise EncoderError(
            f"encoder small_cnn does not take {sorted(options)}; its options are out_dim, "
            "width, image_size, dropout, in_channels"
        )
    side = ((image_size - 4) // 2 - 4) // 2
    if side < 1:
        raise EncoderError(f"small_cnn: patches of {image_size} px are too small (>= 16 px)")
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, width, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    ]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(2 * width * side * side, out_dim), nn.ReLU()]
    return nn.Sequential(*layers), out_dim


def _timm_backbone(config: EncoderConfig) -> tuple[nn.Module, int]:
    try:
        import timm
    except ModuleNotFoundError:
        raise EncoderError("timm encoders need the timm package: pip install timm") from None
    name = config.name[len("timm:") :]
    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else " (see timm.list_models())"
        raise EncoderError(f"unknown timm model {name!r}{hint}")
    if config.weights == "imagenet":
        raise EncoderError(
            f"timm:{name}: --weights imagenet would download weights; pass a local weights "
            "file with --weights PATH"
        )
    options = {"num_classes": 0, **config.options}
    try:
        model = timm.create_model(name, pretrained=False, **options)
    except TypeError as exc:
        raise EncoderError(
            f"timm:{name} does not take these options {sorted(config.options)}: {exc}"
        ) from None
    return model, int(model.num_features)


def load_weights_file(path: str | Path) -> dict[str, Tensor]:
    """A ``state_dict`` from a ``.pt``/``.pth``/``.bin`` (``torch.load``, weights only) or
    ``.safetensors`` file; a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is opened.

    Raises:
        EncoderError: the file is missing, unreadable or holds no state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise EncoderError(f"{path}: weights file not found")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, pickled code, ...
        raise EncoderError(
            f"{path}: not a readable weights file: {type(exc).__name__}: {exc}"
        ) from None
    for key in ("state_dict", "model", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise EncoderError(f"{path}: holds no state_dict of tensors")
    return state


def load_backbone_weights(backbone: nn.Module, path: str | Path, name: str) -> None:
    """Load a weights file into ``backbone``; EncoderError naming missing/unexpected keys.

    Classifier-head keys (``head.*``, ``fc.*``, ``classifier.*``) the backbone lacks are
    ignored (encoders have no classifier); a ``module.`` or ``backbone.`` prefix on every
    key is removed.
    """
    state = load_weights_file(path)
    for prefix in ("module.", "backbone.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    own = backbone.state_dict()
    heads = ("head.", "fc.", "classifier.", "head_dist.")
    state = {k: v for k, v in state.items() if k in own or not k.startswith(heads)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys ({', '.join(missing[:4])}...)")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys ({', '.join(unexpected[:4])}...)")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} shapes differ ({k}: file {tuple(state[k].shape)}, "
                f"model {tuple(own[k].shape)})"
            )
        raise EncoderError(
            f"{path}: not weights of encoder {name}: {'; '.join(parts)}. Pass the weights "
            "of this architecture, or the architecture of these weights (--encoder)"
        )
    backbone.load_state_dict(state)
    logger.info("loaded encoder weights %s into %s", path, name)


# ----------------------------------------------------------------------------- fine-tuning
def _blocks(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's ordered blocks: timm's ``blocks``/``stages``/``layers`` or a
    Sequential's children that hold parameters."""
    for attr in ("blocks", "stages", "layers"):
        blocks = getattr(backbone, attr, None)
        if isinstance(blocks, (nn.Sequential, nn.ModuleList)):
            return list(blocks)
    module = backbone
    while (
        isinstance(module, nn.Sequential) and len(module) and isinstance(module[0], nn.Sequential)
    ):
        module = module[0]  # a trunk wrapped as Sequential(trunk, pool, flatten)
    return [m for m in module.children() if any(True for _ in m.parameters())]


def _inject_lora(encoder: PatchEncoder, rank: int, alpha: float) -> None:
    """LoRA adapters (peft; Hu et al. 2021) on every linear layer of the backbone's blocks;
    every other backbone parameter is frozen. ``B`` starts at zero, so the adapted encoder
    first computes exactly what the base encoder does; no adapter dropout (the chunked
    recompute would replay it, but it is off, as in most pathology recipes)."""
    backbone = encoder.backbone
    linear = {
        id(m) for block in _blocks(backbone) for m in block.modules() if isinstance(m, nn.Linear)
    }
    targets = [name for name, module in backbone.named_modules() if id(module) in linear]
    if not targets:
        raise EncoderError(
            f"encoder.finetune lora: {encoder.config.name} has no linear layers in its "
            "blocks (LoRA is for ViTs); use full, frozen or last:N"
        )
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ModuleNotFoundError:
        raise EncoderError(
            "encoder.finetune lora needs the peft package: pip install peft "
            "(or pip install 'gigastream[lora]')"
        ) from None
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=targets
    )
    backbone.requires_grad_(False)
    inject_adapter_in_model(config, backbone)
    for name, p in backbone.named_parameters():
        p.requires_grad_(".lora_" in name)


def apply_finetune(encoder: PatchEncoder, finetune: str, rank: int = 8, alpha: float = 16.0) -> int:
    """Set which parameters of ``encoder`` train; returns the number of trainable ones.

    Raises:
        EncoderError: ``last:N`` with more blocks than the encoder has; ``lora`` on an
            encoder without linear layers in its blocks.
    """
    mode, last = finetune_modes(finetune)
    backbone = encoder.backbone
    # "full": every parameter keeps requires_grad as built
    if mode == "frozen":
        backbone.requires_grad_(False)
    elif mode == "last":
        blocks = _blocks(backbone)
        if last > len(blocks):
            raise EncoderError(
                f"encoder.finetune last:{last}: {encoder.config.name} has {len(blocks)} blocks"
            )
        backbone.requires_grad_(False)
        first = blocks[-last]
        seen = False
        for module in backbone.modules():  # the last N blocks and every module after them
            if module is first:
                seen = True
            if seen:
                for p in module.parameters(recurse=False):
                    p.requires_grad_(True)
    elif mode == "lora":
        _inject_lora(encoder, rank, alpha)
    return sum(p.numel() for p in encoder.parameters() if p.requires_grad)


def build_encoder(config: EncoderConfig) -> PatchEncoder:
    """The patch encoder of ``config``, weights loaded and fine-tuning mode applied.

    Raises:
        EncoderError: an unknown name (with the closest timm names), a hub name or URL
            (nothing can be downloaded: use ``--weights PATH``), a weights file that does
            not fit (naming the missing and unexpected keys), a bad fine-tuning mode.
    """
    config.validate()
    if config.name.startswith("timm:"):
        backbone, out_dim = _timm_backbone(config)
    elif config.name == "small_cnn":
        if config.weights == "imagenet":
            raise EncoderError("small_cnn has no ImageNet weights; pass a local state_dict")
        backbone, out_dim = _small_cnn_backbone(config)
    else:
        from gigastream.models.trunks import list_trunks

        if config.name not in list_trunks():
            raise EncoderError(
                f"unknown encoder {config.name!r}; use a registered trunk "
                f"({', '.join(list_trunks())}), small_cnn or timm:<model name>"
            )
        backbone, out_dim = _trunk_backbone(config)
    weights = config.weights
    is_trunk = not config.name.startswith("timm:") and config.name != "small_cnn"
    if weights not in (None, "imagenet") and not is_trunk:
        load_backbone_weights(backbone, weights, config.name)
    encoder = PatchEncoder(freeze_batchnorm(backbone), out_dim, config)
    apply_finetune(encoder, config.finetune, config.lora_rank, config.lora_alpha)
    return encoder


__all__ = [
    "EncoderConfig",
    "EncoderError",
    "PatchEncoder",
    "apply_finetune",
    "build_encoder",
    "finetune_modes",
    "load_backbone_weights",
    "load_weights_file",
]
