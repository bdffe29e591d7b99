"""The trunk's BatchNorm statistics recalibrated on training slides before the first epoch.

A randomly initialised trunk's BatchNorm statistics (mean 0, variance 1) do not describe
slides; streaming needs BatchNorm frozen (eval mode), so a run recalibrates them once on a
few training slides (``train.bn_calibration``; data-dependent initialisation) with
:func:`~gigastream.streaming.batchnorm.calibrate_batchnorm` and then keeps them.

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

from gigastream.models.streaming_mil import StreamingMIL
from gigastream.train.config import DataConfig
from gigastream.train.data import SlideExamples
from gigastream.wsi.reader import SlideError

logger = logging.getLogger(__name__)


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
    """
    from gigastream.streaming.batchnorm import calibrate_batchnorm

    order = np.random.default_rng([seed, 11]).permutation(len(dataset)).tolist()

    def inputs() -> Iterator[torch.Tensor]:
        used = 0
        for index in order:
            if used == slides:
                return
            example = dataset[index]
            if example.error is not None:
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
                continue
            finally:
                opened.close()
            used += 1
            yield crop.to(next(model.parameters()).device)

    was_training = model.training
    model.eval()
    try:
        count = calibrate_batchnorm(model.trunk.trunk, inputs())
    finally:
        model.train(was_training)
    logger.info("calibrated the trunk's BatchNorm statistics on %d training slides", count)
    return count


__all__ = ["calibrate_trunk"]
