"""The configuration of a training run: one dataclass per component, YAML in and out.

Precedence: the dataclass defaults < a YAML file (``--config``) < command-line flags; the
defaults live in the dataclasses only (a run's model is
:class:`~gigastream.models.streaming_mil.StreamingMILConfig`'s defaults; a command with
defaults of its own, such as ``gigastream demo``, passes them as a ``base`` config to
:func:`~gigastream.train.config_files.load_config`). The YAML file has one section per component::

    manifest: data/manifest.csv
    class_names: [negative, positive]
    model: {arch: resnet34, head: clam_sb, tile_size: 2048}
    data: {mpp: 0.5, tissue: {mpp: 8.0}}
    patches: {encoder: {name: resnet18}, patch_size: 224}  # used by model.kind: patches
    features: {feature_dim: null}  # model.kind: features (filled in from data.features_dir)
    optim: {lr: 1.0e-4, head_lr: 1.0e-3}
    train: {epochs: 20, precision: bf16-mixed}

Every key is checked: a typo at any depth is one error naming the key and the closest
valid one (``train.epocs: unknown key; did you mean train.epochs?``). The resolved
configuration (:func:`~gigastream.train.config_files.to_dict`) is written next to every run as ``config.yaml`` and stored
in every checkpoint, so ``--config RUN/config.yaml`` re-runs the same job and a checkpoint
rebuilds its model without any file.

Reading, checking and writing them is :mod:`gigastream.train.config_files`.

Example:
    >>> RunConfig().model.head, RunConfig().train.epochs
    ('topk', 24)
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path

from gigastream import precision as precisions
from gigastream.mil.strategies import STRATEGIES as BAG_STRATEGIES
from gigastream.models.feature_mil import FeatureConfig
from gigastream.models.patch_mil import PatchConfig
from gigastream.models.streaming_mil import StreamingMILConfig
from gigastream.train.config_checks import (
    LIGHTNING_STRATEGIES,
    ConfigError,
    check_finite,
    check_strategy,
    memory_size,
)
from gigastream.wsi.tissue import TissueMaskConfig

NORMALIZATIONS = ("imagenet", "none")
#: ``task``: slide classes (a softmax over them) or a slide value (one linear output).
TASKS = ("classification", "regression")
REGRESSION_LOSSES = ("mse", "huber")
#: ``target.instance_target``: what a regression's instance loss trains instance scores on.
INSTANCE_TARGETS = ("value", "positive")
#: The heads with per-instance scores (``instance_logits``) a regression's instance loss needs.
INSTANCE_SCORE_HEADS = ("mean", "fraction")


@dataclass
class DataConfig:
    """How slides become inputs.

    Attributes:
        mpp: resolution the slides are streamed at (microns per pixel).
        tissue: tissue masker settings (also the no-tissue threshold), scaled down for
            small slides (:meth:`~gigastream.wsi.tissue.TissueMaskConfig.scaled_to`).
        mask_dir: folder of ``<slide_id>.png`` tissue masks: a given mask (one not written
            by this cache) is used when present, otherwise computed masks are cached there
            (default: ``RUN/masks``), each keyed by the slide file (path, size, mtime), its
            mpp and the tissue settings, and recomputed when any of them changes or the
            file is damaged.
        mask_input: blank non-tissue pixels of the input (and skip reading them).
        normalize: ``imagenet`` (torchvision's statistics) or ``none`` (pixels in [0, 1]).
        backend: slide reader backend: ``auto``, ``openslide``, ``tiffslide`` or ``cucim``
            (optional, :mod:`gigastream.wsi.cucim_backend`).
        num_workers: DataLoader worker processes that open slides, compute tissue masks
            and read small slides ahead of the training step (0: in the main process).
        read_workers: threads that read a lazily streamed slide's tiles ahead of the
            compute, in the order the stream uses them (1: one read-ahead thread; OpenSlide
            reads one handle in parallel, tiffslide gets a handle per thread).
        preload_pixels: a slide whose input has at most this many pixels is read whole
            by the worker (off the training thread); larger ones stay lazy and are read
            tile by tile while streaming.
        cache_bytes: keep slides read whole in memory up to this many bytes (per loader
            process), so later epochs do not read them again.
        augment: train on a random flip/rotation by 90 degrees of every slide read whole
            (the 8 symmetries of the square; lazily read slides are not augmented); patch
            bags: per bag or per patch, with colour jitter (``patches.augment``,
            ``patches.color_jitter``).
        features_dir: folder of cached patch features ``<slide_id>.h5`` (written by
            ``gigastream features``, or CLAM/TRIDENT) that a ``model.kind: features`` run
            trains on (``--features DIR``); only for that kind.
        max_input_pixels: a slide whose input at ``mpp`` would have more pixels (or less
            than one) is skipped and listed before anything is read: a wrong mpp in the
            manifest or the slide's metadata (``None``: as many as this machine's memory
            holds as 8-bit RGB).
        slide_mpp: microns per level-0 pixel of slides that have no mpp of their own (no
            metadata in the file and no ``mpp`` in their manifest row; ``--slide-mpp``); a
            slide with its own mpp keeps it (``None``: such a slide is skipped and listed).
        max_upsample: the most a slide scanned coarser than ``mpp`` may be upsampled
            (slide mpp / ``mpp``; 1.0: never, beyond the 1% mpp tolerance); a slide that
            needs more is skipped and listed, one that needs less is upsampled with a warning.
        roi_dir: folder of region-of-interest annotation files ``<slide_id>.xml`` (ASAP/
            CAMELYON) or ``.geojson`` / ``.json`` (QuPath) that restrict the training
            instances (``--roi DIR``): each slide's tissue mask is intersected with its
            regions minus exclusions (:mod:`gigastream.train.roi`); every slide needs a file.
            Prediction from a checkpoint (``evaluate``, ``predict``, ``heatmap``) reads the
            whole tissue (``None``: no ROI).
    """

    mpp: float = 1.0
    tissue: TissueMaskConfig = field(default_factory=TissueMaskConfig)
    mask_dir: str | None = None
    mask_input: bool = True
    normalize: str = "imagenet"
    backend: str = "auto"
    num_workers: int = 2
    read_workers: int = 1
    preload_pixels: int = 4096 * 4096
    cache_bytes: int = 2 * 2**30
    augment: bool = True
    features_dir: str | None = None
    max_input_pixels: int | None = None  # None: what this machine's memory holds as RGB
    slide_mpp: float | None = None  # um/px of slides without mpp metadata (--slide-mpp)
    max_upsample: float = 1.0  # slide mpp / data.mpp allowed; 1.0: a coarser slide is skipped
    roi_dir: str | None = None  # ROI annotation files <slide_id>.xml/.geojson (--roi)

    def validate(self) -> None:
        """Raise ConfigError on impossible settings."""
        if not (math.isfinite(self.mpp) and self.mpp > 0):
            raise ConfigError(f"data.mpp must be a positive number of microns, got {self.mpp}")
        if self.max_input_pixels is not None and self.max_input_pixels < 1:
            raise ConfigError(
                "data.max_input_pixels must be a positive number of pixels (or null: what "
                f"this machine's memory holds), got {self.max_input_pixels}"
            )
        if self.slide_mpp is not None and not (
            math.isfinite(self.slide_mpp) and self.slide_mpp > 0
        ):
            raise ConfigError(
                f"data.slide_mpp (--slide-mpp) must be a positive number of microns, got "
                f"{self.slide_mpp}"
            )
        if not (math.isfinite(self.max_upsample) and self.max_upsample >= 1):
            raise ConfigError(
                f"data.max_upsample must be a number >= 1 (1: never upsample), got "
                f"{self.max_upsample}"
            )
        if self.normalize not in NORMALIZATIONS:
            raise ConfigError(
                f"data.normalize must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}"
            )
        if self.backend not in ("auto", "openslide", "tiffslide", "cucim"):
            raise ConfigError(
                "data.backend must be auto, openslide, tiffslide or cucim (optional: "
                f"pip install cucim-cu13), got {self.backend!r}"
            )
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.read_workers < 1:
            raise ConfigError(
                f"data.read_workers must be >= 1 (threads reading a slide), got {self.read_workers}"
            )
        if self.roi_dir is not None and not Path(self.roi_dir).is_dir():
            what = "is a file" if Path(self.roi_dir).exists() else "not found"
            raise ConfigError(
                f"data.roi_dir (--roi) {self.roi_dir}: {what}; give the folder of ROI "
                "annotation files <slide_id>.xml or <slide_id>.geojson (or drop it)"
            )
        check_finite(self, "data")  # what no check above named


@dataclass
class OptimConfig:
    """The optimiser and learning-rate schedule.

    Attributes:
        lr: AdamW learning rate of the trunk (the CNN).
        head_lr: learning rate of the MIL head (``None``: ``lr``).
        weight_decay: AdamW weight decay.
        warmup_steps: optimiser steps of linear warm-up from 0.
        schedule: ``cosine`` (decay to 0 over the run after warm-up) or ``constant``.
        grad_clip: clip the gradient norm to this (``None``: no clipping).
    """

    lr: float = 3e-4
    head_lr: float | None = None
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    schedule: str = "cosine"
    grad_clip: float | None = None

    def validate(self) -> None:
        """Raise ConfigError on impossible settings."""
        for name in ("lr", "head_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"optim.{name} must be a positive number, got {value}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"optim.schedule must be cosine or constant, got {self.schedule!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"optim.grad_clip must be positive, got {self.grad_clip}")
        check_finite(self, "optim")  # what no check above named


@dataclass
class TrainConfig:
    """The training loop (Lightning's ``Trainer``).

    Attributes:
        epochs: passes over the training slides.
        seed: seed of the split, the initialisation, the slide order and dropout; each
            epoch reseeds from ``(seed, epoch)``, so a resumed run is exact.
        device: ``cpu``, ``cuda``, ``cuda:1``, ... or ``auto`` (CUDA if available).
        devices: number of devices (processes) to train on; >1 uses DDP.
        num_nodes: machines (with ``torchrun`` / SLURM).
        strategy: Lightning strategy: ``auto``, ``ddp``, ...
        precision: Lightning's name (:mod:`gigastream.precision`): ``32`` / ``32-true``,
            ``64`` / ``64-true``, ``bf16-mixed`` or ``16-mixed`` (CUDA only).
        accumulate_grad_batches: slides per optimiser step (gradient accumulation over
            slides: the multi-bag accumulation of Andersson et al.).
        balanced: interleave the classes in the slide order, so every gradient-accumulation
            step sees both classes (a regression: the slides above
            ``target.positive_above`` and the others).
        early_stopping_patience: stop after this many epochs without a better validation
            AUC (``None``: never).
        val_fraction: held-out fraction when the manifest has no ``split`` column and no
            splits file is given.
        heatmaps: number of validation slides to draw attention heatmaps of at the end.
        progress: progress bars.
        threads: torch CPU threads (``None``: torch's choice).
        bn_calibration: training slides whose inputs recalibrate the trunk's BatchNorm
            statistics before the first epoch (data-dependent initialisation; 0: keep the
            trunk's own statistics, e.g. ImageNet's; ``None``: 8 for a randomly initialised
            trunk, 0 with ``model.weights``). BatchNorm stays frozen afterwards.
    """

    epochs: int = 24
    seed: int = 0
    device: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32"
    accumulate_grad_batches: int = 8
    balanced: bool = True
    early_stopping_patience: int | None = None
    val_fraction: float = 0.25
    heatmaps: int = 4
    progress: bool = True
    threads: int | None = None
    bn_calibration: int | None = None

    def validate(self) -> None:
        """Raise ConfigError on impossible settings (devices are checked by :func:`check_device`)."""
        if not 0 <= self.seed < 2**63:
            raise ConfigError(
                f"train.seed (--seed) must be a whole number >= 0 (and below 2**63), got {self.seed}"
            )
        positive = ("epochs", "devices", "num_nodes", "accumulate_grad_batches")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        try:
            precisions.check(self.precision, "train.precision")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"train.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ConfigError(
                f"train.early_stopping_patience must be >= 1, got {self.early_stopping_patience}"
            )
        if self.heatmaps < 0:
            raise ConfigError(f"train.heatmaps must be >= 0, got {self.heatmaps}")
        if self.bn_calibration is not None and self.bn_calibration < 0:
            raise ConfigError(f"train.bn_calibration must be >= 0, got {self.bn_calibration}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"train.threads must be >= 1, got {self.threads}")
        if self.strategy in BAG_STRATEGIES:
            raise ConfigError(
                f"train.strategy {self.strategy!r} is a patch-bag strategy, not a Lightning "
                f"strategy (auto, ddp, ...): set patches.strategy (--bag-strategy {self.strategy})"
            )
        check_strategy(self.strategy)
        check_finite(self, "train")  # what no check above named


@dataclass
class TargetConfig:
    """The slide value of a ``task: regression`` run (the manifest's ``label`` is a number).

    Attributes:
        loss: ``mse`` (squared error) or ``huber`` (squared within ``huber_delta``, linear
            beyond: less pulled by outlying slides), of the standardised target.
        huber_delta: where the Huber loss turns linear (in standard deviations of the
            target when ``standardize``).
        standardize: train on ``(value - mean) / std`` of the training slides' values (the
            model's output is mapped back: predictions are in the label's own units).
        mean: the training slides' mean value (filled in by the run; stored in
            ``config.yaml`` and every checkpoint).
        std: their standard deviation (filled in likewise; 1 for a constant target).
        instance_weight: weight of an instance loss added to the slide's, on the head's
            per-instance scores (``instance_logits`` of the ``mean`` and ``fraction`` heads).
            The regression analogue of the ``topk`` recipe's instance loss (every instance
            trained on its slide's label): a lesion's instances occur only on slides with a
            high value, so their scores rise before the slide's prediction does. 0: none.
        instance_target: what the instance loss trains each instance's score towards:
            ``value`` (its slide's standardised value, with ``loss``; a ``mean`` head, whose
            instance scores average to the slide's prediction) or ``positive`` (binary
            cross-entropy: positive on a slide whose value is above ``positive_above``, e.g.
            a burden above 0; a ``fraction`` head, whose prediction is the share of
            instances called positive).
        positive_above: the value above which a slide's instances are positive
            (``instance_target: positive``); with ``train.balanced`` the slides above it and
            the others are interleaved in the slide order, as a classifier's classes are.
        presence_weight: weight of a slide-level presence loss on the same instance scores
            (``instance_target: positive``): the binary cross-entropy of the mean of the
            ``presence_k`` highest scores against whether the slide's value is above
            ``positive_above`` - the ``topk`` head's slide loss, which trains on the most
            lesion-like instances of negative slides (hard negatives). 0: none.
        presence_k: how many of the highest instance scores the presence loss averages.
    """

    loss: str = "mse"
    huber_delta: float = 1.0
    instance_weight: float = 0.0
    instance_target: str = "value"
    positive_above: float = 0.0
    presence_weight: float = 0.0
    presence_k: int = 8
    standardize: bool = True
    mean: float | None = None
    std: float | None = None

    def validate(self) -> None:
        """ConfigError naming the first bad value."""
        if self.loss not in REGRESSION_LOSSES:
            raise ConfigError(
                f"target.loss must be one of {', '.join(REGRESSION_LOSSES)}, got {self.loss!r}"
            )
        if not self.huber_delta > 0:
            raise ConfigError(f"target.huber_delta must be > 0, got {self.huber_delta}")
        if self.std is not None and not self.std > 0:
            raise ConfigError(f"target.std must be > 0, got {self.std}")
        if self.instance_weight < 0:
            raise ConfigError(f"target.instance_weight must be >= 0, got {self.instance_weight}")
        if self.presence_weight < 0 or self.presence_k < 1:
            raise ConfigError(
                f"target.presence_weight must be >= 0 and target.presence_k >= 1, got "
                f"{self.presence_weight} and {self.presence_k}"
            )
        if self.presence_weight and self.instance_target != "positive":
            raise ConfigError(
                "target.presence_weight needs target.instance_target: positive (it is a loss "
                "of whether the slide's value is above target.positive_above)"
            )
        if self.instance_target not in INSTANCE_TARGETS:
            raise ConfigError(
                f"target.instance_target must be one of {', '.join(INSTANCE_TARGETS)}, got "
                f"{self.instance_target!r}"
            )
        check_finite(self, "target")

    def scale(self) -> tuple[float, float]:
        """``(mean, std)`` the model's output is mapped back with (``(0, 1)``: not
        standardised or not resolved yet)."""
        if not self.standardize or self.mean is None or self.std is None:
            return 0.0, 1.0
        return float(self.mean), float(self.std)


@dataclass
class RunConfig:
    """A whole training run.

    Attributes:
        manifest: slide manifest CSV (``slide_id,path,label[,case_id,split,mpp]``).
        splits: folds CSV written by ``gigastream splits`` (``None``: the manifest's
            ``split`` column, or a stratified hold-out of ``train.val_fraction``).
        fold: the validation fold of ``splits``.
        task: ``classification`` (the manifest's labels are classes) or ``regression``
            (they are numbers: a score, an expression level, a lesion burden; one linear
            output on the pooled slide embedding, ``target`` says how it is trained).
        class_names: class names in index order (``None``: the manifest's sorted labels;
            a regression run has the one output ``["value"]``).
        positive_class: the class whose probability a binary AUC, the calibration metrics
            and the decision threshold are of (``--positive-class``): put last in the class
            order (``None``: the last of ``class_names``, alphabetically the last label).
        model: the model (default: :class:`StreamingMILConfig`'s defaults, the recipe of
            ``experiments/demo_recipe`` that learns from random initialisation on CPU; for
            real slides and a GPU, :func:`~gigastream.models.streaming_mil.streaming_clam`'s
            settings are laid out in ``configs/camelyon16.yaml``); ``model.kind: patches``
            trains a :class:`~gigastream.models.patch_mil.PatchMIL` instead.
        patches: the patch bags and encoder of a ``model.kind: patches`` run
            (:class:`~gigastream.models.patch_mil.PatchConfig`; patches are read at
            ``data.mpp``).
        features: the cached features of a ``model.kind: features`` run
            (:class:`~gigastream.models.feature_mil.FeatureConfig`; the files are
            ``data.features_dir``).
        target: the slide value of a regression run (loss, standardisation).
        data: how slides are read.
        optim: the optimiser.
        train: the loop.
    """

    manifest: str | None = None
    splits: str | None = None
    fold: int | None = None
    task: str = "classification"
    class_names: list[str] | None = None
    positive_class: str | None = None  # put last in the class order (binary AUC: last class)
    model: StreamingMILConfig = field(default_factory=StreamingMILConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        """Check every section; raise ConfigError naming the first bad value."""
        for section in (self.data, self.optim, self.train, self.target):
            section.validate()
        if self.task not in TASKS:
            close = difflib.get_close_matches(str(self.task), TASKS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"task must be one of {', '.join(TASKS)}, got {self.task!r}{hint} (--task)"
            )
        try:
            self.model.validate()
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(f"model: {exc}") from None
        if self.model.memory_budget is not None:
            memory_size(self.model.memory_budget, "--memory-budget (model.memory_budget)")
        self._validate_head()
        if self.model.kind == "patches":
            try:
                self.patches.validate()
            except ValueError as exc:
                raise ConfigError(f"patches: {exc}") from None
        self._validate_features()
        if self.splits is not None and self.fold is None:
            raise ConfigError("a splits file needs --fold K (or --folds all)")
        if self.fold is not None and self.splits is None:
            raise ConfigError(
                f"--fold needs --splits FILE (the folds CSV written by gigastream splits; in a "
                f"config file: splits: FILE next to fold: {self.fold}); pass --splits or drop --fold"
            )
        if self.fold is not None and self.fold < 0:
            raise ConfigError(f"fold must be >= 0, got {self.fold}")
        if self.task == "regression":
            self._validate_regression()
        elif self.model.num_classes == 1:
            raise ConfigError(
                "model.num_classes 1 is the one output of a regression: set task: regression "
                "(--task regression), or give a classifier at least 2 classes"
            )
        elif self.class_names is not None and len(self.class_names) < 2:
            raise ConfigError(
                f"class_names needs at least 2 classes, got {self.class_names}: a binary task "
                "has two classes (e.g. [negative, positive]) with a softmax over them"
            )

    def _validate_regression(self) -> None:
        """What a regression run cannot have: classes other than its one output, a
        positive class, class-interleaved slide order."""
        if self.class_names is not None and list(self.class_names) != ["value"]:
            raise ConfigError(
                f"task regression predicts one value; class_names {self.class_names} are for "
                "task classification: drop class_names (or set task: classification)"
            )
        if self.positive_class is not None:
            raise ConfigError(
                "positive_class (--positive-class) is for classification; a regression run "
                "has none: drop it"
            )
        if self.target.instance_weight and self.model.head not in INSTANCE_SCORE_HEADS:
            raise ConfigError(
                f"target.instance_weight needs per-instance scores (head "
                f"{' or '.join(INSTANCE_SCORE_HEADS)}), not head {self.model.head}: set --head "
                "mean (or fraction), or target.instance_weight: 0"
            )

    def _validate_head(self) -> None:
        """The MIL head with ``model.head_options`` (built small, on 8 features): a bad
        option is one error naming ``model.head_options.<key>``. Without ``class_names``
        the run's class count is not known yet: an option that fits 16 classes is left to
        the model (e.g. ``attention_class`` of a 3-class run)."""
        from gigastream.mil.heads import create_mil_head, list_mil_heads

        model = self.model
        if model.head not in list_mil_heads():
            return  # named by the model's own check
        if self.task == "regression":
            counts = [1]
        elif self.class_names:
            counts = [len(self.class_names)]
        else:
            counts = [model.num_classes, 16]
        first = None
        for count in counts:
            try:
                create_mil_head(model.head, 8, count, **model.head_options)
                return
            except (ValueError, TypeError) as exc:
                first = first or " ".join(str(exc).split())
        key = first.split()[0] if first else ""
        if key in model.head_options:  # "k must be >= 1, got 0"
            raise ConfigError(f"model.head_options.{first} (head {model.head})")
        raise ConfigError(f"model.head_options (head {model.head}): {first}")

    def _validate_features(self) -> None:
        """``model.kind: features`` and ``data.features_dir`` go together."""
        try:
            self.features.validate()
        except ValueError as exc:
            raise ConfigError(f"features: {exc}") from None
        if self.model.kind == "features" and self.data.features_dir is None:
            raise ConfigError(
                "model.kind features trains on cached features: pass --features DIR (or set "
                "data.features_dir), a folder written by gigastream features"
            )
        if self.model.kind != "features" and self.data.features_dir is not None:
            raise ConfigError(
                f"data.features_dir is for a head on cached features (model.kind features), "
                f"not model.kind {self.model.kind}: set model.kind: features or drop it"
            )


__all__ = [
    "LIGHTNING_STRATEGIES",
    "ConfigError",
    "DataConfig",
    "OptimConfig",
    "REGRESSION_LOSSES",
    "TASKS",
    "RunConfig",
    "TargetConfig",
    "TrainConfig",
    "check_finite",
    "check_strategy",
    "memory_size",
]
