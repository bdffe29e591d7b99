"""Attention heatmaps of predicted slides: the one path of training, ``predict`` and
``heatmap``.

:func:`write_heatmaps` draws the attention map of each predicted slide over the slide
(``<slide_id>.png``, optionally a pyramidal ``<slide_id>.tif``) with the ground-truth lesion
contours where a mask exists (:func:`lesion_mask_for`), untinted off the slide's tissue mask
(the one its prediction used, :func:`~gigastream.train.data.slide_tissue_mask`) and with a
micron scale bar; :func:`slide_heatmap` draws one slide; :func:`instance_cell_um` is the
size of one attention cell in microns. :func:`slide_labels` gives ``gigastream heatmap``
the slides' true labels (from a manifest or one ``--label``) for the titles
(:func:`~gigastream.train.prediction.predict_slide_files` with ``heatmaps=True``).

Example:
    >>> module, config = load_classifier("RUN/checkpoints/best.ckpt")  # doctest: +SKIP
    >>> results = run_predictions(module, rows, config)  # doctest: +SKIP
    >>> write_heatmaps(module, results, rows, Path("heatmaps"), config.data)  # doctest: +SKIP
    [PosixPath('heatmaps/synth_000.png'), ...]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gigastream.train.config import DataConfig
from gigastream.wsi.feature_files import read_attrs
from gigastream.wsi.manifest import ManifestRow
from gigastream.wsi.reader import SlideError, SlideReader

if TYPE_CHECKING:
    from gigastream.wsi.tissue import TissueMask

logger = logging.getLogger(__name__)


def lesion_mask_for(slide_path: str | Path, slide_id: str, lesion_dir: str | Path | None = None):
    """The ground-truth lesion mask of a slide, if one exists (else ``None``).

    Looked for as ``lesion_dir/<slide_id>.png`` or, for datasets written by ``gigastream
    synth``, ``<slide folder>/../lesions/<slide_id>.png``.
    """
    from gigastream.wsi.tissue import TissueMask

    candidates = []
    if lesion_dir is not None:
        candidates.append(Path(lesion_dir) / f"{slide_id}.png")
    candidates.append(Path(slide_path).parent.parent / "lesions" / f"{slide_id}.png")
    for path in candidates:
        if path.is_file():
            try:
                return TissueMask.load(path)
            except SlideError as exc:
                logger.warning("ignoring lesion mask %s: %s", path, exc)
    return None


def instance_cell_um(slide: SlideReader, mpp: float, output_stride: int) -> float:
    """Edge in microns of one instance (one cell of the attention map) of a slide read at ``mpp``.

    The slide is read from the level :meth:`SlideReader.resolution` picks and resampled;
    ``output_stride`` input pixels make one instance (``StreamingMIL.output_stride``; a
    patch model's ``patch_size``: its attention map is the patch grid, which starts at the
    slide's origin in cells of ``patch_size`` px at the read's exact mpp).
    """
    return output_stride * slide.resolution(mpp).mpp


def feature_cell_um(slide: SlideReader, features_path: str | Path) -> float | None:
    """Edge in microns of one patch of a feature file (a cell of a feature model's attention
    map, laid from the file's level-0 coords): its level-0 patch edge x the slide's mpp;
    ``None`` when the file does not give it (:func:`~gigastream.train.feature_data.level0_patch`)."""
    from gigastream.train.feature_data import level0_patch
    from gigastream.wsi.feature_files import read_features

    attrs = read_attrs(features_path)
    step = level0_patch(attrs)
    if step is None:
        step = level0_patch(attrs, read_features(features_path).coords)
    return None if step is None else step * slide.require_mpp()


def choose_slides(results: Sequence[dict[str, Any]], count: int | None) -> list[dict[str, Any]]:
    """Up to ``count`` results with an attention map, alternating between the classes
    (``None``: all of them)."""
    usable = [r for r in results if "attention_map" in r]
    if count is None:
        return usable
    by_class: dict[Any, list[dict[str, Any]]] = {}
    for r in usable:
        by_class.setdefault(r["label"], []).append(r)
    chosen: list[dict[str, Any]] = []
    while len(chosen) < min(count, len(usable)):
        for group in by_class.values():
            if group and len(chosen) < count:
                chosen.append(group.pop(0))
    return chosen


def slide_heatmap(
    slide: SlideReader,
    result: dict[str, Any],
    path: Path,
    cell_um: float,
    class_names: Sequence[str],
    lesions=None,
    heading: str = "",
    tiff: bool = False,
    tissue: TissueMask | None = None,
    opacity: float | None = None,
) -> list[Path]:
    """The attention heatmap PNG of one predicted slide at ``path`` (and a pyramidal TIFF
    next to it with ``tiff``).

    The title gives the slide's label and p(last class), under ``heading`` if given;
    ``lesions`` (a mask) are drawn as contours; off ``tissue`` (the slide's tissue mask,
    if given) the slide is left untinted; ``opacity`` (0-1) of the attention colours,
    default :data:`~gigastream.viz.heatmap.ATTENTION_OPACITY`.
    """
    from gigastream.viz import heatmap as hm
    from gigastream.viz.heatmap_tiff import attention_heatmap_tiff

    style = hm.HeatmapStyle.for_attention(
        hm.ATTENTION_OPACITY if opacity is None else hm.check_opacity(opacity)
    )
    label = None if result["label"] is None else class_names[result["label"]]
    title = hm.slide_title(result["slide_id"], label, float(result["probs"][-1]), class_names[-1])
    paths = [
        hm.attention_heatmap_png(
            slide,
            result["attention_map"],
            path,
            cell_um=cell_um,
            title=f"{heading}\n{title}" if heading else title,
            contours=lesions,
            style=style,
            tissue=tissue,
        )
    ]
    if tiff:
        paths.append(
            attention_heatmap_tiff(
                slide,
                result["attention_map"],
                path.with_suffix(".tif"),
                cell_um=cell_um,
                contours=lesions,
                style=style,
                tissue=tissue,
            )
        )
    return paths


def _tissue_mask(slide: SlideReader, slide_id: str, data: DataConfig) -> TissueMask | None:
    """The tissue mask the slide's prediction used (cached in ``data.mask_dir``, else
    computed, not saved), or ``None`` (with a warning) when it cannot be had."""
    from gigastream.train.data import slide_tissue_mask

    try:
        return slide_tissue_mask(slide, slide_id, data, save=False)
    except SlideError as exc:
        logger.warning("%s: heatmap tinted over the whole slide: no tissue mask: %s", slide_id, exc)
        return None


def write_heatmaps(
    module,
    results: Sequence[dict[str, Any]],
    rows: Sequence[ManifestRow],
    out_dir: Path,
    data: DataConfig,
    count: int | None = None,
    tiff: bool = False,
    lesion_dir: str | Path | None = None,
    opacity: float | None = None,
) -> list[Path]:
    """Attention heatmaps ``out_dir/<slide_id>.png`` (and ``.tif``) of up to ``count`` slides.

    Args:
        module: the :class:`~gigastream.train.module.MILClassifier` that predicted
            ``results`` (its class names and its model's output stride).
        results: per-slide results of :func:`~gigastream.train.prediction.run_predictions`.
        rows: the manifest rows of the slides.
        out_dir: the folder (created when there is a heatmap to write).
        data: how the slides were read (resolution, backend).
        count: at most this many slides, alternating between classes (``None``: all).
        tiff: also a full-resolution pyramidal TIFF per slide.
        lesion_dir: folder of ground-truth masks (see :func:`lesion_mask_for`).
        opacity: of the attention colours, 0-1 (default:
            :data:`~gigastream.viz.heatmap.ATTENTION_OPACITY`).

    Off a slide's tissue mask (``data.mask_dir/<slide_id>.png``, as its prediction used it)
    the slide's own pixels are left untinted.
    """
    by_id = {r.slide_id: r for r in rows}
    chosen = choose_slides(results, count)
    if chosen:
        out_dir.mkdir(parents=True, exist_ok=True)
    features = getattr(data, "features_dir", None)  # a head on cached features
    stride = None if features else module.model.output_stride
    paths = []
    for r in chosen:
        row = by_id[r["slide_id"]]
        lesions = lesion_mask_for(row.path, row.slide_id, lesion_dir)
        try:
            slide = SlideReader.open(row.path, mpp=row.mpp, backend=data.backend)
        except SlideError as exc:
            if not features:
                raise
            logger.warning("no heatmap of %s: its slide cannot be opened: %s", row.slide_id, exc)
            continue  # features without their slide: nothing to draw on
        with slide:
            if features:
                cell_um = feature_cell_um(slide, Path(features) / f"{row.slide_id}.h5")
            else:
                cell_um = instance_cell_um(slide, data.mpp, stride)
            path = out_dir / f"{r['slide_id']}.png"
            tissue = _tissue_mask(slide, row.slide_id, data)
            paths += slide_heatmap(
                slide,
                r,
                path,
                cell_um,
                module.class_names,
                lesions,
                tiff=tiff,
                tissue=tissue,
                opacity=opacity,
            )
    return paths


def slide_labels(
    slides: Sequence[str | Path], manifest: str | Path | None = None, label: str | None = None
) -> dict[str, ManifestRow]:
    """The manifest rows (true label, mpp) of slide files, by slide id (the file's stem).

    Args:
        slides: the slide files.
        manifest: a manifest CSV whose rows give the slides' labels (and mpp): a slide is
            its row of the same path or, failing that, of the same slide id; a slide in
            no row has no label.
        label: the one label of every slide (instead of ``manifest``).

    Returns:
        ``slide_id -> row`` of the slides that have a label.

    Raises:
        ConfigError: both ``manifest`` and ``label``, or an empty ``label``.
        ManifestError: a bad manifest (every problem listed).
    """
    from gigastream.train.config import ConfigError
    from gigastream.wsi.manifest import read_manifest

    stems = {Path(s).stem: Path(s) for s in slides}
    if manifest is not None and label is not None:
        raise ConfigError("give --label (one label for every slide) or --manifest, not both")
    if label is not None:
        if not label.strip():
            raise ConfigError("--label must name a class, got an empty label")
        return {stem: ManifestRow(stem, path, label, stem) for stem, path in stems.items()}
    if manifest is None:
        return {}
    rows = read_manifest(manifest, check_files=False).rows
    by_path = {_resolved(r.path): r for r in rows}
    by_id = {r.slide_id: r for r in rows}
    found = {}
    for stem, path in stems.items():
        row = by_path.get(_resolved(path)) or by_id.get(stem)
        if row is not None:
            found[stem] = row
        else:
            logger.warning("%s: not in %s: its heatmap shows no label", path, manifest)
    return found


def _resolved(path: Path) -> Path:
    try:
        return Path(path).resolve()
    except OSError:
        return Path(path)


__all__ = [
    "choose_slides",
    "feature_cell_um",
    "instance_cell_um",
    "lesion_mask_for",
    "slide_heatmap",
    "slide_labels",
    "write_heatmaps",
]
