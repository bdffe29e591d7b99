"""The DataLoader of a run's slides: whole slides, their patch bags for patch models, or
their cached features for feature models (``data.features_dir``).

Example:
    >>> loader = slide_loader(rows, ["benign", "malignant"], DataConfig(), seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import DataLoader, Dataset

from gigastream.models.patch_mil import PatchConfig
from gigastream.train.config import DataConfig
from gigastream.train.data import SlideExamples, example_loader
from gigastream.train.feature_data import FeatureExamples
from gigastream.train.patch_data import PatchExamples
from gigastream.wsi.manifest import ManifestRow


def slide_loader(
    rows: Sequence[ManifestRow],
    class_names: Sequence[str],
    data: DataConfig,
    seed: int = 0,
    shuffle: bool = False,
    balanced: bool = False,
    patches: PatchConfig | None = None,
) -> DataLoader:
    """A DataLoader of the slides in ``rows`` (workers as configured in ``data``): whole
    slides (:class:`~gigastream.train.data.SlideExamples`), with ``patches`` their patch bags
    (:class:`~gigastream.train.patch_data.PatchExamples`), or with ``data.features_dir``
    their cached features (:class:`~gigastream.train.feature_data.FeatureExamples`)."""
    workers = min(data.num_workers, len(rows))
    if data.features_dir is not None:
        dataset: Dataset = FeatureExamples(rows, class_names, data)
    elif patches is None:
        dataset = SlideExamples(rows, class_names, data)
    else:
        dataset = PatchExamples(rows, class_names, data, patches)
    return example_loader(dataset, workers, seed, shuffle, balanced)


__all__ = ["slide_loader"]
