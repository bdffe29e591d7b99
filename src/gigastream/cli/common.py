"""Options shared by several subcommands, declared once (as TIAToolbox's ``cli/common.py``).

Each helper adds one flag or one group of flags to a parser; :func:`run_overrides` turns
the parsed training flags into config overrides (``None``: not given, so the YAML file or
the default stands); :func:`find_shared_data` is the one lookup of the shared data folder
(real H&E images and slides, MNIST) that commands default to.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

#: Where the shared data folder is looked for, from the working directory (then next to the
#: repository checkout).
SHARED_DATA = ("../shared/data", "shared/data")


def find_shared_data(*names: str) -> list[Path]:
    """The folders ``names`` (e.g. ``images``, ``slides``, ``mnist``) of the first shared data
    folder that holds any of them (:data:`SHARED_DATA`, then ``../shared/data`` next to the
    repository checkout); ``[]`` where none does."""
    roots = [Path.cwd() / candidate for candidate in SHARED_DATA]
    roots.append(Path(__file__).resolve().parents[3] / SHARED_DATA[0])  # repo checkout
    for root in roots:
        found = [root / name for name in names if (root / name).is_dir()]
        if found:
            return found
    return []


def add_out(
    parser: argparse.ArgumentParser, help: str = "output folder", required: bool = True
) -> None:
    parser.add_argument("--out", type=Path, required=required, help=help)


def add_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="a checkpoint written by gigastream train (RUN/checkpoints/best.ckpt)",
    )


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", help="cpu, cuda, cuda:N or auto (default: auto = CUDA when available)"
    )


def add_slides(parser: argparse.ArgumentParser, manifest: bool = False) -> None:
    """The slide files; ``manifest``: ``--manifest CSV`` too, whose slides are read when no
    file is given (:func:`slide_list`)."""
    if not manifest:
        parser.add_argument("slides", type=Path, nargs="+", metavar="SLIDE", help="slide files")
        return
    parser.add_argument(
        "slides",
        type=Path,
        nargs="*",
        metavar="SLIDE",
        help="slide files (none: the slides of --manifest)",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        help="CSV slide_id,path,label[,mpp]: the slides' mpp and true labels; without SLIDE "
        "files, its slides are the ones read (paths relative to the CSV)",
    )


def slide_list(args: argparse.Namespace) -> list[Path]:
    """The SLIDE files given, else the slides of ``--manifest`` (with SLIDE files the
    manifest only gives their mpp and labels).

    Raises:
        ValueError: neither was given.
        ManifestError: a bad manifest (every problem listed).
    """
    slides = [Path(s) for s in args.slides]
    manifest = getattr(args, "manifest", None)
    if not slides and manifest is not None:
        from gigastream.wsi.manifest import read_manifest

        slides = [Path(row.path) for row in read_manifest(manifest).rows]
    if not slides:
        raise ValueError("no slides: give SLIDE files or --manifest CSV")
    return slides


def add_slide_mpp(parser: argparse.ArgumentParser) -> None:
    """``--slide-mpp``: the mpp of slides whose files have none (a slide's own metadata, and
    a manifest's ``mpp`` column, win); check it with :func:`check_slide_mpp`."""
    parser.add_argument(
        "--slide-mpp",
        type=float,
        metavar="UM_PER_PX",
        help="microns per level-0 pixel of slides whose files have no resolution metadata "
        "(a slide with its own mpp keeps it; a manifest's mpp column wins for its slide)",
    )


def check_slide_mpp(value: float | None) -> None:
    """ValueError (one line) for a ``--slide-mpp`` that is not a positive number."""
    import math

    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"--slide-mpp must be a positive number of microns per pixel, got {value}")


def add_positive_class(parser: argparse.ArgumentParser) -> None:
    """``--positive-class NAME``: the class a binary AUC is of (``positive_class``)."""
    parser.add_argument(
        "--positive-class",
        metavar="NAME",
        help="the label whose probability the AUC, calibration and threshold are of (put "
        "last in the class order; default: the last label alphabetically)",
    )


def add_task(parser: argparse.ArgumentParser) -> None:
    """``--task classification|regression`` (``task``)."""
    parser.add_argument(
        "--task",
        choices=["classification", "regression"],
        help="classification: the manifest's labels are classes; regression: they are "
        "numbers (a score, a level, a burden) predicted by one linear output (default: "
        "classification)",
    )


def add_sources(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sources",
        type=Path,
        nargs="+",
        help="H&E images/slides (files or folders) to cut synthetic tissue from (default: "
        "the images/ and slides/ of ../shared/data)",
    )


