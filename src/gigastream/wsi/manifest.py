"""Slide manifests (CSV) and stratified patient-level k-fold splits.

A manifest is a CSV file with the columns ``slide_id,path,label`` and optionally
``case_id`` (patient; defaults to the slide id), ``split`` and ``mpp`` (the slide's
microns per pixel: overrides its file's metadata; slides with neither take a command's
``--slide-mpp``). Relative paths are relative to the manifest's folder. Label names are
mapped to indices in sorted order unless the caller fixes the order (e.g. the one stored
with a trained model). A slide id names the slide's files (masks, heatmaps, features), so
it may hold only letters, digits, ``.``, ``_`` and ``-`` and must not start with ``.``
(:data:`SLIDE_ID`). Manifests and splits files are UTF-8 text.

Example:
    >>> manifest = read_manifest("data/manifest.csv")  # doctest: +SKIP
    >>> manifest.label_to_index  # doctest: +SKIP
    {'negative': 0, 'positive': 1}
    >>> write_splits(manifest, "data/splits.csv", folds=5, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import logging
import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("slide_id", "path", "label")
OPTIONAL_COLUMNS = ("case_id", "split", "mpp")
SPLITS_COLUMNS = ("slide_id", "fold")

#: A slide id: it names files (``<slide_id>.png`` masks and heatmaps, ``.h5`` features), so
#: no path separators, no ``..``, no hidden files, nothing a file system may refuse.
SLIDE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")
SLIDE_ID_RULE = (
    "a slide_id names files, so it may hold only letters, digits, '.', '_' and '-', must "
    "not start with '.' and has at most 200 characters"
)


class ManifestError(ValueError):
    """A manifest has bad rows; ``errors`` lists every one of them."""

    def __init__(self, path: Path | str, errors: list[str]) -> None:
        self.errors = errors
        listing = "\n  ".join(errors)
        super().__init__(f"{path}: {len(errors)} problem(s) in the manifest:\n  {listing}")


class SplitsError(ManifestError):
    """A splits file cannot be used; the one-line message names the file, the column and
    the fix."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.errors = [problem]
        ValueError.__init__(self, f"{path}: {problem}")


def _read_text(path: Path) -> str:
    """The file's text, decoded as UTF-8 (a byte-order mark is dropped).

    Raises:
        ValueError: not UTF-8; the message gives the line and says to save it as UTF-8.
    """
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ValueError(
            f"line {line} is not UTF-8 text (byte 0x{data[exc.start]:02x}; latin-1/Windows "
            "encoding?): save it as UTF-8 (in Excel: CSV UTF-8)"
        ) from None


@dataclass(frozen=True)
class ManifestRow:
    """One slide of a manifest.

    Attributes:
        slide_id: unique name of the slide.
        path: the slide file (absolute, or as given when files are not checked).
        label: label name.
        case_id: patient/case the slide belongs to (splits never divide a case).
        split: optional split name from the manifest (e.g. ``train``/``test``).
        mpp: optional microns per pixel overriding the file's metadata.
    """

    slide_id: str
    path: Path
    label: str
    case_id: str
    split: str | None = None
    mpp: float | None = None


@dataclass
class Manifest:
    """The rows of a manifest and the label-name-to-index mapping.

    Attributes:
        rows: slides in file order.
        labels: label names; ``labels[i]`` has index ``i``.
    """

    rows: list[ManifestRow]
    labels: list[str] = field(default_factory=list)

    @property
    def label_to_index(self) -> dict[str, int]:
        """Mapping of label names to class indices (store it with the model)."""
        return {name: i for i, name in enumerate(self.labels)}

    def label_index(self, row: ManifestRow) -> int:
        """Class index of a row."""
        return self.label_to_index[row.label]

    def __len__(self) -> int:
        return len(self.rows)


