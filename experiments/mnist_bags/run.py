"""One MNIST-bags run: train and evaluate a bag model, write its run folder.

Usage (from the repository root; ``--help`` lists every flag)::

    .venv/bin/python experiments/mnist_bags/run.py --config experiments/mnist_bags/config.yaml \
        --strategy accumulate --bag-size 500 --out out/mnist_bags/one

Training runs on the project's one engine (``MILClassifier`` in the ``Trainer`` of
``gigastream.train.trainer.build_trainer``); the experiment is in ``bags.py`` next to this
file, the MNIST data in ``mnist.py``. ``OUT`` receives ``metrics.json``,
``test_predictions.csv`` and ``checkpoints/best.ckpt``; one JSON line of the main numbers is
printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from gigastream.cli import common

HELP = "MIL on bags of MNIST digits (positive: holds nines) with a chosen training strategy"

# flag -> (config path, type, help): every flag sets one MnistBagsConfig field
_FLAGS = {
    "strategy": (("patches", "strategy"), str, "baseline (whole bag), accumulate or sample"),
    "bag_size": (("bag_size",), int, "digits per bag N"),
    "train_bags": (("train_bags",), int, "training bags"),
    "val_bags": (("val_bags",), int, "validation bags (best checkpoint)"),
    "test_bags": (("test_bags",), int, "test bags"),
    "epochs": (("train", "epochs"), int, "passes over the training bags"),
    "seed": (("train", "seed"), int, "seed of bags, initialisation and sampling"),
    "key_fraction": (("key_fraction",), float, "fraction of nines in a positive bag"),
    "head": (("model", "head"), str, "MIL head name (see gigastream.list_mil_heads())"),
    "chunk_size": (("patches", "chunk_size"), int, "instances per chunk (accumulate, eval)"),
    "sample_size": (("patches", "sample_size"), int, "instances per step (sample)"),
    "memory_budget_mib": (
        ("patches", "memory_budget_mib"),
        float,
        "accumulate: MiB for chunks that keep their graph",
    ),
    "bags_per_step": (
        ("train", "accumulate_grad_batches"),
        int,
        "bags per optimiser step (gradient accumulation over bags)",
    ),
    "lr": (("optim", "lr"), float, "AdamW learning rate (constant)"),
    "weight_decay": (("optim", "weight_decay"), float, "AdamW weight decay"),
    "precision": (("train", "precision"), str, "Lightning's name: 32 (float32) or 64 (float64)"),
    "device": (("train", "device"), str, "cpu, cuda, cuda:N or auto"),
    "threads": (("train", "threads"), int, "torch CPU threads (default: torch's)"),
}
_CHOICES = {"strategy": ["baseline", "accumulate", "sample"]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="experiments/mnist_bags/run.py", description=HELP)
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    parser.add_argument("--config", type=Path, help="YAML file of MnistBagsConfig fields")
    parser.add_argument(
        "--data",
        type=Path,
        help="folder with the MNIST/QMNIST IDX files "
        "(default: ../shared/data/mnist from the working directory or the repository)",
    )
    common.add_out(parser, "run folder: metrics.json, test_predictions.csv, checkpoints/")
    common.add_progress(parser)
    for name, (_, kind, text) in _FLAGS.items():
        parser.add_argument(
            "--" + name.replace("_", "-"), type=kind, choices=_CHOICES.get(name), help=text
        )
    return parser


def _default_data() -> Path:
    from gigastream.cli.common import find_shared_data

    found = find_shared_data("mnist")
    if not found:
        raise FileNotFoundError(
            "no MNIST data: pass --data FOLDER with t10k-images-idx3-ubyte.gz and "
            "t10k-labels-idx1-ubyte.gz (none found in ../shared/data/mnist)"
        )
    return found[0]


def overrides(args: argparse.Namespace) -> dict:
    """The config settings given by flags (nested as the config's sections)."""
    values: dict = {}
    for name, (path, _, _) in _FLAGS.items():
        value = getattr(args, name)
        if value is not None:
            section = values
            for key in path[:-1]:
                section = section.setdefault(key, {})
            section[path[-1]] = value
    if args.data is not None:
        values["data"] = str(args.data)
    if args.no_progress:
        values.setdefault("train", {})["progress"] = False
    return values


def run(args: argparse.Namespace) -> int:
    common.quiet_lightning(args)
    from bags import MnistBagsConfig, run_mnist_bags

    from gigastream.train.config_files import load_config, read_yaml

    values = read_yaml(args.config) if args.config is not None else {}
    source = str(args.config) if args.config is not None else "flags"
    config = load_config(values, overrides(args), source=source, cls=MnistBagsConfig)
    if config.data is None:
        config.data = str(_default_data())
    result = run_mnist_bags(config, args.out)
    logging.getLogger("experiments.mnist_bags").info("wrote %s", args.out / "metrics.json")
    keys = ("test_auc", "train_seconds", "seconds_per_bag", "peak_rss_mib")
    print(json.dumps({k: result[k] for k in keys}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the experiment; the exit code (1 with one line naming the problem on bad input)."""
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose < 2:  # Lightning's advice that does not apply: bags are in memory
        for message in (".*LeafSpec.*", ".*does not have many workers.*"):
            warnings.filterwarnings("ignore", message=message)
    try:
        return run(args)
    except KeyboardInterrupt as exc:
        print(f"mnist_bags: interrupted: {exc or 'stopped'}", file=sys.stderr)
        return 130
    except OSError as exc:  # no MNIST files, unwritable --out, full disk, ...
        if args.verbose >= 2:
            raise
        from gigastream.train.files import describe_os_error

        print(f"mnist_bags: error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    except (ValueError, RuntimeError) as exc:  # the messages name the problem and the fix
        if args.verbose >= 2:
            raise
        print(f"mnist_bags: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
