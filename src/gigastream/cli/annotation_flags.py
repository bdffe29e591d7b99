"""Annotation options of the commands, declared once: ``--roi DIR`` (``train``, ``features``)
and ``--tumour-classes`` (``evaluate``, ``heatmap``, with their ``--annotations DIR``).

Example:
    >>> parser = argparse.ArgumentParser()
    >>> add_tumour_classes(parser)
    >>> tumour_classes(parser.parse_args([]))[:2]
    ('_0', '_1')
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_roi(parser: argparse.ArgumentParser, what: str = "train") -> None:
    """``--roi DIR``: region-of-interest annotation files that restrict the training
    instances (``data.roi_dir``); ``what`` is done only inside them (``train``, ``extract
    patch features``)."""
    parser.add_argument(
        "--roi",
        type=Path,
        metavar="DIR",
        help=f"{what} only inside annotated regions: DIR/<slide_id>.xml (ASAP/CAMELYON) or "
        ".geojson (QuPath), every class but exclusions, minus exclusions, intersected with "
        "the tissue mask; every slide needs a file (data.roi_dir)",
    )


def add_tumour_classes(parser: argparse.ArgumentParser, slides: bool = False) -> None:
    """``--tumour-classes NAME [NAME ...]``: the annotation classes that are tumour
    (with ``--annotations DIR``; check it with :func:`tumour_classes`); ``slides``: the
    command also takes SLIDE files (which must come before it)."""
    from gigastream.wsi.annotations import TUMOUR_CLASSES

    before = "put SLIDE files before it; " if slides else ""
    parser.add_argument(
        "--tumour-classes",
        nargs="+",
        metavar="NAME",
        help="the classes of the --annotations files that are tumour (case-insensitive; a "
        f"quoted 'Name*' matches a prefix; exclusions are subtracted; {before}default: "
        f"{' '.join(TUMOUR_CLASSES)})",
    )


def tumour_classes(args: argparse.Namespace) -> tuple[str, ...]:
    """The tumour classes of a command line: ``--tumour-classes``, else the default
    :data:`~gigastream.wsi.annotations.TUMOUR_CLASSES`.

    Raises:
        ValueError: ``--tumour-classes`` without ``--annotations``, an empty name, or a name
            that is a file (a SLIDE taken as a class name; one line each).
    """
    from gigastream.wsi.annotations import TUMOUR_CLASSES, check_classes

    given = getattr(args, "tumour_classes", None)
    if given is None:
        return TUMOUR_CLASSES
    if getattr(args, "annotations", None) is None:
        raise ValueError(
            "--tumour-classes chooses the tumour classes of annotation files: add "
            "--annotations DIR (or drop --tumour-classes)"
        )
    classes = check_classes(given)
    files = [name for name in classes if Path(name).is_file()]
    if files:
        raise ValueError(
            f"--tumour-classes takes class names, got the file {files[0]}: put the SLIDE files "
            "before --tumour-classes"
        )
    return classes
