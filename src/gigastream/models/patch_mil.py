"""PatchMIL: attention MIL trained end to end on a slide's bag of tissue patches.

The tissue of a slide is cut into a grid of ``patch_size`` px patches at the run's ``mpp``
(:func:`~gigastream.wsi.patches.patch_grid`; a patch is kept when its tissue fraction is at
least ``min_tissue``); each patch is an instance, a patch encoder
(:func:`~gigastream.models.encoders.build_encoder`: a registered trunk, ``small_cnn`` or any
``timm:`` model, with local weights and a fine-tuning mode) maps it to a vector, and a
registered MIL head pools the vectors into slide logits (Ilse et al., ICML 2018). The
encoder trains end to end with one of the strategies of
:mod:`gigastream.mil.strategies` (Andersson et al., 2022):

- ``accumulate``: exact gradients with memory bounded by one chunk of ``chunk_size``
  patches (:class:`~gigastream.mil.chunked.ChunkedEncoder`), any bag size;
- ``baseline``: the whole bag in one graph (the memory-hungry reference);
- ``sample``: ``sample_size`` random patches per training step (Koriakina et al., 2021);
- ``frozen``: the encoder does not train; a bag's features are computed once (in chunks,
  without a graph) and cached in memory, keyed by the slide file, the patch grid and the
  orientation (training bags are not augmented), so each epoch after the first trains
  only the head: the two-stage baseline inside one run.

A bag is a tensor ``(N, 3, P, P)`` (``(N, C, P, P)`` for an encoder of ``C`` input
channels, e.g. the MNIST-bags experiment's 1-channel digits) or a lazy
:class:`~gigastream.wsi.patches.PatchBag` whose patches are read from the slide when they
are encoded; a bag with a ``grid`` gets its attention laid out on the patch grid
(``attention_map``), for heatmaps.

In a run (``gigastream train``) the model is ``model: {kind: patches, head: ...,
head_options: ...}`` and its patch settings are the run's ``patches:`` section
(:class:`PatchConfig`)::

    model: {kind: patches, head: gated_abmil, head_options: {attn_dim: 64}}
    patches: {encoder: {name: small_cnn}, patch_size: 32, strategy: accumulate}
    data: {mpp: 0.5}

Example:
    >>> import torch
    >>> config = PatchConfig(EncoderConfig("small_cnn"), patch_size=32, chunk_size=4)
    >>> model = PatchMIL(config, head="abmil")
    >>> out = model(torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8), label=1)
    >>> out.logits.shape, out.attention.shape
    (torch.Size([2]), torch.Size([10]))
    >>> loss = model.loss(out, 1)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gigastream.mil.base import MILOutput
from gigastream.mil.heads import create_mil_head
from gigastream.mil.strategies import Bag, BagClassifier, StrategyConfig
from gigastream.models.encoders import EncoderConfig, build_encoder
from gigastream.wsi.patches import PatchGrid

#: The units of training augmentation (``patches.augment``).
AUGMENT_UNITS = ("bag", "patch")


@dataclass
class PatchConfig:
    """The patch bag of a slide and how its encoder trains (``patches:`` of a run).

    Attributes:
        encoder: the patch encoder (:class:`~gigastream.models.encoders.EncoderConfig`:
            ``name``, ``weights``, ``finetune``, ``normalize``, ``options``); a
            ``small_cnn`` without ``options.image_size`` is built for ``patch_size``.
        patch_size: patch edge in pixels at the run's ``data.mpp`` (224 or 256 at
            0.5 µm/px is common for slides; the breast TMA benchmark uses 32).
        min_tissue: keep a patch when at least this fraction of it is tissue (by the
            slide's tissue mask, ``data.tissue``).
        strategy: ``accumulate`` (exact, bounded memory), ``baseline`` (whole bag in
            one graph), ``sample`` (``sample_size`` random patches per step) or ``frozen``
            (the encoder does not train, whatever ``encoder.finetune`` says; each bag's
            features are computed once and kept in memory, so only the head trains).
        chunk_size: patches per chunk (``accumulate``, and evaluation of every strategy).
        sample_size: patches per training step (``sample``).
        memory_budget_mib: ``accumulate`` only: memory (MiB) for chunks that keep their
            graph instead of being recomputed (faster); ``None``: recompute every chunk.
        augment: the unit of training augmentation (with ``data.augment``): ``bag`` (one
            random flip/rotation by 90 degrees for every patch of the bag) or ``patch``
            (each patch its own of the 8, drawn once per step, so every strategy and both
            passes of ``accumulate`` see the same pixels).
        color_jitter: brightness and contrast factors drawn uniformly in ``[1 - j, 1 + j]``
            (per patch, or one pair per bag with ``augment: bag``) and applied to the
            uint8 pixels before the encoder's normalisation; in ``[0, 1)``, 0: none.
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    patch_size: int = 224
    min_tissue: float = 0.5
    strategy: str = "accumulate"
    chunk_size: int = 64
    sample_size: int = 64
    memory_budget_mib: float | None = None
    augment: str = "bag"  # or "patch": every patch its own orientation (and jitter)
    color_jitter: float = 0.0  # brightness/contrast factors in [1 - j, 1 + j]; 0: none

    def validate(self) -> None:
        """Raise ValueError (an :class:`~gigastream.models.encoders.EncoderError` for the
        encoder) on impossible settings; nothing is built."""
        if self.patch_size < 1:
            raise ValueError(
                f"patch_size must be a positive number of pixels, got {self.patch_size}"
            )
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ValueError(f"min_tissue must be a fraction in [0, 1], got {self.min_tissue}")
        if self.augment not in AUGMENT_UNITS:
            raise ValueError(
                f"augment must be bag (one orientation per bag) or patch (one per patch), got "
                f"{self.augment!r} (--patch-augment)"
            )
        if not 0.0 <= self.color_jitter < 1.0:
            raise ValueError(
                f"color_jitter must be in [0, 1) (e.g. 0.1: factors in [0.9, 1.1]; 0: none), "
                f"got {self.color_jitter} (--color-jitter)"
            )
        self.strategy_config()
        self.encoder.validate()

    def strategy_config(self) -> StrategyConfig:
        """The training strategy (ValueError on a bad name or size)."""
        return StrategyConfig(
            self.strategy, self.chunk_size, self.sample_size, self.memory_budget_mib
        )

    def encoder_config(self) -> EncoderConfig:
        """:attr:`encoder`, with ``small_cnn``'s ``image_size`` set to ``patch_size``."""
        encoder = self.encoder
        if encoder.name == "small_cnn" and "image_size" not in encoder.options:
            return replace(encoder, options={**encoder.options, "image_size": self.patch_size})
        return encoder


@dataclass
class PatchOutput:
    """What :class:`PatchMIL` returns for one bag.

    Attributes:
        logits: class scores ``(num_classes,)``.
        attention: attention over the encoded patches ``(n,)`` (``(branches, n)`` for
            multi-branch heads); ``n`` is the bag size, or ``sample_size`` in training
            with ``sample``.
        attention_map: the (first-branch) attention on the patch grid ``(rows, cols)``
            (0 off the encoded patches), or ``None`` for a bag without a grid.
        instances: ``(rows, cols)`` bool, the grid cells of the encoded patches, or ``None``.
        head_output: the head's :class:`~gigastream.mil.base.MILOutput`.
        kept: indices ``(n,)`` of the encoded patches in the bag (``None``: all, in order).
    """

    logits: Tensor
    attention: Tensor
    attention_map: Tensor | None
    instances: Tensor | None
    head_output: MILOutput
    kept: Tensor | None = None


def attention_on_grid(
    grid: PatchGrid, attention: Tensor, kept: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Patch attention ``(n,)`` laid out on the grid: ``(attention_map, instances)``, both
    ``(rows, cols)`` (float32, 0 off the patches; bool). ``kept``: the patches ``attention``
    is of (default: all of the grid's, in order)."""
    index = np.arange(len(grid)) if kept is None else kept.cpu().numpy()
    values = np.zeros(len(grid), dtype=np.float32)
    values[index] = attention.detach().float().cpu().numpy()
    encoded = np.zeros(len(grid), dtype=np.float32)
    encoded[index] = 1.0
    attention_map = torch.from_numpy(grid.layout(values, fill=0.0))
    instances = torch.from_numpy(grid.layout(encoded, fill=0.0) > 0)
    return attention_map, instances


class PatchMIL(BagClassifier):
    """A patch encoder + MIL head trained on bags of patches with a strategy (module docstring).

    Keeps the engine's :class:`~gigastream.train.module.MILModel` contract; in eval mode
    every patch is encoded in chunks without a graph.

    Args:
        config: the patch settings (encoder, patch size, strategy).
        head: a registered MIL head (:func:`~gigastream.mil.heads.list_mil_heads`).
        num_classes: slide classes (>= 2), or 1 (a regression's one output).
        head_options: the head's options.
        generator: random source of ``sample`` (``None``: torch's, reseeded by the engine).

    Raises:
        ValueError: bad settings; :class:`~gigastream.models.encoders.EncoderError` for an
            unknown encoder or weights that do not fit it.
    """

    def __init__(
        self,
        config: PatchConfig | None = None,
        head: str = "abmil",
        num_classes: int = 2,
        head_options: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        config = config or PatchConfig()
        config.validate()
        encoder = build_encoder(config.encoder_config())
        mil_head = create_mil_head(head, encoder.out_dim, num_classes, **(head_options or {}))
        super().__init__(encoder, mil_head, config.strategy_config(), generator)
        self.config = config

    @property
    def output_stride(self) -> int:
        """Input pixels per instance (one patch) along each axis: ``patch_size``."""
        return self.config.patch_size

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``trunk`` (the encoder's trainable parameters) and ``head`` parameters."""
        trunk = [p for p in self.encoder.parameters() if p.requires_grad]
        return {"trunk": trunk, "head": list(self.head.parameters())}

    def forward(self, bag: Bag, label: Tensor | int | None = None) -> PatchOutput:
        """Classify one bag of patches ``(N, C, P, P)`` (``C``: the encoder's
        ``in_channels``, 3 for slides; a tensor or a lazy source with an optional ``grid``);
        ``label`` as for the head."""
        size, channels = self.config.patch_size, self.config.encoder.in_channels
        if tuple(bag.shape[1:]) != (channels, size, size):
            raise ValueError(
                f"PatchMIL takes a bag of (N, {channels}, {size}, {size}) patches, got "
                f"{tuple(bag.shape)}"
            )
        features, kept = self.encode(bag)  # (n, D)
        out = self.head(features, label=label)
        first = out.attention if out.attention.dim() == 1 else out.attention[0]  # (n,)
        grid = getattr(bag, "grid", None)
        attention_map = instances = None
        if grid is not None:
            attention_map, instances = attention_on_grid(grid, first, kept)
        return PatchOutput(out.logits, out.attention, attention_map, instances, out, kept)

    def loss(self, out: PatchOutput, label: Tensor | int) -> Tensor:
        """The head's training loss of one bag."""
        return self.head.loss(out.head_output, label)


__all__ = ["AUGMENT_UNITS", "PatchConfig", "PatchMIL", "PatchOutput", "attention_on_grid"]
