"""The trunk's BatchNorm statistics recalibrated on training slides before the first epoch.

A randomly initialised trunk's BatchNorm statistics (mean 0, variance 1) do not describe
slides; streaming needs BatchNorm frozen (eval mode), so a run recalibrates them once on a
few training slides (``train.bn_calibration``; data-dependent initialisation) with
:func:`~gigastream.streaming.batchnorm.calibrate_batchnorm` and then keeps them. A patch
encoder's BatchNorm (frozen too: chunked gradients are exact only then) is calibrated the
same way on patches of the training slides (:func:`calibrate_encoder`);
:func:`calibrate_model` does what the run's settings say for either model kind.

Example:
    >>> dataset = SlideExamples(prepared.train_rows, prepared.class_names, config.data)  # doctest: +SKIP
    >>> calibrate_trunk(model, dataset, slides=8, data=config.data, seed=0)  # doctest: +SKIP
    8
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np
import torch

from gigastream.models.patch_mil import PatchMIL
from gigastream.models.streaming_mil import StreamingMIL
from gigastream.streaming.batchnorm import FrozenBatchNorm, is_batchnorm
from gigastream.train.config import DataConfig, RunConfig
from gigastream.train.data import SlideExamples, describe_skipped
from gigastream.train.files import RunError
from gigastream.wsi.reader import SlideError

logger = logging.getLogger(__name__)


def _none_usable(skipped: dict[str, str], what: str) -> RunError:
    """The error of a calibration that found no usable training slide."""
    return RunError(
        f"no usable training slide: all {len(skipped)} were skipped ({what} BatchNorm "
        f"calibration): {describe_skipped(skipped)}; fix or replace the slide files (or "
        "their rows of the manifest)"
    )


def calibrate_trunk(
    model: StreamingMIL,
    dataset: SlideExamples,
    slides: int,
    data: DataConfig,
    seed: int = 0,
    max_pixels: int = 1024 * 1024,
) -> int:
    """Recalibrate the trunk's BatchNorm statistics on training slides (see ``bn_calibration``).

    Each of ``slides`` training slides (seeded choice) contributes its whole input, or a
    centred crop of at most ``max_pixels`` for large slides, forwarded one slide at a
    time; the statistics are the average over slides.

    Returns:
        The number of slides used.

    Raises:
        RunError: no training slide is usable; the message names every one and why.
    """
    from gigastream.streaming.batchnorm import calibrate_batchnorm

    order = np.random.default_rng([seed, 11]).permutation(len(dataset)).tolist()
    skipped: dict[str, str] = {}

    def inputs() -> Iterator[torch.Tensor]:
        used = 0
        for index in order:
            if used == slides:
                return
            example = dataset[index]
            if example.error is not None:
                skipped[example.slide_id] = example.error
                continue
            opened = example.open(data, "cpu")
            try:
                x = opened.x
                _, _, height, width = x.shape
                edge = int(math.sqrt(max_pixels))
                h, w = min(height, edge), min(width, edge)
                y0, x0 = (height - h) // 2, (width - w) // 2
                index_ = (slice(None), slice(None), slice(y0, y0 + h), slice(x0, x0 + w))
                crop = x[index_] if isinstance(x, torch.Tensor) else x.read(index_)
            except SlideError as exc:  # training will skip and list it too
                logger.warning("BatchNorm calibration skips %s: %s", example.slide_id, exc)
                skipped[example.slide_id] = str(exc)
                continue
            finally:
                opened.close()
            used += 1
            yield crop.to(next(model.parameters()).device)
        if not used:
            raise _none_usable(skipped, "the trunk's")

    was_training = model.training
    model.eval()
    try:
        count = calibrate_batchnorm(model.trunk.trunk, inputs())
    finally:
        model.train(was_training)
    logger.info("calibrated the trunk's BatchNorm statistics on %d training slides", count)
    return count


def calibrate_encoder(
    model: PatchMIL, dataset: SlideExamples, slides: int, data: DataConfig, seed: int = 0
) -> int:
    """Recalibrate a patch encoder's BatchNorm statistics on ``slides`` training bags
    (seeded choice): ``chunk_size`` patches spread over each bag, one bag per batch.

    Returns:
        The number of bags used.

    Raises:
        RunError: no training slide is usable; the message names every one and why.
    """
    from gigastream.mil.strategies import take_instances
    from gigastream.streaming.batchnorm import calibrate_batchnorm

    order = np.random.default_rng([seed, 11]).permutation(len(dataset)).tolist()
    device = next(model.parameters()).device
    skipped: dict[str, str] = {}

    def batches() -> Iterator[torch.Tensor]:
        used = 0
        for index in order:
            if used == slides:
                return
            example = dataset[index]
            if example.error is not None:
                skipped[example.slide_id] = example.error
                continue
            opened = example.open(data, device)
            try:
                n = opened.x.shape[0]
                picks = torch.linspace(0, n - 1, min(n, model.config.chunk_size)).round().long()
                patches = take_instances(opened.x, picks)
            except SlideError as exc:
                logger.warning("BatchNorm calibration skips %s: %s", example.slide_id, exc)
                skipped[example.slide_id] = str(exc)
                continue
            finally:
                opened.close()
            used += 1
            yield patches
        if not used:
            raise _none_usable(skipped, "the patch encoder's")

    was_training = model.training
    model.eval()
    try:
        count = calibrate_batchnorm(model.encoder, batches())
    finally:
        model.train(was_training)
    logger.info("calibrated the encoder's BatchNorm statistics on %d training bags", count)
    return count


def calibrate_model(
    model: StreamingMIL | PatchMIL, config: RunConfig, dataset: SlideExamples, data: DataConfig
) -> int:
    """Calibrate the BatchNorm of a run's model as ``train.bn_calibration`` says (``None``:
    8 slides for randomly initialised weights, else none); a model without BatchNorm is left
    alone. Returns the number of slides used."""
    if config.model.kind == "features":  # a head on fixed features: nothing to calibrate
        return 0
    patches = isinstance(model, PatchMIL)
    slides = config.train.bn_calibration
    if slides is None:  # auto: random initialisation only
        weights = config.patches.encoder.weights if patches else config.model.weights
        slides = 8 if weights is None else 0
    network = model.encoder if patches else model.trunk.trunk
    if not slides or not any(
        is_batchnorm(m) or isinstance(m, FrozenBatchNorm) for m in network.modules()
    ):
        return 0
    if patches:
        return calibrate_encoder(model, dataset, slides, data, config.train.seed)
    return calibrate_trunk(model, dataset, slides, data, config.train.seed)


__all__ = ["calibrate_encoder", "calibrate_model", "calibrate_trunk"]
