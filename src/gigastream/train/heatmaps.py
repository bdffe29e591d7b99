"""Attention heatmaps of predicted slides: the one path of training, ``predict`` and
``heatmap``.

:func:`write_heatmaps` draws the attention map of each predicted slide over the slide
(``<slide_id>.png``, optionally a pyramidal ``<slide_id>.tif``) with the ground-truth lesion
contours where a mask exists (:func:`lesion_mask_for`) or drawn from annotation files
(ASAP/CAMELYON XML, QuPath GeoJSON: :func:`annotation_lesions`), untinted off the slide's
tissue mask (the one its prediction used, :func:`~gigastream.train.data.slide_tissue_mask`)
and with a micron scale bar, and beside each PNG the attention as QuPath GeoJSON tiles
``<slide_id>.attention.geojson`` (:func:`attention_tiles`); :func:`slide_heatmap` draws one
slide; :func:`instance_cell_um` is the size of one attention cell in microns
(:func:`attention_cell_um`: of any model kind). :func:`slide_labels` gives ``gigastream heatmap``
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

import numpy as np

from gigastream.train.config import DataConfig
from gigastream.wsi.annotations import TUMOUR_CLASSES, check_classes
from gigastream.wsi.feature_files import read_attrs
from gigastream.wsi.manifest import ManifestRow
from gigastream.wsi.reader import SlideError, SlideReader

if TYPE_CHECKING:
    from gigastream.wsi.annotations import Annotations
    from gigastream.wsi.tissue import TissueMask

logger = logging.getLogger(__name__)


def lesion_mask_for(slide_path: str | Path, slide_id: str, lesion_dir: str | Path | None = None):
    """The ground-truth lesion mask of a slide, if one exists (else ``None``).

    Looked for as ``lesion_dir/<slide_id>.png`` when ``lesion_dir`` is given (only there: a
    slide missing from it has no mask), else, for datasets written by ``gigastream synth``,
    as ``<slide folder>/../lesions/<slide_id>.png``.
    """
    from gigastream.wsi.tissue import TissueMask

    if lesion_dir is not None:
        path = Path(lesion_dir) / f"{slide_id}.png"
    else:
        path = Path(slide_path).parent.parent / "lesions" / f"{slide_id}.png"
    if not path.is_file():
        return None
    try:
        return TissueMask.load(path)
    except SlideError as exc:
        logger.warning("ignoring lesion mask %s: %s", path, exc)
        return None


#: Longer side in pixels of the lesion mask rasterised from annotations for a heatmap: twice
#: the PNG's thumbnail (1024 px), so that the contours follow the outlines within half a
#: thumbnail pixel.
CONTOUR_MASK_SIZE = 2048


def annotation_lesions(
    annotations: Annotations,
    slide: SlideReader,
    max_size: int = CONTOUR_MASK_SIZE,
    *,
    tumour_classes: Sequence[str] = TUMOUR_CLASSES,
) -> TissueMask:
    """The tumour regions of a slide's annotations (the regions of ``tumour_classes`` minus
    exclusions) as a mask over the whole slide, ``max_size`` pixels along its longer side
    (the heatmap's resolution), for the contours of :func:`slide_heatmap`.

    Args:
        annotations: the slide's annotations (level-0 pixels).
        slide: the slide (its level-0 size and mpp).
        max_size: pixels of the mask along the slide's longer side.
        tumour_classes: the classes that are tumour (case-insensitive; ``"Name*"`` is a
            prefix; default :data:`~gigastream.wsi.annotations.TUMOUR_CLASSES`).

    Raises:
        ValueError: no or an empty class name.

    Example:
        >>> notes = read_annotations("annotations/tumor_001.geojson")  # doctest: +SKIP
        >>> annotation_lesions(notes, slide, tumour_classes=["Cancer"]).mask.shape  # doctest: +SKIP
        (1536, 2048)
    """
    classes = check_classes(tumour_classes)
    downsample = max(1.0, max(slide.dimensions) / max_size)  # level-0 px per mask px
    return annotations.mask(classes, downsample=downsample, slide=slide)


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


def model_kind(module, data: DataConfig) -> str:
    """``features`` (a head on cached features: ``data.features_dir``), ``patches`` (a
    :class:`~gigastream.models.patch_mil.PatchMIL`) or ``streaming``: how a module's
    attention map lies on its slide."""
    from gigastream.models.patch_mil import PatchMIL

    if getattr(data, "features_dir", None):
        return "features"
    return "patches" if isinstance(getattr(module, "model", None), PatchMIL) else "streaming"


def attention_cell_um(module, slide: SlideReader, slide_id: str, data: DataConfig) -> float | None:
    """Edge in microns of one cell of a module's attention map of a slide: a feature file's
    patch (:func:`feature_cell_um`), else ``output_stride`` input pixels at ``data.mpp``
    (:func:`instance_cell_um`); ``None`` when a feature file does not give it."""
    features = getattr(data, "features_dir", None)
    if features:
        return feature_cell_um(slide, Path(features) / f"{slide_id}.h5")
    return instance_cell_um(slide, data.mpp, module.model.output_stride)


def _feature_coords(path: Path) -> np.ndarray | None:
    """The level-0 ``coords`` ``(N, 2)`` of a feature file (``None`` when unreadable)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "coords" not in f:
                return None
            return np.asarray(f["coords"][()]).reshape(-1, 2).astype(np.int64)
    except (OSError, KeyError, ValueError) as exc:
        logger.warning("%s: attention tiles laid on the grid: no coords: %s", path, exc)
        return None


def attention_tiles(
    attention_map: np.ndarray,
    slide: SlideReader,
    cell_um: float,
    kind: str = "streaming",
    features_path: str | Path | None = None,
) -> dict[str, Any]:
    """A slide's attention map as QuPath GeoJSON tiles
    (:func:`~gigastream.viz.geojson.attention_geojson`), in level-0 pixels.

    Args:
        attention_map: ``(rows, cols)`` attention, NaN where there is no instance.
        slide: the slide (its level-0 mpp).
        cell_um: edge of one cell in microns (:func:`attention_cell_um`).
        kind: :func:`model_kind`: ``streaming``: one tile per grid cell; ``patches``: one
            per patch at its level-0 corner as the patch grid lays it
            (``floor(cell x level-0 patch edge)``, :func:`~gigastream.wsi.patches.patch_grid`);
            ``features``: one per patch at the feature file's ``coords`` (the grid when it
            has none), with the attention of its cell.
        features_path: the slide's feature file (``features``).

    Example:
        >>> data = attention_tiles(result["attention_map"], slide, 32.0)  # doctest: +SKIP
        >>> data["features"][0]["properties"]["measurements"]  # doctest: +SKIP
        {'attention': 0.0123, 'attention x N': 1.85}
    """
    from gigastream.viz.geojson import attention_geojson
    from gigastream.wsi.patches import grid_from_coords

    attention = np.asarray(attention_map, dtype=np.float64)  # (rows, cols)
    slide_mpp = slide.require_mpp()
    edge = cell_um / slide_mpp  # level-0 px per cell
    coords = None
    if kind == "patches":
        cells = np.argwhere(np.isfinite(attention))  # (N, 2) (row, col)
        coords = np.floor(cells[:, ::-1] * edge)  # (N, 2) level-0 (x, y)
        values = attention[cells[:, 0], cells[:, 1]]
    elif kind == "features" and features_path is not None:
        coords = _feature_coords(Path(features_path))
        if coords is not None and len(coords):
            cells = grid_from_coords(coords, edge).cells  # as the attention map laid them
            inside = (cells[:, 0] < attention.shape[0]) & (cells[:, 1] < attention.shape[1])
            values = np.full(len(coords), np.nan)
            values[inside] = attention[cells[inside, 0], cells[inside, 1]]
            keep = np.isfinite(values)
            coords, values = coords[keep], values[keep]
        if coords is None or not len(coords):
            coords = None
    if coords is None:
        return attention_geojson(attention, cell_um=cell_um, slide_mpp=slide_mpp)
    return attention_geojson(values, coords=coords, patch_size=edge)


def geojson_path(png: Path) -> Path:
    """``<slide_id>.attention.geojson`` beside a heatmap ``<slide_id>.png``."""
    return png.with_name(f"{png.stem}.attention.geojson")


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
    if "prediction" in result:  # a regression run: the value and its prediction
        label = None if result["label"] is None else f"{float(result['label']):.4g}"
        title = hm.value_title(result["slide_id"], label, float(result["prediction"]))
    else:
        label = None if result["label"] is None else class_names[result["label"]]
        shown = -1 if len(class_names) == 2 else int(np.argmax(result["probs"]))  # the called
        title = hm.slide_title(
            result["slide_id"], label, float(result["probs"][shown]), class_names[shown]
        )
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
    annotation_dir: str | Path | None = None,
    geojson: bool = True,
    *,
    tumour_classes: Sequence[str] = TUMOUR_CLASSES,
) -> list[Path]:
    """Attention heatmaps ``out_dir/<slide_id>.png`` (and ``.tif``) of up to ``count`` slides,
    each with its attention as QuPath GeoJSON ``<slide_id>.attention.geojson`` beside it.

    Args:
        module: the :class:`~gigastream.train.module.MILClassifier` that predicted
            ``results`` (its class names and its model's output stride).
        results: per-slide results of :func:`~gigastream.train.prediction.run_predictions`.
        rows: the manifest rows of the slides.
        out_dir: the folder (created when there is a heatmap to write).
        data: how the slides were read (resolution, backend).
        count: at most this many slides, alternating between classes (``None``: all).
        tiff: also a full-resolution pyramidal TIFF per slide.
        lesion_dir: folder of ground-truth masks ``<slide_id>.png`` (see
            :func:`lesion_mask_for`; without it, the masks next to synthetic slides).
        opacity: of the attention colours, 0-1 (default:
            :data:`~gigastream.viz.heatmap.ATTENTION_OPACITY`).
        annotation_dir: folder of annotation files ``<slide_id>.xml`` / ``.geojson`` /
            ``.json`` whose tumour regions are drawn as the lesion contours
            (:func:`annotation_lesions`; instead of ``lesion_dir``).
        geojson: also write ``<slide_id>.attention.geojson`` (:func:`attention_tiles`).
        tumour_classes: the classes of ``annotation_dir``'s files that are tumour
            (default :data:`~gigastream.wsi.annotations.TUMOUR_CLASSES`); when no region of
            the files read is of them, one warning names the classes the files hold.

    Returns:
        The pictures written (PNG, TIFF); the GeoJSON files lie beside the PNGs
        (:func:`geojson_path`). A slide missing from ``lesion_dir`` or ``annotation_dir``
        has no contours: one warning lists them.

    Raises:
        ValueError: both ``lesion_dir`` and ``annotation_dir``; no or an empty tumour class.
        AnnotationError: a malformed annotation file of a chosen slide (before any output).

    Off a slide's tissue mask (``data.mask_dir/<slide_id>.png``, as its prediction used it)
    the slide's own pixels are left untinted.
    """
    from gigastream.wsi.annotation_geojson import write_geojson
    from gigastream.wsi.annotation_readers import ANNOTATION_SUFFIXES, read_annotation_folder
    from gigastream.wsi.annotations import warn_if_no_class

    if lesion_dir is not None and annotation_dir is not None:
        raise ValueError(
            "give the lesions as masks (--lesions DIR) or as annotation files "
            "(--annotations DIR), not both"
        )
    classes = check_classes(tumour_classes)
    by_id = {r.slide_id: r for r in rows}
    chosen = choose_slides(results, count)
    notes = None
    if annotation_dir is not None:  # every file read before the first picture
        notes = read_annotation_folder(annotation_dir, [r["slide_id"] for r in chosen])
        warn_if_no_class(notes.values(), classes)
    if chosen:
        out_dir.mkdir(parents=True, exist_ok=True)
    features = getattr(data, "features_dir", None)  # a head on cached features
    kind = model_kind(module, data)
    paths, missing = [], []
    for r in chosen:
        row = by_id[r["slide_id"]]
        try:
            slide = SlideReader.open(row.path, mpp=row.mpp, backend=data.backend)
        except SlideError as exc:
            if not features:
                raise
            logger.warning("no heatmap of %s: its slide cannot be opened: %s", row.slide_id, exc)
            continue  # features without their slide: nothing to draw on
        with slide:
            if notes is not None:
                found = notes.get(row.slide_id)
                lesions = (
                    None
                    if found is None
                    else annotation_lesions(found, slide, tumour_classes=classes)
                )
            else:
                lesions = lesion_mask_for(row.path, row.slide_id, lesion_dir)
            if lesions is None and (notes is not None or lesion_dir is not None):
                missing.append(row.slide_id)
            cell_um = attention_cell_um(module, slide, row.slide_id, data)
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
            if geojson and cell_um is not None:
                feature_file = Path(features) / f"{row.slide_id}.h5" if features else None
                tiles = attention_tiles(r["attention_map"], slide, cell_um, kind, feature_file)
                write_geojson(tiles, geojson_path(path))
    if missing:
        where = (
            f"annotation file <slide_id>{'/'.join(ANNOTATION_SUFFIXES)} in {annotation_dir}"
            if notes is not None
            else f"mask <slide_id>.png in {lesion_dir}"
        )
        shown = ", ".join(missing[:10]) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        logger.warning(
            "%d heatmap(s) without lesion contours: no %s for %s", len(missing), where, shown
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
    "CONTOUR_MASK_SIZE",
    "annotation_lesions",
    "attention_cell_um",
    "attention_tiles",
    "choose_slides",
    "feature_cell_um",
    "geojson_path",
    "instance_cell_um",
    "lesion_mask_for",
    "model_kind",
    "slide_heatmap",
    "slide_labels",
    "write_heatmaps",
]
