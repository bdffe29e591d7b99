"""StreamingCLAM: a streamed ResNet trunk and a CLAM head trained end to end on whole slides.

Dooper et al., "Gigapixel end-to-end training using streaming and attention", Medical Image
Analysis 2023. A ResNet trunk (BatchNorm frozen) runs over the whole slide with
:class:`~gigastream.streaming.module.StreamingModule` (exact gradients, bounded memory); an
extra 2x2 max-pool shrinks its feature map; every position of the pooled map is one
*instance* (optionally only positions on tissue); a CLAM head (Lu et al. 2021) pools the
instances into slide logits, and its attention weights form a heatmap of where the model
looked.

Example:
    >>> import torch
    >>> model = StreamingCLAM(StreamingCLAMConfig(tile_size=512))
    >>> out = model(torch.randn(1, 3, 640, 768), label=1)
    >>> out.logits.shape, out.attention_map.shape
    (torch.Size([2]), torch.Size([10, 12]))
    >>> loss = model.loss(out, 1)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gigastream.mil.base import MILOutput
from gigastream.mil.heads import create_mil_head
from gigastream.streaming.module import StreamingModule
from gigastream.streaming.recompute import InputSource

logger = logging.getLogger(__name__)

#: Output stride of a torchvision ResNet trunk (conv1 2x, max-pool 2x, layer2-4 2x each).
RESNET_STRIDE = 32
_TRUNK_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


@dataclass
class StreamingCLAMConfig:
    """A StreamingCLAM model.

    Attributes:
        arch: torchvision ResNet trunk: ``resnet18`` (fast on CPU), ``resnet34`` (the paper's),
            or ``resnet50``.
        weights_path: local ``state_dict`` file of the torchvision ResNet (e.g. ImageNet
            weights saved earlier); ``None`` keeps the random initialisation. Nothing is
            ever downloaded.
        num_classes: number of slide classes.
        head: registered MIL head name (:func:`gigastream.mil.heads.list_mil_heads`).
        head_options: options of the head, e.g. ``hidden_dim``, ``attn_dim``, ``dropout``.
        tile_size: streaming tile edge in input pixels (margins included).
        memory_budget: alternative/extra planner budget, bytes or e.g. ``"4GiB"``.
        pool: edge of the extra max-pool after the trunk (1: none); StreamingCLAM uses 2.
        tissue_instances: use only feature positions on tissue as instances (when the
            input is a :class:`~gigastream.wsi.source.SlideSource` with a tissue mask).
        progress: show a progress bar over streaming tiles.
    """

    arch: str = "resnet18"
    weights_path: str | None = None
    num_classes: int = 2
    head: str = "clam_sb"
    head_options: dict[str, Any] = field(
        default_factory=lambda: {"hidden_dim": 128, "attn_dim": 64, "dropout": 0.25}
    )
    tile_size: int | None = 1024
    memory_budget: int | str | None = None
    pool: int = 2
    tissue_instances: bool = True
    progress: bool = False

    def validate(self) -> None:
        """Raise ValueError on impossible settings."""
        if self.arch not in _TRUNK_CHANNELS:
            raise ValueError(f"arch must be one of {', '.join(_TRUNK_CHANNELS)}, got {self.arch!r}")
        if self.tile_size is None and self.memory_budget is None:
            raise ValueError("StreamingCLAMConfig needs tile_size or memory_budget")
        if self.pool < 1:
            raise ValueError(f"pool must be >= 1, got {self.pool}")
        if self.weights_path is not None and not Path(self.weights_path).is_file():
            raise FileNotFoundError(f"{self.weights_path}: trunk weights file not found")


@dataclass
class SlideOutput:
    """What :class:`StreamingCLAM` returns for one slide.

    Attributes:
        logits: slide class scores, ``(num_classes,)``.
        attention: attention over the instances, ``(N,)`` (sums to 1), or
            ``(branches, N)`` for multi-branch heads.
        attention_map: the (first-branch) attention laid out on the pooled feature grid,
            ``(h, w)``; positions that are not instances (off tissue) are 0.
        instances: ``(h, w)`` bool, which grid positions were instances.
        head_output: the head's full :class:`~gigastream.mil.base.MILOutput`.
    """

    logits: Tensor
    attention: Tensor
    attention_map: Tensor
    instances: Tensor
    head_output: MILOutput


def build_resnet_trunk(arch: str, weights_path: str | Path | None = None) -> nn.Sequential:
    """A torchvision ResNet without its global pool and classifier, as ``nn.Sequential``.

    Args:
        arch: ``resnet18``, ``resnet34`` or ``resnet50``.
        weights_path: a local torchvision ``state_dict`` of the full ResNet (the ``fc``
            weights are ignored); ``None``: random initialisation.

    Returns:
        ``conv1, bn1, relu, maxpool, layer1..layer4``: (B, 3, H, W) -> (B, C, H/32, W/32).
    """
    import torchvision

    resnet = getattr(torchvision.models, arch)(weights=None)
    if weights_path is not None:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        try:
            missing, unexpected = resnet.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise ValueError(
                f"{weights_path}: not a torchvision {arch} state_dict: {exc}"
            ) from None
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise ValueError(
                f"{weights_path}: not a torchvision {arch} state_dict "
                f"(missing {missing[:3]}..., unexpected {unexpected[:3]}...)"
            )
        logger.info("loaded %s trunk weights from %s", arch, weights_path)
    return nn.Sequential(*list(resnet.children())[:-2])


class StreamingCLAM(nn.Module):
    """Streamed ResNet trunk + extra max-pool + CLAM head (see the module docstring).

    Args:
        config: the model settings.

    Example:
        >>> model = StreamingCLAM(StreamingCLAMConfig(arch="resnet18", tile_size=512))
        >>> out = model(torch.randn(1, 3, 512, 512))
        >>> float(out.attention.sum())  # doctest: +ELLIPSIS
        1.0...
    """

    def __init__(self, config: StreamingCLAMConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or StreamingCLAMConfig()
        config.validate()
        trunk = build_resnet_trunk(config.arch, config.weights_path)
        self.trunk = StreamingModule(
            trunk,
            tile_size=config.tile_size,
            memory_budget=config.memory_budget,
            freeze_batchnorm=True,
            progress=config.progress,
        )
        self.pool = nn.MaxPool2d(config.pool, config.pool, ceil_mode=True)
        self.head = create_mil_head(
            config.head, _TRUNK_CHANNELS[config.arch], config.num_classes, **config.head_options
        )

    @property
    def output_stride(self) -> int:
        """Input pixels per instance (pooled feature-map position) along each axis."""
        return RESNET_STRIDE * self.config.pool

    def feature_map(self, x: Tensor | InputSource, stream: bool = True) -> Tensor:
        """The pooled trunk feature map ``(1, C, h, w)`` of one slide ``(1, 3, H, W)``.

        Args:
            x: the slide as a tensor or a lazy input source.
            stream: stream the trunk (bounded memory); ``False`` runs it as one piece
                (the ordinary computation, for checks; a source is read whole).
        """
        if stream:
            fmap = self.trunk(x)  # (1, C, H/32, W/32)
        else:
            if not isinstance(x, Tensor):
                x = x.read((slice(None),) * 4)
            self.trunk._check_modes()
            fmap = self.trunk.trunk(x)
        return self.pool(fmap)  # (1, C, h, w)

    def instance_mask(self, x: Tensor | InputSource, grid: tuple[int, int]) -> Tensor | None:
        """``(h, w)`` bool of grid positions on tissue, or None (all positions are instances).

        A position is on tissue when any mask pixel inside its cell is tissue.
        """
        mask = getattr(x, "tissue_mask", None) if self.config.tissue_instances else None
        if mask is None:
            return None
        height, width = grid
        stride_um = self.output_stride * float(x.mpp)  # microns per cell
        # sample the mask at 4x4 points per cell (pixel centres on the global micron grid)
        sub = 4
        mh, mw = mask.mask.shape
        ys = (np.arange(height * sub) + 0.5) * stride_um / sub / mask.mpp
        xs = (np.arange(width * sub) + 0.5) * stride_um / sub / mask.mpp
        rows = np.minimum(ys.astype(np.int64), mh - 1)
        cols = np.minimum(xs.astype(np.int64), mw - 1)
        fine = mask.mask[rows[:, None], cols[None, :]]  # (h * sub, w * sub)
        cells = fine.reshape(height, sub, width, sub).any(axis=(1, 3))  # (h, w)
        if not cells.any():
            logger.warning("no feature position lies on tissue; using all positions")
            return None
        return torch.from_numpy(cells)

    def forward(
        self, x: Tensor | InputSource, label: Tensor | int | None = None, stream: bool = True
    ) -> SlideOutput:
        """Classify one slide.

        Args:
            x: the slide, ``(1, 3, H, W)`` tensor or lazy source (e.g. ``SlideSource``).
            label: the slide's class index (CLAM needs it for its instance loss).
            stream: see :meth:`feature_map`.

        Returns:
            The :class:`SlideOutput`.
        """
        if x.shape[0] != 1:
            raise ValueError(f"StreamingCLAM takes one slide (1, 3, H, W), got {tuple(x.shape)}")
        fmap = self.feature_map(x, stream=stream)  # (1, C, h, w)
        _, channels, height, width = fmap.shape
        features = fmap[0].permute(1, 2, 0).reshape(height * width, channels)  # (h*w, C)
        cells = self.instance_mask(x, (height, width))
        if cells is None:
            cells = torch.ones(height, width, dtype=torch.bool)
        else:
            features = features[cells.reshape(-1).to(features.device)]  # (N, C)
        out = self.head(features, label=label)
        first = out.attention if out.attention.dim() == 1 else out.attention[0]  # (N,)
        attention_map = first.new_zeros(height * width)
        attention_map[cells.reshape(-1).to(first.device)] = first.detach()
        return SlideOutput(
            out.logits, out.attention, attention_map.reshape(height, width), cells, out
        )

    def loss(self, out: SlideOutput, label: Tensor | int) -> Tensor:
        """The head's training loss (CLAM: bag and instance loss) for one slide."""
        return self.head.loss(out.head_output, label)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
