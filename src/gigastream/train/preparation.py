"""A run validated before anything is written: settings, devices, manifest, labels, splits,
that some training and some validation slide can be used, weights and the streaming plan
(or, for a patch-bag model, the patch grid) of the first slides.

:func:`prepare` checks a :class:`~gigastream.train.config.RunConfig` and returns a
:class:`PreparedRun` (the training and validation slides, the class names, the device);
:func:`resolved_config` is the config with everything derived filled in, as written to
``RUN/config.yaml`` and stored in every checkpoint; :func:`build_model` makes the slide
classifier of a run.

Example:
    >>> config = load_config({"manifest": "data/manifest.csv"})  # doctest: +SKIP
    >>> prepared = prepare(config)  # doctest: +SKIP
    >>> len(prepared.train_rows), prepared.class_names  # doctest: +SKIP
    (48, ['negative', 'positive'])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from gigastream.models.encoders import EncoderError
from gigastream.models.feature_mil import FeatureMIL
from gigastream.models.patch_mil import PatchMIL
from gigastream.models.streaming_mil import StreamingMIL
from gigastream.streaming.planner import StreamingPlan
from gigastream.train.config import ConfigError, RunConfig
from gigastream.train.data import check_slide_input, describe_skipped
from gigastream.train.selection import (
    check_labels,
    check_targets,
    is_regression,
    split_rows,
    target_scale,
)
from gigastream.train.trainer import resolve_device
from gigastream.wsi.manifest import Manifest, ManifestRow, read_manifest
from gigastream.wsi.reader import SlideError, SlideReader


@dataclass
class PreparedRun:
    """A validated run: everything :func:`~gigastream.train.fitting.fit` needs, computed
    before writing anything."""

    config: RunConfig
    manifest: Manifest
    class_names: list[str]
    train_rows: list[ManifestRow]
    val_rows: list[ManifestRow]
    accelerator: str
    devices: int | list[int]
    #: the streaming plan of the first usable training slide at the training precision,
    #: planned for this host (``None``: not a streamed model, or not planned)
    plan: StreamingPlan | None = None


def build_model(config: RunConfig, num_classes: int) -> StreamingMIL | PatchMIL | FeatureMIL:
    """The slide classifier of a run (``model.kind``: a streamed :class:`StreamingMIL`, a
    patch-bag :class:`~gigastream.models.patch_mil.PatchMIL` or a head on cached features,
    :class:`~gigastream.models.feature_mil.FeatureMIL`), its weights loaded as configured.

    Raises:
        ConfigError: a bad encoder or trunk weights; a feature model whose
            ``features.feature_dim`` is unknown (not prepared by :func:`prepare`).
    """
    model = config.model
    if model.kind == "features":
        if config.features.feature_dim is None:
            raise ConfigError(
                "features.feature_dim is unknown: prepare the run (it is read from the first "
                "feature file of data.features_dir) or set it"
            )
        return FeatureMIL(config.features.feature_dim, model.head, num_classes, model.head_options)
    if model.kind == "patches":
        try:
            return PatchMIL(config.patches, model.head, num_classes, model.head_options)
        except EncoderError as exc:
            raise ConfigError(f"patches.encoder: {exc}") from None
    try:
        return StreamingMIL(replace(model, num_classes=num_classes, progress=False))
    except FileNotFoundError as exc:
        raise ConfigError(f"model.weights: {exc}") from None


def _check_plan(
    model: StreamingMIL, rows: Sequence[ManifestRow], config: RunConfig
) -> StreamingPlan | None:
    """The streaming plan of the first readable slide at the training precision, planned
    for this host (a tile too small fails here, early; a GPU's free memory is not asked,
    which would initialise CUDA before Lightning starts its processes)."""
    from gigastream import precision as precisions
    from gigastream.wsi.source import SlideSource

    dtype = precisions.compute_dtype(config.train.precision)
    for row in rows[:3]:
        try:
            with SlideReader.open(row.path, mpp=row.mpp, backend=config.data.backend) as slide:
                check_slide_input(slide, row.slide_id, config.data)  # absurd sizes are skipped
                shape = SlideSource(slide, mpp=config.data.mpp).shape
        except SlideError:
            continue  # reported when the slide is reached
        return model.trunk.plan(tuple(shape), dtype, lazy_input=True, device="cpu")
    return None


def _usable(row: ManifestRow, config: RunConfig) -> str | None:
    """Why a slide cannot be used (it does not open, or its input at ``data.mpp`` is not
    of a sane size: :func:`~gigastream.train.data.check_slide_input`), or ``None``."""
    try:
        with SlideReader.open(row.path, mpp=row.mpp, backend=config.data.backend) as slide:
            check_slide_input(slide, row.slide_id, config.data)
    except SlideError as exc:
        return str(exc)
    return None


def _check_usable(
    rows: Sequence[ManifestRow], side: str, config: RunConfig, class_names: Sequence[str]
) -> None:
    """Some slide of ``rows`` can be used, and for a classification every class has one
    among the training slides and the validation slides that can be used hold two classes
    or more (else the run would train on one class, or its validation AUC, which picks the
    best checkpoint, would be undefined). Slides are opened until each class has one that
    can be used (usually the first of each class).

    Raises:
        ConfigError: one line naming the side, the class and every slide tried and why.
    """
    reasons: dict[str, str] = {}
    classification = not is_regression(class_names)
    by_class: dict[str, list[ManifestRow]] = {}
    for row in rows:  # a regression: every slide is of one "class"
        if classification and row.label not in class_names:
            continue  # unlabelled: predicted, not trained or validated on
        by_class.setdefault(row.label if classification else "", []).append(row)
    usable: list[str] = []
    for label, members in by_class.items():
        for row in members:
            why = _usable(row, config)
            if why is None:
                usable.append(label)
                break
            reasons[row.slide_id] = why
    if not usable and not reasons:
        raise ConfigError(
            f"none of the {len(rows)} {side} slides has a label of the run's classes "
            f"({', '.join(class_names)}): label them in the manifest"
        )
    if not usable:
        raise ConfigError(
            f"none of the {len(rows)} {side} slides can be used: {describe_skipped(reasons)}; "
            "fix or replace the slide files (or their rows of the manifest)"
        )
    if not classification:
        return
    if side == "training":
        missing = [c for c in class_names if c not in usable]
        if missing:
            tried = {
                r.slide_id: reasons[r.slide_id]
                for r in by_class.get(missing[0], [])
                if r.slide_id in reasons
            }
            detail = describe_skipped(tried) if tried else "it has no training slides"
            raise ConfigError(
                f"class {missing[0]!r} has no training slide that can be used ({detail}); "
                "the run would learn without it: fix or replace those slide files, or move "
                "slides of that class into training (the split column or --splits)"
            )
    elif len(usable) < 2:
        shown = ", ".join(r.slide_id for r in rows[:8]) + (", ..." if len(rows) > 8 else "")
        skipped = f"; {describe_skipped(reasons)} cannot be used" if reasons else ""
        raise ConfigError(
            f"the validation slides that can be used are all of class {usable[0]!r} "
            f"({len(rows)} validation slide(s): {shown}{skipped}): the validation AUC, which "
            "picks the best checkpoint, is undefined with one class; put slides of two "
            "classes or more into validation (the split column, --splits, or a larger "
            "train.val_fraction)"
        )


def _check_patches(model: PatchMIL, rows: Sequence[ManifestRow], config: RunConfig) -> None:
    """The patch grids of the first readable slides (up to 3) and the encoder on one patch.

    A patch larger than every one of those slides, or none of them with a patch on tissue,
    is one ConfigError here, before training; a single such slide is skipped and listed
    by the run.
    """
    import torch

    from gigastream.train.patch_data import slide_patch_grid

    channels = config.patches.encoder.in_channels
    if channels != 3:
        raise ConfigError(
            f"patches.encoder takes {channels}-channel patches; slide patches are RGB: remove "
            "its in_channels/in_chans option (or set it to 3)"
        )
    errors = []
    for row in rows[:3]:
        try:
            slide = SlideReader.open(row.path, mpp=row.mpp, backend=config.data.backend)
        except SlideError:
            continue  # unreadable: reported when the slide is reached
        try:
            slide_patch_grid(slide, row.slide_id, config.data, config.patches, save_mask=False)
            break
        except SlideError as exc:  # no tissue, no patch kept, a patch larger than the slide
            errors.append(str(exc))
        finally:
            slide.close()
    else:
        if errors:
            raise ConfigError(
                f"patches: none of the first {len(errors)} slides has a patch: {errors[0]}"
            )
    size = config.patches.patch_size
    try:
        with torch.no_grad():
            model.encoder(torch.zeros(1, 3, size, size, dtype=torch.uint8))
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise ConfigError(
            f"patches.encoder {config.patches.encoder.name} does not take {size} px patches "
            f"({type(exc).__name__}: {' '.join(str(exc).split())}); set --patch-size to its "
            "input size, or its options (e.g. img_size for a timm ViT)"
        ) from None


def prepare(config: RunConfig, check_plan: bool = True, check_device: bool = True) -> PreparedRun:
    """Validate a run without writing anything.

    ``check_plan`` also checks that some training and some validation slide opens and has
    an input of a sane size at ``data.mpp`` (a dry run, ``check_plan=False``, reports every
    slide instead). ``check_device=False`` (``train --dry-run``) plans for the configured
    device even where it is not present (a GPU run planned on a laptop). A feature model
    (``model.kind: features``) gets its ``features.feature_dim`` from the first feature
    file of the manifest's slides (the returned ``config`` has it); its slide files need
    not exist.

    Raises:
        ConfigError: a bad setting, label, split or device (one line each); no training or
            no validation slide that opens and has an input of a sane size at ``data.mpp``
            (every slide named, with why).
        ManifestError: bad manifest rows (all listed).
        StreamingError: the model cannot stream the slides (e.g. a tile too small).
    """
    config.validate()
    if config.manifest is None:
        raise ConfigError("no manifest: pass --manifest M.csv (or set manifest: in the config)")
    if check_device:
        accelerator, devices = resolve_device(config.train)
    else:
        accelerator = "gpu" if str(config.train.device).startswith("cuda") else "cpu"
        devices = 1
    features = config.model.kind == "features"
    manifest = read_manifest(config.manifest, check_files=not features)  # features: no slides
    if config.task == "regression":
        class_names = check_targets(manifest.rows, config.manifest)
    else:
        class_names = check_labels(
            [r.label for r in manifest.rows], config.class_names, config.positive_class
        )
    manifest = Manifest(manifest.rows, class_names)
    train_rows, val_rows = split_rows(manifest, config)
    if config.task == "regression" and config.target.mean is None:  # the training slides'
        mean, std = target_scale(train_rows)
        config = replace(config, target=replace(config.target, mean=mean, std=std))
    if check_plan and not features:  # every training (or validation) slide unusable?
        _check_usable(train_rows, "training", config, class_names)
        _check_usable(val_rows, "validation", config, class_names)
    if features:  # the feature dimension of the first file: the model's
        from gigastream.train.feature_data import with_feature_dim

        config = with_feature_dim(config, manifest.rows)
    plan = None
    if check_plan:
        model = build_model(config, len(class_names))
        if isinstance(model, PatchMIL):
            _check_patches(model, train_rows, config)
        elif isinstance(model, StreamingMIL):
            plan = _check_plan(model, train_rows, config)
    return PreparedRun(
        config, manifest, class_names, train_rows, val_rows, accelerator, devices, plan
    )


def resolved_config(prepared: PreparedRun) -> RunConfig:
    """The run's config with everything derived filled in (class names, paths absolute; a
    feature model's ``features.feature_dim``, from :func:`prepare`)."""
    config = prepared.config
    return replace(
        config,
        manifest=str(Path(config.manifest).resolve()),
        splits=str(Path(config.splits).resolve()) if config.splits else None,
        class_names=list(prepared.class_names),
        model=replace(config.model, num_classes=len(prepared.class_names)),
        data=replace(config.data, features_dir=_absolute(config.data.features_dir)),
    )


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


__all__ = ["PreparedRun", "build_model", "prepare", "resolved_config"]
