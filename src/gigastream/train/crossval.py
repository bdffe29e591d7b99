"""Cross-validation: one run per fold of a splits file, and the mean ± sd of their AUCs.

Example:
    >>> config = load_config("run.yaml", {"manifest": "m.csv", "splits": "s.csv"})  # doctest: +SKIP
    >>> summary = fit_folds(config, "runs/cv")  # doctest: +SKIP
    >>> summary["val_auc_mean"], summary["val_auc_sd"]  # doctest: +SKIP
    (0.88, 0.04)
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from gigastream.train.config import ConfigError, RunConfig
from gigastream.train.files import check_writable_folder, write_json
from gigastream.train.fitting import fit
from gigastream.train.metrics import mean_sd
from gigastream.train.preparation import prepare
from gigastream.wsi.manifest import read_splits


def fit_folds(config: RunConfig, out: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Train every fold of ``config.splits`` into ``out/fold_K``; mean ± sd of the final AUCs.

    Every fold is validated before any is trained. Writes ``out/cv_metrics.json``.

    Args:
        config: the run (``splits`` set; ``fold`` is replaced by each fold in turn).
        out: the folder of the fold runs.
        **kwargs: passed on to :func:`~gigastream.train.fitting.fit` (``resume``,
            ``overwrite``, ...).

    Returns:
        ``folds`` (``fold``, ``val_auc``, ``best_epoch_auc`` each), ``val_auc_mean`` and
        ``val_auc_sd``.

    Raises:
        ConfigError: no splits file, or a fold that does not validate.
    """
    if config.splits is None:
        raise ConfigError("--folds all needs --splits S.csv (written by gigastream splits)")
    folds = sorted(set(read_splits(config.splits).values()))
    for fold in folds:  # validate every fold before training any
        prepare(replace(config, fold=fold), check_plan=fold == folds[0])
    out = check_writable_folder(out)
    rows = []
    for fold in folds:
        metrics = fit(replace(config, fold=fold), out / f"fold_{fold}", **kwargs)
        best = max((e["val_auc"] or -1.0 for e in metrics["epochs"]), default=math.nan)
        rows.append({"fold": fold, "val_auc": metrics["final"]["val_auc"], "best_epoch_auc": best})
    mean, sd = mean_sd([r["val_auc"] for r in rows])
    summary = {"folds": rows, "val_auc_mean": mean, "val_auc_sd": sd}
    write_json(out / "cv_metrics.json", summary)
    return summary


__all__ = ["fit_folds"]