def read_manifest(
    path: str | Path, labels: Sequence[str] | None = None, check_files: bool = True
) -> Manifest:
    """Read and validate a manifest CSV; every bad row is reported at once.

    Args:
        path: the CSV file.
        labels: the allowed label names in index order (e.g. from a trained model);
            by default the sorted set of labels in the file.
        check_files: report rows whose slide file does not exist.

    Returns:
        The manifest.

    Raises:
        ManifestError: a file that is not UTF-8, missing columns, or rows with a missing
            file, an empty or unknown label, an empty, duplicate or unsafe slide id
            (:data:`SLIDE_ID`), or an mpp that is not a positive number (all listed).
        FileNotFoundError: the manifest itself does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    try:
        text = _read_text(path)
    except ValueError as exc:
        raise ManifestError(path, [str(exc)]) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ManifestError(
            path, [f"missing column(s) {', '.join(missing)} (have: {', '.join(columns)})"]
        )
    records = [{(k or "").strip(): (v or "").strip() for k, v in rec.items()} for rec in reader]

    allowed = list(labels) if labels is not None else None
    errors: list[str] = []
    rows: list[ManifestRow] = []
    first_line: dict[str, int] = {}
    for line, rec in enumerate(records, start=2):  # line 1 is the header
        problems = []
        slide_id, label = rec.get("slide_id", ""), rec.get("label", "")
        if not slide_id:
            problems.append("empty slide_id")
        elif slide_id in first_line:
            problems.append(
                f"duplicate slide_id {slide_id!r} (first on line {first_line[slide_id]})"
            )
        else:
            first_line[slide_id] = line
            if not SLIDE_ID.fullmatch(slide_id):
                problems.append(f"slide_id {slide_id!r}: {SLIDE_ID_RULE}")
        if not label:
            problems.append("empty label")
        elif allowed is not None and label not in allowed:
            problems.append(f"unknown label {label!r} (allowed: {', '.join(allowed)})")
        slide_path = Path(rec.get("path", ""))
        if not rec.get("path"):
            problems.append("empty path")
        else:
            if not slide_path.is_absolute():
                slide_path = path.parent / slide_path
            if check_files and not slide_path.exists():
                problems.append(f"file not found: {slide_path}")
        mpp = None
        if rec.get("mpp"):
            try:
                mpp = float(rec["mpp"])
            except ValueError:
                mpp = math.nan
            if not (math.isfinite(mpp) and mpp > 0):
                problems.append(f"mpp must be a positive number, got {rec['mpp']!r}")
        if problems:
            errors.append(f"line {line} ({slide_id or '?'}): " + "; ".join(problems))
            continue
        rows.append(
            ManifestRow(
                slide_id,
                slide_path,
                label,
                rec.get("case_id") or slide_id,
                rec.get("split") or None,
                mpp,
            )
        )
    if not records:
        errors.append("no rows")
    if errors:
        raise ManifestError(path, errors)
    names = allowed if allowed is not None else sorted({r.label for r in rows})
    logger.info("%s: %d slides, labels %s", path, len(rows), names)
    return Manifest(rows, list(names))


def write_manifest(path: str | Path, rows: Sequence[ManifestRow]) -> Path:
    """Write rows as a manifest CSV (paths relative to its folder when inside it)."""
    path = Path(path)
    base = path.parent.resolve()
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS])
        for row in rows:
            slide_path = Path(row.path).resolve()  # relative paths: to the working directory
            try:
                slide_path = slide_path.relative_to(base)
            except ValueError:
                pass  # outside the manifest's folder: absolute
            writer.writerow(
                [
                    row.slide_id,
                    slide_path.as_posix(),
                    row.label,
                    row.case_id,
                    row.split or "",
                    "" if row.mpp is None else repr(row.mpp),
                ]
            )
    return path


def stratified_folds(manifest: Manifest, folds: int = 5, seed: int = 0) -> dict[str, int]:
    """Assign every case (patient) to one of ``folds`` folds, stratified by label.

    All slides of a case land in the same fold. A case is stratified by its most frequent
    label. Within each label, cases are shuffled (seeded) and dealt to the fold with the
    fewest slides of that label so far, so folds get similar label proportions.

    Returns:
        Mapping of slide id to fold index.

    Raises:
        ValueError: fewer cases than folds, or ``folds < 2``.
    """
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    slides_of: dict[str, list[ManifestRow]] = defaultdict(list)
    for row in manifest.rows:
        slides_of[row.case_id].append(row)
    if len(slides_of) < folds:
        raise ValueError(
            f"{len(slides_of)} cases cannot fill {folds} folds: every fold needs at least one "
            f"case (patient; the slides of a case stay together): ask for at most "
            f"{len(slides_of)} folds, or add cases"
        )
    strata: dict[str, list[str]] = defaultdict(list)
    for case, rows in sorted(slides_of.items()):
        counts = Counter(r.label for r in rows)
        strata[min(counts, key=lambda name: (-counts[name], name))].append(case)
    rng = random.Random(seed)
    fold_of_case: dict[str, int] = {}
    total = [0] * folds
    for label in sorted(strata):
        cases = strata[label]
        rng.shuffle(cases)
        cases.sort(key=lambda c: -len(slides_of[c]))  # big cases first, stable after shuffle
        in_stratum = [0] * folds
        for case in cases:
            fold = min(range(folds), key=lambda f: (in_stratum[f], total[f], f))
            fold_of_case[case] = fold
            in_stratum[fold] += len(slides_of[case])
            total[fold] += len(slides_of[case])
    return {row.slide_id: fold_of_case[row.case_id] for row in manifest.rows}


def write_splits(
    manifest: Manifest,
    path: str | Path,
    folds: int = 5,
    seed: int = 0,
    strata: Sequence[str] | None = None,
) -> Path:
    """Write stratified patient-level folds as CSV ``slide_id,case_id,label,fold``.

    Args:
        strata: what to stratify by, one per row (default: the labels; a regression's
            slides: their value's quantile stratum).
    """
    if strata is not None:
        rows = [replace(r, label=st) for r, st in zip(manifest.rows, strata, strict=True)]
        fold_of = stratified_folds(Manifest(rows, manifest.labels), folds, seed)
    else:
        fold_of = stratified_folds(manifest, folds, seed)
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide_id", "case_id", "label", "fold"])
        for row in manifest.rows:
            writer.writerow([row.slide_id, row.case_id, row.label, fold_of[row.slide_id]])
    logger.info("wrote %d-fold splits of %d slides to %s", folds, len(manifest), path)
    return path


def read_splits(path: str | Path) -> dict[str, int]:
    """Read a splits CSV written by :func:`write_splits`: slide id to fold.

    Raises:
        SplitsError: the file is missing or not UTF-8, lacks the ``slide_id`` or ``fold``
            column, or a fold is not an integer (one line naming the file, the column and
            the line).
    """
    path = Path(path)
    fix = "re-create it with gigastream splits"
    if not path.is_file():
        raise SplitsError(path, f"splits file not found; {fix}")
    try:
        text = _read_text(path)
    except ValueError as exc:
        raise SplitsError(path, str(exc)) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in SPLITS_COLUMNS if c not in columns]
    if missing:
        raise SplitsError(
            path,
            f"no {' or '.join(repr(c) for c in missing)} column (have: {', '.join(columns)}); "
            f"a splits file has the columns slide_id,case_id,label,fold: {fix}",
        )
    fold_of: dict[str, int] = {}
    for line, rec in enumerate(reader, start=2):  # line 1 is the header
        rec = {(k or "").strip(): (v or "").strip() for k, v in rec.items()}
        try:
            fold_of[rec["slide_id"]] = int(rec["fold"])
        except ValueError:
            raise SplitsError(
                path, f"line {line}: column 'fold' must be an integer, got {rec['fold']!r}; {fix}"
            ) from None
    return fold_of
