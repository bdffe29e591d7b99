"""Which slides a run uses, and with which labels: the class order (the positive class last)
or, for a regression run, the slides' numeric values; the training/validation split of a manifest (its ``split`` column, a splits file's fold, or a
stratified hold-out), and the checks that a split neither drops nor leaks slides.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from gigastream.train.config import ConfigError, RunConfig
from gigastream.wsi.manifest import Manifest, ManifestRow, read_splits, stratified_folds
from gigastream.wsi.reader import SlideError, SlideReader

logger = logging.getLogger(__name__)

TRAIN_SPLITS = ("train", "training")
VAL_SPLITS = ("val", "valid", "validation")
#: Split names of slides a run leaves out (e.g. a held-out test set).
OTHER_SPLITS = ("test", "testing", "holdout")
SPLITS = TRAIN_SPLITS + VAL_SPLITS + OTHER_SPLITS
#: ``evaluate --split``: the slides of :data:`VAL_SPLITS`, of :data:`OTHER_SPLITS` or all.
EVAL_SPLITS = ("val", "test", "all")


#: The class names of a regression run: its one output, the predicted value.
REGRESSION_OUTPUT = ["value"]
#: Quantile strata a regression run's slides are split by (fewer with fewer cases).
TARGET_STRATA = 4


def is_regression(class_names: Sequence[str]) -> bool:
    """Whether ``class_names`` are a regression run's (one output; a classifier has >= 2)."""
    return len(class_names) == 1


