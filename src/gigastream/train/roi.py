"""Regions of interest: training instances restricted to annotated regions (``--roi DIR``,
``data.roi_dir``).

Each slide's ROI is its annotation file ``DIR/<slide_id>.xml`` (ASAP/CAMELYON) or
``.geojson`` / ``.json`` (QuPath): the union of its regions of every class but the
exclusion classes, minus the exclusions
(:meth:`~gigastream.wsi.annotations.Annotations.geometry`). :func:`restrict_to_roi`
intersects the slide's tissue mask with it, so a streamed model's instances (and the input
pixels it reads, with ``data.mask_input``) and a patch model's patches lie inside the ROI;
:func:`~gigastream.train.data.slide_tissue_mask` does it for every slide of a run with
``data.roi_dir`` and keys the cached mask by the ROI file's content
(:func:`roi_identity`). :func:`check_roi_files` checks before any work that every slide
has a readable ROI file that is not empty.

Example:
    >>> check_roi_files("rois", ["s1", "s2"])  # doctest: +SKIP
    >>> tissue = restrict_to_roi(tissue, slide, "s1", "rois")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gigastream.train.config import ConfigError
from gigastream.wsi.annotation_readers import (
    ANNOTATION_SUFFIXES,
    find_annotation,
    read_annotation_folder,
    read_annotations,
)
from gigastream.wsi.annotations import AnnotationError
from gigastream.wsi.reader import SlideError, SlideReader
from gigastream.wsi.tissue import NoTissueError, TissueMask

_NAMES = "/".join(ANNOTATION_SUFFIXES)


def roi_file(roi_dir: str | Path, slide_id: str) -> Path:
    """The ROI file of a slide (:func:`~gigastream.wsi.annotation_readers.find_annotation`).

    Raises:
        SlideError: there is none, or there are two (the slide is skipped and listed).
    """
    try:
        path = find_annotation(roi_dir, slide_id)
    except AnnotationError as exc:
        raise SlideError(f"{slide_id}: {exc}") from None
    if path is None:
        raise SlideError(f"{slide_id}: no ROI file {slide_id}{_NAMES} in {roi_dir}")
    return path


def roi_identity(roi_dir: str | Path, slide_id: str) -> dict[str, Any] | None:
    """What a slide's ROI is, for the tissue mask cache key: its file's resolved path and
    the SHA-256 of its content (an edited file is a new ROI, whatever its name and mtime);
    ``None`` when the file is missing or unreadable."""
    try:
        path = roi_file(roi_dir, slide_id)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except (SlideError, OSError):
        return None
    return {"file": str(path.resolve()), "sha256": digest}


def restrict_to_roi(
    tissue: TissueMask, slide: SlideReader, slide_id: str, roi_dir: str | Path
) -> TissueMask:
    """A tissue mask intersected with the slide's ROI, rasterised on the mask's own grid
    (pixel centres at its mpp; exclusions subtracted).

    Raises:
        SlideError: no ROI file, a malformed one (its one-line message), or no tissue inside
            the ROI (NoTissueError): the slide is skipped and listed.
    """
    path = roi_file(roi_dir, slide_id)
    try:
        roi = read_annotations(path).mask(mpp=tissue.mpp, slide=slide)
    except (AnnotationError, ValueError) as exc:
        raise SlideError(f"{slide_id}: ROI {exc}") from None
    inside = roi.mask
    if inside.shape != tissue.mask.shape:  # rounding of the two grids' sizes
        inside = roi.resize(tissue.mask.shape)
    restricted = TissueMask(tissue.mask & inside, tissue.mpp)
    if not restricted.mask.any():
        raise NoTissueError(
            f"{slide_id}: no tissue inside the ROI {path} (the ROI covers "
            f"{roi.tissue_fraction:.2%} of the slide); check the file or its coordinates "
            "(level-0 pixels)"
        )
    return restricted


def check_roi_files(roi_dir: str | Path, slide_ids: Iterable[str], flag: str = "--roi") -> None:
    """Check before any work that every slide has one readable, non-empty ROI file.

    Raises:
        ConfigError: slides without an ROI file, or with one without any region (listed).
        AnnotationError: ``roi_dir`` is not a folder, or a file is malformed (naming it).
    """
    ids = list(dict.fromkeys(slide_ids))
    notes = read_annotation_folder(roi_dir, ids, flag)
    missing = [s for s in ids if s not in notes]
    if missing:
        shown = ", ".join(missing[:10]) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        raise ConfigError(
            f"{flag} {roi_dir}: no ROI file <slide_id>{_NAMES} for {len(missing)} of the "
            f"{len(ids)} slides: {shown}; add their files (or drop {flag})"
        )
    empty = [s for s, a in notes.items() if a.geometry().is_empty]
    if empty:
        raise ConfigError(
            f"{flag} {roi_dir}: the ROI files of {', '.join(empty[:10])} hold no region (only "
            "points, lines or exclusions); fix them (or drop those slides)"
        )


__all__ = ["check_roi_files", "restrict_to_roi", "roi_file", "roi_identity"]
