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


def add_slides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("slides", type=Path, nargs="+", metavar="SLIDE", help="slide files")


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
        "--workers", type=int, help="DataLoader worker processes that open and read slides"
    )


def add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_recipe(parser: argparse.ArgumentParser) -> None:
    """The flags of a run's settings: config file, model, optimisation, device and precision
    (``train`` and ``demo``; the resolution experiment in ``experiments/resolution`` reuses them)."""
    from gigastream.models.trunks import list_trunks

    parser.add_argument("--config", type=Path, help="YAML file of settings (flags override it)")
    parser.add_argument("--arch", choices=list_trunks(), help="CNN trunk")
    parser.add_argument(
        "--weights", help="trunk weights: imagenet (torchvision download) or a local state_dict"
    )
    parser.add_argument("--head", help="MIL head (see gigastream.list_mil_heads())")
    parser.add_argument("--epochs", type=int, help="passes over the training slides")
    parser.add_argument("--tile-size", type=int, help="streaming tile edge in pixels")
    parser.add_argument("--memory-budget", help="streaming memory budget, e.g. 8GiB")
    parser.add_argument("--lr", type=float, help="trunk learning rate")
    parser.add_argument("--head-lr", type=float, help="MIL head learning rate")
    parser.add_argument("--accumulate", type=int, help="slides per optimiser step")
    add_device(parser)
    parser.add_argument(
        "--precision", choices=["32", "64", "bf16-mixed", "16-mixed"], help="numeric precision"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    add_workers(parser)
    add_progress(parser)


def add_training(parser: argparse.ArgumentParser) -> None:
    """The flags of a training run (``train`` and ``demo``): :func:`add_recipe` and the
    run's resolution, seed, distribution, early stopping, resume and overwrite."""
    add_recipe(parser)
    parser.add_argument("--mpp", type=float, help="resolution slides are streamed at (um/px)")
    parser.add_argument("--seed", type=int, help="seed of split, initialisation, order, dropout")
    parser.add_argument("--devices", type=int, help="devices (processes) to train on (DDP)")
    parser.add_argument("--strategy", help="Lightning strategy: auto, ddp, ...")
    parser.add_argument(
        "--early-stopping",
        type=int,
        metavar="EPOCHS",
        help="stop after EPOCHS epochs without a better validation AUC",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last finished epoch",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a run in --out")


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides from the training flags (only those given; flags a command does not
    have count as not given)."""

    def flag(name: str) -> Any:
        return getattr(args, name, None)

    return {
        "model": {
            "arch": args.arch,
            "weights": args.weights,
            "head": args.head,
            "tile_size": args.tile_size,
            "memory_budget": args.memory_budget,
        },
        "data": {"mpp": flag("mpp"), "num_workers": args.workers},
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
