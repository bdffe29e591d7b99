"""``gigastream demo``: synthetic slides -> a slide classifier trained end to end -> results.

Writes a synthetic dataset (``gigastream synth``: tissue cut from real H&E, positive slides
with small planted lesions whose pattern averages away when the slide is shrunk), then
trains with the same engine and defaults as ``gigastream train`` (slide labels only) and
writes ``metrics.json``, ``predictions.csv``, ``training_curve.png``, attention heatmaps
with the lesion contours (``heatmaps/``), checkpoints and ``config.yaml`` into ``--out``.

Settings: the demo's (:mod:`gigastream.train.demo`) < ``--config`` YAML (a ``synth``
section plus the sections of ``gigastream train``) < command-line flags.
"""

from __future__ import annotations

import argparse
import logging
import time

from gigastream.cli import common
from gigastream.train.demo import DEMO_SYNTH

COMMAND = ("demo",)
HELP = "train a slide classifier end to end on synthetic slides (~10 min on 2 CPU cores)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_out(parser)
    parser.add_argument(
        "--slides", type=int, help=f"synthetic slides (default {DEMO_SYNTH.slides})"
    )
    parser.add_argument(
        "--size",
        type=int,
        help=f"slide edge in level-0 px at 0.5 um/px (default {DEMO_SYNTH.size})",
    )
    common.add_sources(parser)
    common.add_training(parser)


def run(args: argparse.Namespace) -> int:
    common.quiet_lightning(args)
    package_logger = logging.getLogger("gigastream")
    level = package_logger.level
    if args.verbose == 0:  # a demo shows what it does: the library's INFO log lines
        package_logger.setLevel(logging.INFO)
    try:
        return _run(args)
    finally:
        package_logger.setLevel(level)


def _configs(args: argparse.Namespace):
    """The demo's synthetic data and run settings < ``--config`` < flags (validated)."""
    from gigastream.train.config_files import load_config, merge, read_yaml
    from gigastream.train.demo import DEMO_RUN
    from gigastream.wsi.synth import SynthConfig

    values = read_yaml(args.config) if args.config else {}
    source = str(args.config) if args.config else "config"
    synth_values = merge(
        values.pop("synth", None) or {},
        {"slides": args.slides, "size": args.size, "seed": args.seed},
    )
    size = synth_values.get("size", DEMO_SYNTH.size)
    lesion_size = synth_values.get("lesion_size", DEMO_SYNTH.lesion_size)
    if isinstance(size, int) and isinstance(lesion_size, int):  # small slides, small lesions
        synth_values["lesion_size"] = min(lesion_size, size // 4)
    synth = load_config(synth_values, source=source, cls=SynthConfig, base=DEMO_SYNTH)
    manifest = args.out / "data" / "manifest.csv"
    overrides = merge(common.run_overrides(args), {"manifest": str(manifest)})
    config = load_config(values, overrides, source=source, base=DEMO_RUN)
    return synth, config


def _run(args: argparse.Namespace) -> int:
    from gigastream.train.demo import write_demo_data
    from gigastream.train.fitting import check_out, fit
    from gigastream.train.preparation import prepare

    synth, config = _configs(args)  # validated before any write
    check_out(args.out, args.resume, args.overwrite)
    start = time.perf_counter()
    sources = args.sources or common.find_shared_data("images", "slides")
    write_demo_data(args.out, synth, sources, args.resume, progress=config.train.progress)
    synth_seconds = time.perf_counter() - start
    print(f"wrote {synth.slides} synthetic slides of {synth.size}^2 px in {synth_seconds:.1f} s")
    prepared = prepare(config)
    metrics = fit(config, args.out, resume=args.resume, overwrite=args.overwrite, prepared=prepared)
    total = time.perf_counter() - start
    _print_result(args.out, metrics, prepared.class_names[-1], total, synth_seconds)
    return 0


def _print_result(out, metrics: dict, positive: str, total: float, synth_seconds: float) -> None:
    from gigastream.train.recorder import scores_words

    final = metrics["final"]
    print(
        f"done in {total:.0f} s (data {synth_seconds:.0f} s, training+validation "
        f"{metrics['seconds']:.0f} s), peak RSS {metrics['peak_rss_mib']:.0f} MiB\n"
        f"validation ({final['slides']} held-out slides): {scores_words(final)}, "
        f"loss {final['val_loss']:.4f} (best epoch {metrics['best_epoch']})\n"
        f"p({positive}) range on validation slides: "
        f"{final['prob_range'][0]:.3f}..{final['prob_range'][1]:.3f}\n"
        f"outputs in {out}: metrics.json, predictions.csv, training_curve.png, heatmaps/, "
        "checkpoints/, config.yaml"
    )
