"""FeatureMIL: a MIL head trained on cached patch features (the two-stage baseline).

The two-stage recipe of CLAM (Lu et al., Nature BME 2021) and TRIDENT: a frozen patch
encoder maps every tissue patch of a slide to a vector once (``gigastream features``,
:func:`~gigastream.train.features.extract_features`, one ``<slide_id>.h5`` per slide in
CLAM/TRIDENT's layout), then only a MIL head (Ilse et al., ICML 2018) is trained on the
bags of vectors ``(N, D)``. It is fast and light, and the reference an end-to-end model
(:class:`~gigastream.models.patch_mil.PatchMIL`) must beat.

In a run (``gigastream train --features DIR``) the model is ``model: {kind: features,
head: ..., head_options: ...}``, the files are ``data.features_dir`` and the features'
description is the run's ``features:`` section (:class:`FeatureConfig`), filled in from the
first file and stored in every checkpoint::

    model: {kind: features, head: abmil, head_options: {attn_dim: 128}}
    data: {features_dir: features/resnet18_224}

A bag is a tensor ``(N, D)`` or a :class:`FeatureBag` (features, the patch grid laid from
the file's ``coords`` and the file); a bag with a grid gets its attention laid out on the
patch grid (``attention_map``), for heatmaps.

Example:
    >>> import torch
    >>> model = FeatureMIL(feature_dim=16, head="abmil")
    >>> out = model(torch.randn(10, 16), label=1)
    >>> out.logits.shape, out.attention.shape
    (torch.Size([2]), torch.Size([10]))
    >>> loss = model.loss(out, 1)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from gigastream.mil.heads import create_mil_head
from gigastream.models.patch_mil import PatchOutput, attention_on_grid
from gigastream.wsi.feature_files import FeatureFileError
from gigastream.wsi.patches import PatchGrid


@dataclass
class FeatureConfig:
    """The cached features a ``model.kind: features`` run trains on (``features:`` of a run).

    Both are derived by :func:`~gigastream.train.preparation.prepare` from the first feature
    file of the run's slides and stored in the resolved config and every checkpoint; a
    checkpoint only takes features of the same dimension.

    Attributes:
        feature_dim: ``D`` of the features (``None``: that of the first file; set, every
            file must match it).
        encoder: the first file's description of its encoder (``encoder``,
            ``weights_sha256``, ``mpp``, ``patch_size``, ... as far as the file has them).
    """

    feature_dim: int | None = None
    encoder: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ValueError on an impossible ``feature_dim``."""
        if self.feature_dim is not None and self.feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {self.feature_dim}")


class FeatureBag:
    """One slide's cached features as a bag: ``features`` ``(N, D)``, the patch ``grid``
    (``None`` when unknown) and the ``path`` of the file they came from.

    Args:
        features: ``(N, D)`` patch features.
        grid: the patches' grid (from the file's ``coords``), for the attention map.
        path: the feature file (named in errors).
    """

    def __init__(
        self, features: Tensor, grid: PatchGrid | None = None, path: str | Path | None = None
    ) -> None:
        self.features = features
        self.grid = grid
        self.path = path
        self.shape = features.shape
        self.dtype = features.dtype
        self.device = features.device


class FeatureMIL(nn.Module):
    """A registered MIL head on bags of cached patch features (module docstring).

    Keeps the engine's :class:`~gigastream.train.module.MILModel` contract; its trunk
    group is empty (the encoder ran once, before training).

    Args:
        feature_dim: ``D`` of the features.
        head: a registered MIL head (:func:`~gigastream.mil.heads.list_mil_heads`).
        num_classes: slide classes (>= 2), or 1 (a regression's one output).
        head_options: the head's options.

    Raises:
        ValueError: ``feature_dim`` < 1, an unknown head or bad head options.
    """

    def __init__(
        self,
        feature_dim: int,
        head: str = "abmil",
        num_classes: int = 2,
        head_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if feature_dim is None or feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {feature_dim}")
        self.feature_dim = int(feature_dim)
        self.head = create_mil_head(head, self.feature_dim, num_classes, **(head_options or {}))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """An empty ``trunk`` group and the ``head`` parameters."""
        return {"trunk": [], "head": list(self.head.parameters())}

    def _features(self, bag: FeatureBag | Tensor) -> Tensor:
        """The bag's ``(N, D)`` features in the head's dtype; a wrong dimension is an error."""
        features = bag.features if isinstance(bag, FeatureBag) else bag
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            got = tuple(features.shape)
            if isinstance(bag, FeatureBag) and features.dim() == 2:
                raise FeatureFileError(
                    f"{bag.path}: features of dimension {got[1]}, but the model expects "
                    f"{self.feature_dim}; use feature files of the encoder the model was "
                    "trained on"
                )
            raise ValueError(
                f"FeatureMIL takes a bag of (N, {self.feature_dim}) features, got {got}"
            )
        dtype = next((p.dtype for p in self.head.parameters()), features.dtype)
        return features.to(dtype) if features.dtype != dtype else features

    def forward(self, bag: FeatureBag | Tensor, label: Tensor | int | None = None) -> PatchOutput:
        """Classify one bag of features ``(N, D)`` (a tensor or a :class:`FeatureBag`);
        ``label`` as for the head.

        Raises:
            FeatureFileError: a :class:`FeatureBag` of another dimension (naming its file
                and both dimensions).
            ValueError: a tensor that is not ``(N, feature_dim)``.
        """
        features = self._features(bag)  # (N, D)
        out = self.head(features, label=label)
        first = out.attention if out.attention.dim() == 1 else out.attention[0]  # (N,)
        grid = getattr(bag, "grid", None)
        attention_map = instances = None
        if grid is not None:
            attention_map, instances = attention_on_grid(grid, first)
        return PatchOutput(out.logits, out.attention, attention_map, instances, out)

    def loss(self, out: PatchOutput, label: Tensor | int) -> Tensor:
        """The head's training loss of one bag."""
        return self.head.loss(out.head_output, label)


__all__ = ["FeatureBag", "FeatureConfig", "FeatureMIL"]