def add_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        help="DataLoader worker processes that open and read slides (default: the config's "
        "data.num_workers)",
    )


def add_features(parser: argparse.ArgumentParser, help: str) -> None:
    """``--features DIR``: a folder of cached patch features ``<slide_id>.h5``."""
    parser.add_argument("--features", type=Path, metavar="DIR", help=help)


def add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_recipe(parser: argparse.ArgumentParser) -> None:
    """The flags of a run's settings: config file, model, optimisation, device and precision
    (``train`` and ``demo``; the resolution experiment in ``experiments/resolution`` reuses them).
    A flag left out takes the ``--config`` file's value, else the default its help names
    (:class:`~gigastream.train.config.RunConfig`'s)."""
    from gigastream.mil.heads import list_mil_heads
    from gigastream.models.trunks import list_trunks
    from gigastream.train.config import RunConfig

    run = RunConfig()
    parser.add_argument("--config", type=Path, help="YAML file of settings (flags override it)")
    parser.add_argument(
        "--arch", choices=list_trunks(), help=f"CNN trunk (default: {run.model.arch})"
    )
    parser.add_argument(
        "--weights",
        help="trunk (patch models: encoder) weights: imagenet (torchvision), a local file, "
        "or a gigastream train checkpoint (.ckpt: start from its trained trunk) "
        "(default: none, random initialisation)",
    )
    parser.add_argument(
        "--head",
        choices=list_mil_heads(),
        help=f"MIL head (default: {run.model.head} with {run.model.head_options})",
    )
    parser.add_argument(
        "--epochs", type=int, help=f"passes over the training slides (default: {run.train.epochs})"
    )
    parser.add_argument(
        "--tile-size",
        type=int,
        help=f"streaming tile edge in pixels (default: {run.model.tile_size}; with "
        "--memory-budget: planned from it)",
    )
    parser.add_argument(
        "--memory-budget",
        help="streaming memory budget, e.g. 8GiB: the tiles are planned to fit it (default: "
        "none, --tile-size)",
    )
    parser.add_argument("--lr", type=float, help=f"trunk learning rate (default: {run.optim.lr:g})")
    parser.add_argument(
        "--head-lr", type=float, help="MIL head learning rate (default: the trunk's, --lr)"
    )
    parser.add_argument(
        "--accumulate",
        type=int,
        help=f"slides per optimiser step (default: {run.train.accumulate_grad_batches})",
    )
    add_device(parser)
    parser.add_argument(
        "--precision",
        choices=["32", "64", "bf16-mixed", "16-mixed"],
        help=f"numeric precision (default: {run.train.precision})",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    add_workers(parser)
    parser.add_argument(
        "--read-workers",
        type=int,
        help="threads that read a streamed slide's tiles ahead of the compute (default: "
        f"{run.data.read_workers})",
    )
    add_progress(parser)


def add_training(parser: argparse.ArgumentParser) -> None:
    """The flags of a training run (``train`` and ``demo``): :func:`add_recipe` and the
    run's resolution (and ``--slide-mpp``), positive class, seed, distribution, early
    stopping, resume and overwrite."""
    from gigastream.train.config import RunConfig

    run = RunConfig()
    add_recipe(parser)
    parser.add_argument(
        "--mpp",
        type=float,
        help=f"resolution slides are streamed at (um/px; default: {run.data.mpp:g})",
    )
    add_slide_mpp(parser)
    add_task(parser)
    add_positive_class(parser)
    parser.add_argument(
        "--seed",
        type=int,
        help=f"seed of split, initialisation, order, dropout (default: {run.train.seed})",
    )
    parser.add_argument(
        "--devices",
        type=int,
        help=f"devices (processes) to train on (DDP; default: {run.train.devices})",
    )
    parser.add_argument(
        "--strategy", help=f"Lightning strategy: auto, ddp, ... (default: {run.train.strategy})"
    )
    parser.add_argument(
        "--early-stopping",
        type=int,
        metavar="EPOCHS",
        help="stop after EPOCHS epochs without a better validation AUC (default: never)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last finished epoch",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a run in --out")


#: The flags of a patch-bag model (:func:`add_patches`) and the ``patches:`` keys they set.
PATCH_FLAGS = {
    "encoder": ("encoder", "name"),
    "patch_size": ("patch_size",),
    "bag_strategy": ("strategy",),
    "chunk_size": ("chunk_size",),
    "sample_size": ("sample_size",),
    "min_tissue": ("min_tissue",),
    "finetune": ("encoder", "finetune"),
    "patch_augment": ("augment",),
    "color_jitter": ("color_jitter",),
}
#: The flags of a streamed model only.
STREAMING_FLAGS = ("arch", "tile_size")
#: The flags that make no sense for a head on cached features (``--features``).
NOT_FEATURE_FLAGS = ("arch", "tile_size", "weights", "memory_budget")


def add_patches(parser: argparse.ArgumentParser) -> None:
    """The flags of a patch-bag model (``--model-kind patches``; the ``patches:`` section)."""
    from gigastream.mil.strategies import STRATEGIES
    from gigastream.models.streaming_mil import MODEL_KINDS

    parser.add_argument(
        "--model-kind",
        choices=MODEL_KINDS,
        help="streaming: a streamed trunk over the whole slide (default); patches: an encoder "
        "over the slide's tissue patches (the patch flags below); features: a MIL head on "
        "cached patch features (--features DIR)",
    )
    from gigastream.models.patch_mil import AUGMENT_UNITS, PatchConfig

    patches = PatchConfig()
    parser.add_argument(
        "--encoder",
        help="patch encoder: a registered trunk (resnet18, ...), small_cnn or timm:<model name> "
        f"(default: {patches.encoder.name})",
    )
    parser.add_argument(
        "--patch-size",
        type=int,
        help=f"patch edge in pixels at --mpp (default: {patches.patch_size})",
    )
    parser.add_argument(
        "--bag-strategy",
        choices=STRATEGIES,
        help="how a training step sees a bag: accumulate (exact, chunked), baseline (whole "
        "bag in one graph), sample (--sample-size random patches) or frozen (the encoder "
        "does not train; each bag's features are computed once and cached in memory; "
        f"default: {patches.strategy})",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        help=f"patches per chunk (accumulate, eval; default: {patches.chunk_size})",
    )
    parser.add_argument(
        "--sample-size",
        type=int,
        help=f"patches per training step (sample; default: {patches.sample_size})",
    )
    parser.add_argument(
        "--min-tissue",
        type=float,
        help=f"tissue fraction a patch needs (0-1; default: {patches.min_tissue})",
    )
    parser.add_argument(
        "--finetune",
        help="which encoder parameters train: full, frozen, last:N or lora (default: "
        f"{patches.encoder.finetune})",
    )
    parser.add_argument(
        "--patch-augment",
        choices=AUGMENT_UNITS,
        help="training flips/rotations: bag (one for every patch of a bag) or patch (each "
        f"patch its own; default: {patches.augment})",
    )
    parser.add_argument(
        "--color-jitter",
        type=float,
        metavar="F",
        help="random brightness and contrast factors in [1-F, 1+F] (per --patch-augment "
        f"unit; 0 <= F < 1; default: {patches.color_jitter})",
    )


def model_kind(args: argparse.Namespace) -> str:
    """The model kind of a command line: ``--model-kind``, else ``features`` with
    ``--features``, else the ``--config`` file's ``model.kind``, else ``streaming``."""
    kind = getattr(args, "model_kind", None)
    if kind is None and getattr(args, "features", None) is not None:
        kind = "features"
    if kind is None and getattr(args, "config", None) is not None:
        from gigastream.train.config_files import read_yaml

        model = read_yaml(args.config).get("model")
        kind = model.get("kind") if isinstance(model, dict) else None
    return kind or "streaming"


def _patch_overrides(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """The ``patches:`` overrides of the patch flags; ValueError for flags of the other kind."""
    given = [name for name in PATCH_FLAGS if getattr(args, name, None) is not None]
    if kind == "features":
        _check_feature_flags(args, given)
        return {}
    if kind != "patches":
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise ValueError(f"{flag} is a setting of a patch-bag model: add --model-kind patches")
        return {}
    streaming = [name for name in STREAMING_FLAGS if getattr(args, name, None) is not None]
    if streaming:
        flag = "--" + streaming[0].replace("_", "-")
        raise ValueError(
            f"{flag} is a setting of a streamed model; a patch-bag model (--model-kind patches) "
            "takes --encoder, --patch-size, --chunk-size, --bag-strategy"
        )
    patches = patch_section(args)
    budget = getattr(args, "memory_budget", None)
    if budget is not None:
        from gigastream.train.config import memory_size

        patches["memory_budget_mib"] = memory_size(budget, "--memory-budget") / 2**20
    return patches


def patch_section(args: argparse.Namespace) -> dict[str, Any]:
    """The ``patches:`` overrides of the patch flags a command has (:data:`PATCH_FLAGS` and
    ``--weights``: the encoder's weights); ``None``: not given."""
    patches: dict[str, Any] = {"encoder": {"weights": getattr(args, "weights", None)}}
    for name, keys in PATCH_FLAGS.items():
        section = patches
        for key in keys[:-1]:
            section = section.setdefault(key, {})
        section[keys[-1]] = getattr(args, name, None)
    return patches


def _check_feature_flags(args: argparse.Namespace, patch_flags: list[str]) -> None:
    """ValueError for a flag of a model that reads slides in a feature run."""
    given = patch_flags + [n for n in NOT_FEATURE_FLAGS if getattr(args, n, None) is not None]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise ValueError(
            f"{flag} is a setting of a model that reads slides; a head on cached features "
            "(--features DIR) takes --head and the optimiser flags (the encoder, its weights "
            "and the patches are those of gigastream features)"
        )


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides from the training flags (only those given; flags a command does not
    have count as not given). ``--weights`` and ``--memory-budget`` set the encoder's and
    the chunks' settings of a patch-bag model (``--model-kind patches``); ``--features DIR``
    sets ``data.features_dir`` and ``model.kind: features`` (a head on cached features).

    Raises:
        ValueError: a flag of another model kind than the command line's (one line).
    """

    def flag(name: str) -> Any:
        return getattr(args, name, None)

    kind = model_kind(args)
    features = flag("features")
    if features is not None and kind != "features":
        raise ValueError(
            f"--features DIR trains a head on cached features: drop --model-kind {kind} "
            "(or --features)"
        )
    patches = _patch_overrides(args, kind)
    streamed = kind == "streaming"
    return {
        "task": flag("task"),
        "positive_class": flag("positive_class"),
        "model": {
            "kind": flag("model_kind") or (None if features is None else "features"),
            "arch": args.arch,
            "weights": args.weights if streamed else None,
            "head": args.head,
            "tile_size": args.tile_size,
            "memory_budget": args.memory_budget if streamed else None,
        },
        "patches": patches,
        "data": {
            "mpp": flag("mpp"),
            "slide_mpp": flag("slide_mpp"),
            "num_workers": args.workers,
            "read_workers": flag("read_workers"),
            "features_dir": None if features is None else str(features),
            "roi_dir": None if flag("roi") is None else str(flag("roi")),
        },
        "optim": {"lr": args.lr, "head_lr": args.head_lr},
        "train": {
            "epochs": args.epochs,
            "seed": flag("seed"),
            "device": args.device,
            "devices": flag("devices"),
            "strategy": flag("strategy"),
            "precision": args.precision,
            "accumulate_grad_batches": args.accumulate,
            "early_stopping_patience": flag("early_stopping"),
            "threads": args.threads,
            "progress": False if args.no_progress else None,
        },
    }


def check_weights_file(weights: str | None, flag: str = "--weights") -> None:
    """Check that a local weights file (not ``None`` or ``imagenet``) is one ``torch.load``
    reads safely (``weights_only=True``) and that it holds a dict (a state_dict or a
    checkpoint), before any work: a zip-format file is opened memory-mapped, its tensors
    not read.

    Raises:
        ConfigError: the file is not a PyTorch state_dict/checkpoint (one line naming it).
    """
    import pickle
    import zipfile

    if weights is None or weights == "imagenet" or not Path(weights).is_file():
        return  # a missing file is named by the model's own check
    import torch

    from gigastream.train.config import ConfigError
    from gigastream.train.files import UNREADABLE_PICKLE, unpickling_reason

    path = Path(weights)
    if path.suffix.lower() == ".safetensors":
        return
    try:
        state = torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except (pickle.UnpicklingError, *UNREADABLE_PICKLE, zipfile.BadZipFile, RuntimeError) as exc:
        if isinstance(exc, pickle.UnpicklingError):  # torch's advice (weights_only=False) left out
            reason = unpickling_reason(exc)
        else:
            text = str(exc).strip()
            reason = text.splitlines()[0].split(". ")[0] if text else type(exc).__name__
        raise ConfigError(
            f"{flag} {path}: not a PyTorch state_dict or checkpoint (corrupt or truncated?): "
            f"{reason}"
        ) from None
    if not isinstance(state, dict):
        raise ConfigError(
            f"{flag} {path}: not a PyTorch state_dict or checkpoint (it holds a "
            f"{type(state).__name__}, not a dict of tensors)"
        )


def quiet_lightning(args: argparse.Namespace) -> None:
    """Hide Lightning's banners (GPU available, tips) unless ``-vv`` was given.

    Lightning sets its loggers to INFO when imported, so this imports it first.
    """
    import logging

    import lightning  # noqa: F401

    if getattr(args, "verbose", 0) < 2:
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A small aligned text table on stdout."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
