"""The resolution experiment: one recipe trained at several resolutions and seeds, tested.

Usage (from the repository root; ``--help`` lists every flag)::

    .venv/bin/python experiments/resolution/run.py --manifest data/manifest.csv \
        --split-ratio 3:1:2 --out out/resolution/runs --mpp 1 2 4 8 --seeds 0 1 2

The sweep is in ``sweep.py`` next to this file, its plot in ``plot.py``; see ``README.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from gigastream.cli import common

HELP = "train the same recipe at several resolutions and seeds; test AUC and lesion attention"


def _ratio(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(p) for p in text.split(":"))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected TRAIN:VAL:TEST, e.g. 3:1:2, got {text!r}")
    return parts  # type: ignore[return-value]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--manifest",
        type=Path,
        required=True,
        help="CSV slide_id,path,label,...,split with split = train/val/test (or --split-ratio)",
    )
    common.add_out(parser, "folder of the runs (one training run per resolution and seed)")
    parser.add_argument(
        "--results",
        type=Path,
        help="folder for results.json, runs.json, summary.md, resolution.png, heatmaps/ "
        "(default: --out)",
    )
    parser.add_argument(
        "--mpp",
        dest="mpps",
        type=float,
        nargs="+",
        default=[1.0, 2.0, 4.0, 8.0],
        help="resolutions in um/px (default: %(default)s)",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: %(default)s)"
    )
    parser.add_argument(
        "--split-ratio",
        type=_ratio,
        metavar="TRAIN:VAL:TEST",
        help="split the manifest's cases into stratified train/val/test parts, e.g. 3:1:2 "
        "(written to OUT/manifest.csv); default: the manifest's split column",
    )
    parser.add_argument("--split-seed", type=int, default=0, help="seed of --split-ratio")
    parser.add_argument(
        "--lesions",
        type=Path,
        help="folder of ground-truth lesion masks <slide_id>.png, for evaluation only "
        "(default: a synthetic dataset's lesions/ folder)",
    )
    parser.add_argument("--heatmap-slide", help="test slide drawn at every resolution")
    common.add_recipe(parser)  # the run settings, as for gigastream train
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="train every run in this process (default: a fresh process each, for peak memory)",
    )
    parser.add_argument("--overwrite", action="store_true", help="retrain finished runs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="experiments/resolution/run.py", description=HELP)
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    add_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    common.quiet_lightning(args)
    from sweep import ResolutionSweep, logger, run_resolution, summary_markdown

    from gigastream.train.config import ConfigError
    from gigastream.train.config_files import merge, read_yaml

    values = read_yaml(args.config) if args.config else {}
    for key in ("manifest", "splits", "fold"):
        if values.get(key) is not None:
            raise ConfigError(
                f"{args.config}: '{key}' is set by the experiment (--manifest with its split "
                "column); remove it from the config"
            )
    flags = common.run_overrides(args)  # data.mpp and train.seed come from the sweep
    sweep = ResolutionSweep(
        manifest=str(args.manifest),
        out=str(args.out),
        results=str(args.results) if args.results else None,
        mpps=list(args.mpps),
        seeds=list(args.seeds),
        run=merge(values, flags),
        split_ratio=args.split_ratio,
        split_seed=args.split_seed,
        lesions=str(args.lesions) if args.lesions else None,
        heatmap_slide=args.heatmap_slide,
        isolate=not args.in_process,
        overwrite=args.overwrite,
    )
    loggers = [logging.getLogger(name) for name in ("gigastream", logger.name)]
    levels = [log.level for log in loggers]
    if args.verbose == 0:  # the runs' epoch lines and the sweep's lines are the progress
        for log in loggers:
            log.setLevel(logging.INFO)
    try:
        rows = run_resolution(sweep, progress=not args.no_progress)
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
    print(summary_markdown(rows), end="")
    print(f"results in {args.results or args.out}: results.json, runs.json, summary.md, ...")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the experiment; the exit code (1 with one line naming the problem on bad input)."""
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose < 2:  # noise from Lightning's internals
        for message in (".*LeafSpec.*", ".*does not have many workers.*", ".*sync_dist=True.*"):
            warnings.filterwarnings("ignore", message=message)
    try:
        return run(args)
    except KeyboardInterrupt as exc:
        print(f"resolution: interrupted: {exc or 'stopped'}", file=sys.stderr)
        return 130
    except OSError as exc:  # unwritable --out, full disk, ...
        if args.verbose >= 2:
            raise
        from gigastream.train.files import describe_os_error

        print(f"resolution: error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    except (ValueError, RuntimeError) as exc:  # the messages name the problem and the fix
        if args.verbose >= 2:
            raise
        print(f"resolution: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
