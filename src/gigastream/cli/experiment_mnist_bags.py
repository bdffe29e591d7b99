"""``gigastream experiment mnist-bags``: train and evaluate one MNIST-bags run, write JSON.

Training runs on the project's one engine (``MILClassifier`` in a Lightning ``Trainer``);
see :func:`gigastream.train.mil_experiment.run_mnist_bags`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

COMMAND = ("experiment", "mnist-bags")
HELP = "MIL on bags of MNIST digits (positive: holds nines) with a chosen training strategy"

logger = logging.getLogger(__name__)

# flag -> (type, help) of the MnistBagsConfig fields that map one to one
_FLAGS = {
    "strategy": (str, "baseline (whole bag), accumulate (ChunkedEncoder) or sample"),
    "bag_size": (int, "digits per bag N"),
    "train_bags": (int, "training bags"),
    "val_bags": (int, "validation bags (best epoch)"),
    "test_bags": (int, "test bags"),
    "epochs": (int, "passes over the training bags"),
    "seed": (int, "seed of bags, initialisation and sampling"),
    "key_fraction": (float, "fraction of nines in a positive bag"),
    "head": (str, "MIL head name (see gigastream.list_mil_heads())"),
    "chunk_size": (int, "instances per chunk (accumulate, evaluation)"),
    "sample_size": (int, "instances per step (sample)"),
    "memory_budget_mib": (float, "accumulate: MiB for chunks that keep their graph"),
    "bags_per_step": (int, "bags per optimiser step (gradient accumulation over bags)"),
    "lr": (float, "AdamW learning rate (constant)"),
    "weight_decay": (float, "AdamW weight decay"),
    "dtype": (str, "float32 or float64"),
    "device": (str, "cpu, cuda or auto"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML file of MnistBagsConfig fields")
    parser.add_argument(
        "--data",
        type=Path,
        help="folder with the MNIST/QMNIST IDX files "
        "(default: ../shared/data/mnist from the working directory or repo)",
    )
    parser.add_argument("--out", type=Path, help="write the results JSON here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    choices = {
        "strategy": ["baseline", "accumulate", "sample"],
        "dtype": ["float32", "float64"],
        "device": ["cpu", "cuda", "auto"],
    }
    for name, (kind, text) in _FLAGS.items():
        parser.add_argument(
            "--" + name.replace("_", "-"), type=kind, choices=choices.get(name), help=text
        )


def _default_data() -> Path:
    import gigastream

    candidates = [
        Path("../shared/data/mnist"),
        Path(gigastream.__file__).resolve().parents[2] / ".." / "shared" / "data" / "mnist",
    ]
    for path in candidates:
        if path.is_dir():
            return path
    raise FileNotFoundError(
        "no MNIST data: pass --data FOLDER with t10k-images-idx3-ubyte.gz and "
        f"t10k-labels-idx1-ubyte.gz (looked in {', '.join(str(p) for p in candidates)})"
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from gigastream.cli.common import quiet_lightning

    quiet_lightning(args)

    from gigastream.train.config import load_config, read_yaml
    from gigastream.train.mil_experiment import MnistBagsConfig, run_mnist_bags

    values: dict = {}
    if args.config is not None:
        values.update(read_yaml(args.config))
        load_config(values, source=str(args.config), cls=MnistBagsConfig)  # names typos
    values.update({k: getattr(args, k) for k in _FLAGS if getattr(args, k) is not None})
    if args.data is not None:
        values["data"] = str(args.data)
    elif "data" not in values:
        values["data"] = str(_default_data())
    if args.no_progress:
        values["progress"] = False
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = MnistBagsConfig(**values)
    result = run_mnist_bags(config)
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        logger.info("wrote %s", args.out)
    print(
        json.dumps(
            {k: result[k] for k in ("test_auc", "train_seconds", "seconds_per_bag", "peak_rss_mib")}
        )
    )
    return 0
