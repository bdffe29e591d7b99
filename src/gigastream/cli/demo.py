"""``gigastream demo``: synthetic slides -> a slide classifier trained end to end -> results.

Writes a synthetic dataset (``gigastream synth``: tissue cut from real H&E, positive slides
with small planted lesions whose pattern averages away when the slide is shrunk), then
trains with the same engine and recipe as ``gigastream train`` (slide labels only) and
writes ``metrics.json``, ``predictions.csv``, ``training_curve.png``, attention heatmaps
with the lesion contours (``heatmaps/``), checkpoints and ``config.yaml`` into ``--out``.

Settings: the defaults below < ``--config`` YAML (a ``synth`` section plus the sections of
``gigastream train``) < command-line flags.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from gigastream.cli import common

logger = logging.getLogger(__name__)

COMMAND = ("demo",)
HELP = "train a slide classifier end to end on synthetic slides (~10 min on 2 CPU cores)"

#: Where the demo looks for real H&E to cut synthetic tissue from (first existing wins).
SOURCE_CANDIDATES = ("../shared/data", "shared/data")

#: The demo's dataset: small slides, many of them (level-0 px at 0.5 um/px).
DEMO_SYNTH: dict[str, Any] = {
    "slides": 64,
    "size": 1024,
    "lesion_size": 160,
    "block_size": 256,
    "seed": 0,
}
#: The demo's run settings on top of the training defaults (the recipe).
DEMO_RUN: dict[str, Any] = {
    "data": {"num_workers": 1},
    "train": {"heatmaps": 6, "val_fraction": 0.25},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_out(parser)
    parser.add_argument(
        "--slides", type=int, help=f"synthetic slides (default {DEMO_SYNTH['slides']})"
    )
    parser.add_argument(
        "--size",
        type=int,
        help=f"slide edge in level-0 px at 0.5 um/px (default {DEMO_SYNTH['size']})",
    )
    parser.add_argument(
        "--sources",
        type=Path,
        nargs="+",
        help="H&E images/slides to cut synthetic tissue from (default: ../shared/data)",
    )
    common.add_training(parser)


def _find_sources(given: list[Path] | None) -> list[Path]:
    if given:
        return given
    roots = [Path.cwd() / c for c in SOURCE_CANDIDATES]
    roots.append(Path(__file__).resolve().parents[3] / SOURCE_CANDIDATES[0])  # repo checkout
    for root in roots:
        found = [root / sub for sub in ("images", "slides") if (root / sub).is_dir()]
        if found:
            return found
    return []


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


def _run(args: argparse.Namespace) -> int:
    from gigastream.train.config import load_config, merge, read_yaml
    from gigastream.train.engine import check_out, fit, prepare
    from gigastream.wsi.synth import SynthConfig, procedural_he_image, synthesize_dataset

    values = read_yaml(args.config) if args.config else {}
    source = str(args.config) if args.config else "config"
    synth_values = merge(DEMO_SYNTH, values.pop("synth", None) or {})
    synth_values = merge(
        synth_values, {"slides": args.slides, "size": args.size, "seed": args.seed}
    )
    if isinstance(synth_values.get("size"), int) and isinstance(
        synth_values.get("lesion_size"), int
    ):
        # small slides, small lesions
        synth_values["lesion_size"] = min(synth_values["lesion_size"], synth_values["size"] // 4)
    synth = load_config(synth_values, source=source, cls=SynthConfig)
    out: Path = args.out
    manifest = out / "data" / "manifest.csv"
    run_values = merge(DEMO_RUN, values)  # tissue settings scale to the small slides by themselves
    overrides = merge(common.run_overrides(args), {"manifest": str(manifest)})
    config = load_config(run_values, overrides, source=source)  # validated before any write
    check_out(out, args.resume, args.overwrite)  # before writing anything

    start = time.perf_counter()
    sources = _find_sources(args.sources)
    if not sources:
        out.mkdir(parents=True, exist_ok=True)
        sources = [procedural_he_image(out / "procedural_he.png", seed=synth.seed)]
        logger.warning(
            "no H&E images found (pass --sources): cutting tissue from a procedural texture, %s",
            sources[0],
        )
    if not (args.resume and manifest.is_file()):
        synthesize_dataset(out / "data", synth, sources, progress=config.train.progress)
    synth_seconds = time.perf_counter() - start
    print(f"wrote {synth.slides} synthetic slides of {synth.size}^2 px in {synth_seconds:.1f} s")
    prepared = prepare(config)
    metrics = fit(config, out, resume=args.resume, overwrite=args.overwrite, prepared=prepared)

    total = time.perf_counter() - start
    final = metrics["final"]
    positive = prepared.class_names[-1]
    auc = final["val_auc"]
    print(
        f"done in {total:.0f} s (data {synth_seconds:.0f} s, training+validation "
        f"{metrics['seconds']:.0f} s), peak RSS {metrics['peak_rss_mib']:.0f} MiB\n"
        f"validation ({final['slides']} held-out slides): AUC "
        f"{'n/a' if auc is None else f'{auc:.3f}'}, accuracy {final['val_accuracy']:.3f}, "
        f"loss {final['val_loss']:.4f} (best epoch {metrics['best_epoch']})\n"
        f"p({positive}) range on validation slides: "
        f"{final['prob_range'][0]:.3f}..{final['prob_range'][1]:.3f}\n"
        f"outputs in {out}: metrics.json, predictions.csv, training_curve.png, heatmaps/, "
        "checkpoints/, config.yaml"
    )
    return 0