def parse_target(label: str | None) -> float | None:
    """The number a regression label holds (``None``: empty, or not a finite number)."""
    if label is None:
        return None
    try:
        value = float(str(label).strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class LabelIndex:
    """A slide's training target from its manifest label: the class index of a
    classification run, the number of a regression run's label; ``None`` when the label is
    not one (unlabelled slides are predicted, not trained on).

    Example:
        >>> LabelIndex(["benign", "tumour"]).get("tumour"), LabelIndex(["value"]).get("2.5")
        (1, 2.5)
    """

    def __init__(self, class_names: Sequence[str]) -> None:
        self.regression = is_regression(class_names)
        self.index = {name: i for i, name in enumerate(class_names)}

    def get(self, label: str | None) -> int | float | None:
        if self.regression:
            return parse_target(label)
        return self.index.get(label)


def check_targets(rows: Sequence[ManifestRow], manifest: str | Path | None = None) -> list[str]:
    """The class names of a regression run (:data:`REGRESSION_OUTPUT`) after checking that
    every slide's label is a finite number.

    Raises:
        ConfigError: labels that are not numbers (listed with their slides), or fewer than
            two distinct values (nothing to learn).

    Example:
        >>> check_targets([ManifestRow("a", "a.tif", "0.5", "a"), ManifestRow("b", "b.tif", "3", "b")])
        ['value']
    """
    bad = [f"{r.slide_id} ({r.label!r})" for r in rows if parse_target(r.label) is None]
    if bad:
        raise ConfigError(
            f"{manifest or 'the manifest'}: task regression needs a number in the label column; "
            f"{len(bad)} slide(s) have none: {_some(bad)}; fix those labels (or use "
            "--task classification for class labels)"
        )
    values = sorted({parse_target(r.label) for r in rows})
    if len(values) < 2:
        raise ConfigError(
            f"{manifest or 'the manifest'}: every slide has the value {values[0] if values else '?'}; "
            "a regression needs at least two distinct values"
        )
    return list(REGRESSION_OUTPUT)


def target_scale(rows: Sequence[ManifestRow]) -> tuple[float, float]:
    """Mean and standard deviation (population; 1 when constant) of the slides' values."""
    values = [v for v in (parse_target(r.label) for r in rows) if v is not None]
    if not values:
        return 0.0, 1.0
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return mean, std if std > 0 else 1.0


def target_strata(rows: Sequence[ManifestRow], strata: int = TARGET_STRATA) -> list[ManifestRow]:
    """``rows`` with each label replaced by its quantile stratum (``q1`` .. ``qK`` of the
    values, K at most ``strata`` and at most a quarter of the slides), for splitting a
    regression run's slides with :func:`~gigastream.wsi.manifest.stratified_folds`
    (folds then get similar spreads of values). A row without a number keeps its label."""
    values = sorted(v for v in (parse_target(r.label) for r in rows) if v is not None)
    count = max(1, min(strata, len(values) // 4))
    edges = [values[min(len(values) - 1, (len(values) * k) // count)] for k in range(1, count)]
    resolved = []
    for row in rows:
        value = parse_target(row.label)
        if value is not None:
            row = dataclasses.replace(row, label=f"q{1 + sum(value >= e for e in edges)}")
        resolved.append(row)
    return resolved


def _label_key(label: str) -> str:
    return " ".join(label.split()).casefold()


def check_labels(
    labels: Sequence[str], class_names: Sequence[str] | None, positive_class: str | None = None
) -> list[str]:
    """The class names of a run, after checking the labels of its slides.

    Args:
        labels: the label of every slide.
        class_names: the configured classes in index order, or ``None`` (then the sorted
            distinct labels).
        positive_class: the class a binary AUC is of (``RunConfig.positive_class``): moved
            to the end of the class order (a binary AUC is of the last class); ``None``:
            the order stands.

    Returns:
        The class names in index order.

    Raises:
        ConfigError: labels not among ``class_names`` (each with the closest class name),
            labels that differ only in case or spacing, fewer than two classes, or a
            ``positive_class`` that is not a class (with the closest one). One error lists
            every offending label.

    Example:
        >>> check_labels(["cancer", "normal", "cancer"], None)
        ['cancer', 'normal']
        >>> check_labels(["cancer", "normal", "cancer"], None, positive_class="cancer")
        ['normal', 'cancer']
    """
    return positive_last(_class_names(labels, class_names), positive_class)


def positive_last(class_names: Sequence[str], positive_class: str | None) -> list[str]:
    """``class_names`` with ``positive_class`` moved last (``None``: unchanged).

    Raises:
        ConfigError: ``positive_class`` is not one of ``class_names`` (with the closest).
    """
    names = list(class_names)
    if positive_class is None:
        return names
    if positive_class not in names:
        close = [n for n in names if _label_key(n) == _label_key(positive_class)]
        close = close or difflib.get_close_matches(positive_class, names, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"positive_class {positive_class!r} is not one of the labels {names}{hint}; set "
            "--positive-class (positive_class:) to one of them (labels are case- and "
            "space-sensitive)"
        )
    return [n for n in names if n != positive_class] + [positive_class]


def _class_names(labels: Sequence[str], class_names: Sequence[str] | None) -> list[str]:
    """The checked class names of :func:`check_labels`, before the positive class is moved."""
    distinct = sorted(set(labels))
    if class_names is not None:
        names = list(class_names)
        keys = [_label_key(n) for n in names]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"class_names {names} holds names that differ only in case/spacing")
        bad = [lab for lab in distinct if lab not in names]
        if bad:
            parts = []
            for lab in bad:
                close = [n for n in names if _label_key(n) == _label_key(lab)]
                close = close or difflib.get_close_matches(lab, names, n=1, cutoff=0.6)
                parts.append(f"{lab!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(
                f"{len(bad)} label(s) not in the configured classes {names}: {', '.join(parts)}; "
                "fix the manifest's label column (labels are case- and space-sensitive)"
            )
        return names
    groups: dict[str, list[str]] = {}
    for lab in distinct:
        groups.setdefault(_label_key(lab), []).append(lab)
    clashes = [spellings for spellings in groups.values() if len(spellings) > 1]
    if clashes:
        listing = "; ".join(" vs ".join(repr(s) for s in group) for group in clashes)
        raise ConfigError(
            f"labels that differ only in case or spacing: {listing}; make them identical in "
            "the manifest, or set class_names in the config"
        )
    if len(distinct) < 2:
        raise ConfigError(
            f"the slides have {len(distinct)} distinct label(s) {distinct}; a classifier needs "
            "at least two classes"
        )
    return distinct


def split_rows(
    manifest: Manifest, config: RunConfig
) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """Training and validation slides of a run.

    In order of preference: a splits file and fold (``gigastream splits``), the manifest's
    ``split`` column (``train``/``training`` vs ``val``/``valid``/``validation``;
    ``test``/``testing``/``holdout`` are left out; case-insensitive), or fold 0 of
    ``round(1 / val_fraction)`` stratified patient-level folds. With ``data.slide_mpp``,
    the rows of slides without an mpp of their own get it (:func:`with_slide_mpp`).

    Raises:
        ConfigError: slides missing from the splits file, split values that are none of
            the above (each with the closest valid one), the same slide file (resolved
            path) in training and validation (a leak), an empty side, or (without splits)
            fewer cases than ``train.val_fraction`` needs (saying how many).
    """
    rows = with_slide_mpp(manifest.rows, config.data.slide_mpp, config.data.backend)
    if config.splits is not None:
        fold_of = read_splits(config.splits)
        missing = [r.slide_id for r in rows if r.slide_id not in fold_of]
        if missing:
            raise ConfigError(
                f"{config.splits}: {len(missing)} slide(s) of the manifest have no fold "
                f"({', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}); "
                "re-create it with gigastream splits"
            )
        folds = sorted(set(fold_of.values()))
        if config.fold not in folds:
            raise ConfigError(f"--fold {config.fold} is not in {config.splits} (folds {folds})")
        train = [r for r in rows if fold_of[r.slide_id] != config.fold]
        val = [r for r in rows if fold_of[r.slide_id] == config.fold]
    elif any(r.split for r in rows):
        check_split_names(rows, config.manifest)
        train = [r for r in rows if (r.split or "").lower() in TRAIN_SPLITS]
        val = [r for r in rows if (r.split or "").lower() in VAL_SPLITS]
    else:
        folds = max(2, round(1 / config.train.val_fraction))
        _check_enough_cases(rows, folds, config)
        strata = target_strata(rows) if config.task == "regression" else rows
        fold_of = stratified_folds(
            Manifest(strata, manifest.labels), folds=folds, seed=config.train.seed
        )
        train = [r for r in rows if fold_of[r.slide_id] != 0]
        val = [r for r in rows if fold_of[r.slide_id] == 0]
    if not train or not val:
        raise ConfigError(
            f"need training and validation slides, got {len(train)} and {len(val)} of "
            f"{len(rows)} (check the split column / splits file)"
        )
    _check_no_leak(train, val)
    return train, val


def _check_enough_cases(rows: Sequence[ManifestRow], folds: int, config: RunConfig) -> None:
    """ConfigError saying how many cases a hold-out of ``train.val_fraction`` needs (one per
    fold of ``round(1 / val_fraction)``) and what to change, when the manifest has fewer
    and neither a split column nor a splits file."""
    cases = len({r.case_id for r in rows})
    if cases >= folds:
        return
    if cases >= 2:
        fix = (
            f"set train.val_fraction to {1 / cases:.2g} (1 of the {cases} cases validates; "
            f"train: {{val_fraction: {1 / cases:.2g}}} in --config), give the manifest a split "
            "column (train/val) or pass --splits (gigastream splits), or add cases"
        )
    else:
        fix = "a run needs at least 2 cases (one to train on, one to validate): add slides"
    raise ConfigError(
        f"{config.manifest or 'the manifest'}: {len(rows)} slide(s) of {cases} case(s) and "
        f"no split column or splits file: holding out train.val_fraction "
        f"{config.train.val_fraction:g} of the cases for validation needs at least {folds} "
        f"cases (1 in {folds}; the slides of a case stay together); {fix}"
    )


def with_slide_mpp(
    rows: Sequence[ManifestRow], slide_mpp: float | None, backend: str = "auto"
) -> list[ManifestRow]:
    """``rows`` with ``mpp = slide_mpp`` for each slide that has no mpp of its own: none in
    its row (the manifest's ``mpp`` column) and none in its file's metadata.

    Each row without an mpp is opened once (metadata only) to see; a slide that cannot be
    opened keeps its row (it is reported when it is read). ``slide_mpp=None``: ``rows``.

    Example:
        >>> rows = with_slide_mpp(read_manifest("m.csv").rows, 0.5)  # doctest: +SKIP
    """
    if slide_mpp is None:
        return list(rows)
    resolved = []
    for row in rows:
        if row.mpp is None and not _has_own_mpp(row.path, backend):
            row = dataclasses.replace(row, mpp=float(slide_mpp))
        resolved.append(row)
    return resolved


def _has_own_mpp(path: str | Path, backend: str) -> bool:
    """Whether the slide file states its mpp (an unreadable one counts as stating it)."""
    try:
        with SlideReader.open(path, backend=backend) as slide:
            return slide.mpp is not None
    except SlideError:
        return True  # reported, with its reason, when the slide is read


def _some(names: Sequence[str], shown: int = 3) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def check_split_names(rows: Sequence[ManifestRow], manifest: str | Path | None) -> None:
    """ConfigError listing every split value that is not in :data:`SPLITS` (with its slides
    and the closest valid value): a typo would drop its slides silently."""
    unknown: dict[str, list[str]] = {}
    for row in rows:
        if row.split and row.split.lower() not in SPLITS:
            unknown.setdefault(row.split, []).append(row.slide_id)
    if not unknown:
        return
    parts = []
    for value, slide_ids in unknown.items():
        close = difflib.get_close_matches(value.lower(), SPLITS, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        parts.append(f"{value!r} ({_some(slide_ids)}{hint})")
    raise ConfigError(
        f"{manifest or 'the manifest'}: unknown split value(s) {', '.join(parts)}; the split "
        f"column takes {'/'.join(TRAIN_SPLITS)}, {'/'.join(VAL_SPLITS)} or "
        f"{'/'.join(OTHER_SPLITS)} (left out): fix the manifest"
    )


def _check_no_leak(train: Sequence[ManifestRow], val: Sequence[ManifestRow]) -> None:
    """ConfigError naming both slide ids when one slide file (resolved path) is both a
    training and a validation slide."""
    training: dict[Path, str] = {}
    for row in train:
        training.setdefault(Path(row.path).resolve(), row.slide_id)
    leaks = []
    for row in val:
        path = Path(row.path).resolve()
        if path in training:
            leaks.append(
                f"{training[path]!r} (training) and {row.slide_id!r} (validation) are both {path}"
            )
    if leaks:
        raise ConfigError(
            f"the same slide file is a training and a validation slide (a train/val leak): "
            f"{_some(leaks)}; remove the duplicate row (or give it its own file)"
        )


__all__ = [
    "EVAL_SPLITS",
    "REGRESSION_OUTPUT",
    "LabelIndex",
    "check_targets",
    "is_regression",
    "parse_target",
    "target_scale",
    "target_strata",
    "OTHER_SPLITS",
    "SPLITS",
    "TRAIN_SPLITS",
    "VAL_SPLITS",
    "check_labels",
    "check_split_names",
    "positive_last",
    "split_rows",
    "with_slide_mpp",
]
