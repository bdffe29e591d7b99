"""gigastream.train: the one training engine (PyTorch Lightning) and the run layer.

- :mod:`~gigastream.train.module`: :class:`MILClassifier`, the LightningModule that trains any
  MIL model (a streamed slide classifier or a bag model) one slide/bag per step;
- :mod:`~gigastream.train.trainer`: the one Lightning ``Trainer`` factory;
- :mod:`~gigastream.train.config`: the run configuration (dataclasses, YAML, typo checks);
- :mod:`~gigastream.train.data`: slides as examples, label checks, splits, DataLoaders;
- :mod:`~gigastream.train.patch_data`: slides as bags of tissue patches (``model.kind: patches``);
- :mod:`~gigastream.train.preparation`: ``prepare`` (validate a run before writing anything);
- :mod:`~gigastream.train.fitting`: ``fit`` (train a run folder), ``check_out``;
- :mod:`~gigastream.train.recorder`: ``metrics.json`` kept true, SIGTERM/SIGINT;
- :mod:`~gigastream.train.calibration`: the trunk's BatchNorm calibrated on slides;
- :mod:`~gigastream.train.prediction`: ``load_classifier`` (a model from its checkpoint
  alone), ``evaluate_manifest``, ``predict_slide_files``;
- :mod:`~gigastream.train.heatmaps`: attention heatmaps of predicted slides;
- :mod:`~gigastream.train.crossval`: ``fit_folds`` (one run per fold);
- :mod:`~gigastream.train.dry_run`: ``train --dry-run``'s plan and cost report;
- :mod:`~gigastream.train.files`: atomic writes, the run lock, checkpoint loading.

The public names below are imported on use (Lightning is not imported by
``import gigastream.train``).

Example:
    >>> from gigastream.train import fit, load_config  # doctest: +SKIP
    >>> metrics = fit(load_config("run.yaml"), "runs/first")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "ConfigError": "gigastream.train.config",
    "RunConfig": "gigastream.train.config",
    "load_config": "gigastream.train.config_files",
    "prepare": "gigastream.train.preparation",
    "fit": "gigastream.train.fitting",
    "fit_folds": "gigastream.train.crossval",
    "load_classifier": "gigastream.train.prediction",
    "evaluate_manifest": "gigastream.train.prediction",
    "predict_slide_files": "gigastream.train.prediction",
    "RunError": "gigastream.train.files",
    "RunInterrupted": "gigastream.train.recorder",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'gigastream.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
