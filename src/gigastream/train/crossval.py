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
from gigastream.train.regression import REGRESSION_METRICS
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
        ``val_auc_sd``; a regression run (``task: regression``): ``val_<m>`` per fold and
        ``val_<m>_mean`` / ``val_<m>_sd`` of every regression metric (Spearman, Pearson,
        MAE, RMSE, R²), and ``best_epoch_spearman``.

    Raises:
        ConfigError: no splits file, or a fold that does not validate.
    """
    if config.splits is None:
        raise ConfigError("--folds all needs --splits S.csv (written by gigastream splits)")
    folds = sorted(set(read_splits(config.splits).values()))
    for fold in folds:  # validate every fold before training any
        prepare(replace(config, fold=fold), check_plan=fold == folds[0])
    out = check_writable_folder(out)
    regression = config.task == "regression"
    names = REGRESSION_METRICS if regression else ("auc",)
    primary = names[0]
    rows = []
    for fold in folds:
        metrics = fit(replace(config, fold=fold), out / f"fold_{fold}", **kwargs)
        epochs = metrics["epochs"]
        best = max((e[f"val_{primary}"] or -1.0 for e in epochs), default=math.nan)
        row = {"fold": fold, **{f"val_{n}": metrics["final"][f"val_{n}"] for n in names}}
        rows.append({**row, f"best_epoch_{primary}": best})
    summary: dict[str, Any] = {"folds": rows}
    if regression:
        summary["task"] = "regression"
    for name in names:
        mean, sd = mean_sd([r[f"val_{name}"] for r in rows])
        summary.update({f"val_{name}_mean": mean, f"val_{name}_sd": sd})
    write_json(out / "cv_metrics.json", summary)
    return summary


__all__ = ["fit_folds"]
