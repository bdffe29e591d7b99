"""StreamingMIL: any streamed CNN trunk and any MIL head trained end to end on whole slides.

A registered trunk (BatchNorm frozen) runs over the whole slide with
:class:`~gigastream.streaming.module.StreamingModule` (exact gradients, bounded memory;
Pinckaers et al., TPAMI 2020); an optional max-pool shrinks its feature map; every position
of the pooled map is one *instance* (optionally only positions on tissue); a registered MIL
head pools the instances into slide logits, and its attention weights form a heatmap of
where the model looked.

:class:`StreamingMILConfig`'s defaults are the run's defaults (the recipe of
``experiments/demo_recipe``: the small ``vgg_small`` trunk and top-k instance pooling, which
learn from random initialisation on a CPU). :func:`streaming_clam` is the preset of
StreamingCLAM (Dooper et al., "Gigapixel end-to-end training using streaming and attention",
Medical Image Analysis 2023): a ResNet-34 with ImageNet weights, an extra 2x2 max-pool and
a CLAM-SB head (Lu et al. 2021) with CLAM's published sizes.

Example:
    >>> import torch
    >>> model = StreamingMIL(StreamingMILConfig(tile_size=512))
    >>> out = model(torch.randn(1, 3, 640, 768), label=1)
    >>> out.logits.shape, out.attention_map.shape
    (torch.Size([2]), torch.Size([40, 48]))
    >>> loss = model.loss(out, 1)
    >>> streaming_clam(tile_size=None, memory_budget="40GiB").arch
    'resnet34'
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
from gigastream.models.trunks import build_trunk, list_trunks
from gigastream.streaming.module import StreamingModule
from gigastream.streaming.planner import parse_bytes
from gigastream.streaming.recompute import InputSource

logger = logging.getLogger(__name__)

#: The model kinds of a run (``model.kind``): this module's streamed model, a patch-bag
#: model (:class:`~gigastream.models.patch_mil.PatchMIL`) or a head on cached patch features
#: (:class:`~gigastream.models.feature_mil.FeatureMIL`).
MODEL_KINDS = ("streaming", "patches", "features")


@dataclass
class StreamingMILConfig:
    """A streamed slide classifier; the defaults are a run's defaults (``model:`` of a run).

    Attributes:
        arch: a registered trunk (:func:`gigastream.models.trunks.list_trunks`): the small
            VGG-style ``vgg_small`` (fast on CPU, learns from random initialisation) or
            torchvision ``resnet18``/``resnet34`` (StreamingCLAM's)/``resnet50``.
        weights: trunk weights: ``None`` (random initialisation), ``"imagenet"``
            (torchvision's weights API; fails at once offline) or a local ``state_dict``
            file.
        num_classes: number of slide classes (>= 2: a softmax over the classes; a binary
            task has two), or 1: the one linear output of a regression.
        head: registered MIL head name (:func:`gigastream.mil.heads.list_mil_heads`):
            ``topk`` (top-k instance pooling with an instance loss), ``clam_sb``, ...
        head_options: options of the head, e.g. ``k`` and ``instance_weight`` of ``topk``,
            ``hidden_dim``, ``attn_dim``, ``dropout`` or ``preset`` of CLAM; a YAML file
            that names another head starts from that head's own defaults.
        tile_size: streaming tile edge in input pixels (margins included).
        memory_budget: alternative/extra planner budget, bytes or e.g. ``"4GiB"``.
        pool: edge of the extra max-pool after the trunk (1: none); StreamingCLAM uses 2.
        tissue_instances: use only feature positions on tissue as instances (when the
            input is a :class:`~gigastream.wsi.source.SlideSource` with a tissue mask).
        progress: show a progress bar over streaming tiles.
        fold_batchnorm: fold the trunk's (frozen) BatchNorms into the convolutions before
            them (:mod:`gigastream.streaming.folding`): the same model and gradients (to
            rounding), without the BatchNorms' own forward and backward cost; checkpoints
            are the same either way.
        input_cache: a slide is decoded once per step: what the forward pass read is kept
            in host memory for the backward recompute, up to this many bytes (``"auto"``: a
            quarter of the available memory; ``0``: none; e.g. ``"2GiB"``).
        input_spill: where what does not fit ``input_cache`` goes: ``"run"`` (a training
            run's ``cache/`` folder; without a run, nowhere), a folder, or ``None``/``"off"``
            (decoded again in backward). A memory-mapped file, unlinked at creation
            (:class:`~gigastream.streaming.spill.SpillFile`).
        kind: ``streaming`` (this model) or ``patches``: a
            :class:`~gigastream.models.patch_mil.PatchMIL` on the slide's tissue patches,
            which uses ``num_classes``, ``head`` and ``head_options`` from here and its
            patch settings from the run's ``patches:`` section (the trunk and streaming
            fields do not apply); or ``features``: a
            :class:`~gigastream.models.feature_mil.FeatureMIL` head on the cached patch
            features of ``data.features_dir``.
    """

    arch: str = "vgg_small"
    weights: str | None = None
    num_classes: int = 2
    head: str = "topk"
    head_options: dict[str, Any] = field(default_factory=lambda: {"k": 8, "instance_weight": 1.0})
    tile_size: int | None = 1024
    memory_budget: int | str | None = None
    pool: int = 1
    tissue_instances: bool = True
    progress: bool = False
    fold_batchnorm: bool = False
    input_cache: int | str = "auto"
    input_spill: str | None = "run"
    kind: str = "streaming"

    def validate(self) -> None:
        """Raise ValueError on impossible settings."""
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"kind must be streaming, patches or features, got {self.kind!r}")
        if self.arch not in list_trunks():
            raise ValueError(f"arch must be one of {', '.join(list_trunks())}, got {self.arch!r}")
        if self.num_classes < 1:
            raise ValueError(
                f"num_classes must be >= 2 (classes; a binary task has two) or 1 (a "
                f"regression's one output), got {self.num_classes}"
            )
        if self.tile_size is not None and self.tile_size < 1:
            raise ValueError(f"tile_size must be a positive number of pixels, got {self.tile_size}")
        if self.tile_size is None and self.memory_budget is None:
            raise ValueError("StreamingMILConfig needs tile_size or memory_budget")
        if self.pool < 1:
            raise ValueError(f"pool must be >= 1, got {self.pool}")
        if self.input_cache != "auto":
            try:
                parse_bytes(self.input_cache)
            except ValueError as exc:
                raise ValueError(f"input_cache: {exc} (or 'auto')") from None
        if self.weights not in (None, "imagenet") and not Path(self.weights).is_file():
            raise FileNotFoundError(
                f"{self.weights}: trunk weights file not found (give a local state_dict file "
                "or 'imagenet')"
            )


def spill_folder(setting: str | None, run_dir: Path | None = None) -> Path | None:
    """The folder of :attr:`StreamingMILConfig.input_spill`: ``"run"`` is ``run_dir/cache``
    (``None`` without a run), ``None`` or ``"off"`` is none, anything else a folder."""
    if setting is None or setting == "off":
        return None
    if setting == "run":
        return run_dir / "cache" if run_dir is not None else None
    return Path(setting)


def streaming_clam(**overrides: Any) -> StreamingMILConfig:
    """The StreamingCLAM preset (Dooper et al. 2023), as laid out in ``configs/camelyon16.yaml``.

    A ResNet-34 trunk with ImageNet weights, an extra 2x2 max-pool and a CLAM-SB head with
    CLAM's published sizes (``head_options: {preset: paper}``: 512 projection, attention
    width 256, dropout 0.25). ``overrides`` set any other field, e.g. ``tile_size`` or
    ``memory_budget`` for the machine.

    Example:
        >>> config = streaming_clam(weights=None, tile_size=512)
        >>> config.arch, config.head, config.pool
        ('resnet34', 'clam_sb', 2)
    """
    preset: dict[str, Any] = {
        "arch": "resnet34",
        "weights": "imagenet",
        "head": "clam_sb",
        "head_options": {"preset": "paper"},
        "pool": 2,
    }
    return StreamingMILConfig(**{**preset, **overrides})


@dataclass
class SlideOutput:
    """What :class:`StreamingMIL` returns for one slide.

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


class StreamingMIL(nn.Module):
    """Streamed trunk + optional max-pool + MIL head (see the module docstring).

    Args:
        config: the model settings (default: a run's default model).

    Example:
        >>> model = StreamingMIL(streaming_clam(arch="resnet18", weights=None, tile_size=512))
        >>> out = model(torch.randn(1, 3, 512, 512))
        >>> round(float(out.attention.sum().detach()), 4)
        1.0
    """

    def __init__(self, config: StreamingMILConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or StreamingMILConfig()
        config.validate()
        trunk, channels, self.trunk_stride = build_trunk(config.arch, config.weights)
        self.trunk = StreamingModule(
            trunk,
            tile_size=config.tile_size,
            memory_budget=config.memory_budget,
            freeze_batchnorm=True,
            fold_batchnorm=config.fold_batchnorm,
            progress=config.progress,
            input_cache=config.input_cache,
            input_spill=spill_folder(config.input_spill),
        )
        self.pool = nn.MaxPool2d(config.pool, config.pool, ceil_mode=True)
        self.head = create_mil_head(
            config.head, channels, config.num_classes, **config.head_options
        )

    @property
    def output_stride(self) -> int:
        """Input pixels per instance (pooled feature-map position) along each axis."""
        return self.trunk_stride * self.config.pool

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``trunk`` (the CNN) and ``head`` (the MIL head) parameters, for their own learning rates."""
        return {"trunk": list(self.trunk.parameters()), "head": list(self.head.parameters())}

    def feature_map(self, x: Tensor | InputSource, stream: bool = True) -> Tensor:
        """The pooled trunk feature map ``(1, C, h, w)`` of one slide ``(1, 3, H, W)``.

        Args:
            x: the slide as a tensor or a lazy input source.
            stream: stream the trunk (bounded memory); ``False`` runs it as one piece
                (the ordinary computation, for checks; a source is read whole).
        """
        if stream:
            fmap = self.trunk(x)  # (1, C, H/stride, W/stride)
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
            raise ValueError(f"StreamingMIL takes one slide (1, 3, H, W), got {tuple(x.shape)}")
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


__all__ = ["MODEL_KINDS", "SlideOutput", "StreamingMIL", "StreamingMILConfig", "streaming_clam"]
