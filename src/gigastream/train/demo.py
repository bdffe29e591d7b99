"""The demo's settings and data: synthetic slides for a slide classifier trained end to end.

``gigastream demo`` writes a synthetic dataset (:func:`write_demo_data`: tissue cut from
real H&E, positive slides with small planted lesions whose pattern averages away when the
slide is shrunk), then trains on it with the same engine and defaults as ``gigastream
train`` (slide labels only). Its settings are :data:`DEMO_SYNTH` and :data:`DEMO_RUN` <
a ``--config`` YAML file (a ``synth`` section plus the sections of a run) < flags.

Example:
    >>> from gigastream.train.config_files import load_config
    >>> load_config({"train": {"epochs": 2}}, base=DEMO_RUN).train.heatmaps
    6
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from gigastream.train.config import DataConfig, RunConfig, TrainConfig
from gigastream.wsi.synth import SynthConfig

logger = logging.getLogger(__name__)

#: The demo's dataset: small slides, many of them (level-0 px at 0.5 um/px).
DEMO_SYNTH = SynthConfig(slides=64, size=1024, lesion_size=160, block_size=256, seed=0)

#: The demo's run: the training defaults (the recipe) with one loader worker, six heatmaps and
#: a quarter of the slides held out (tissue settings scale to the small slides by themselves).
DEMO_RUN = RunConfig(
    data=DataConfig(num_workers=1), train=TrainConfig(heatmaps=6, val_fraction=0.25)
)


def write_demo_data(
    out: str | Path,
    synth: SynthConfig,
    sources: Sequence[str | Path],
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """The demo's dataset in ``out/data`` (kept when resuming a run that has one).

    Args:
        out: the demo's folder.
        synth: the synthetic slides.
        sources: real H&E images/slides to cut tissue from; none: a procedural texture
            (``out/procedural_he.png``, with a warning).
        resume: keep an existing ``out/data/manifest.csv``.
        progress: a progress bar.

    Returns:
        The manifest.
    """
    from gigastream.wsi.synth import procedural_he_image, synthesize_dataset

    out = Path(out)
    manifest = out / "data" / "manifest.csv"
    if resume and manifest.is_file():
        return manifest
    if not sources:
        out.mkdir(parents=True, exist_ok=True)
        sources = [procedural_he_image(out / "procedural_he.png", seed=synth.seed)]
        logger.warning(
            "no H&E images found (pass --sources): cutting tissue from a procedural texture, %s",
            sources[0],
        )
    return synthesize_dataset(out / "data", synth, sources, progress=progress)


__all__ = ["DEMO_RUN", "DEMO_SYNTH", "write_demo_data"]
