"""The compute check of a streamed run: a plan whose tiles are far too small is warned of.

:func:`warn_costly_plan` is called by ``train --dry-run`` on the plan it prints and, through
:func:`check_compute`, before training on the plan of the first usable training slide.
"""

from __future__ import annotations

import logging

from gigastream.models.streaming_mil import StreamingMIL, StreamingMILConfig
from gigastream.streaming.planner import StreamingPlan
from gigastream.train.config import RunConfig
from gigastream.train.data import check_slide_input
from gigastream.train.preparation import PreparedRun
from gigastream.wsi.reader import SlideError, SlideReader

logger = logging.getLogger(__name__)

#: A streaming plan that computes more than this many times a conventional forward+backward
#: is warned of (:func:`warn_costly_plan`): its tiles are far smaller than they need to be.
COSTLY_COMPUTE_RATIO = 3.0


def warn_costly_plan(plan: StreamingPlan, model: StreamingMILConfig) -> float:
    """Warn (one line) when ``plan`` computes more than :data:`COSTLY_COMPUTE_RATIO` times a
    conventional forward+backward, naming the setting that causes it; its compute ratio.

    Example: ``--tile-size 8`` on a ResNet recomputes each tile's receptive-field overlap
    hundreds of times (``est. compute 464x conventional``).
    """
    ratio = plan.est_flops / max(plan.conventional_flops, 1.0)
    if ratio <= COSTLY_COMPUTE_RATIO:
        return ratio
    if model.tile_size is not None:
        cause = f"--tile-size {model.tile_size} (model.tile_size)"
        fix = f"use a larger --tile-size, e.g. {max(512, 4 * model.tile_size)}"
    else:
        cause = f"--memory-budget {model.memory_budget} (model.memory_budget)"
        fix = "raise --memory-budget (or set a --tile-size of 512 or more)"
    logger.warning(
        "%s: the streaming plan of input %s computes ~%.0fx a conventional forward+backward "
        "(tiles far smaller than the trunk's receptive field are recomputed): %s; "
        "train --dry-run prints the plan",
        cause,
        "x".join(str(n) for n in plan.input_shape[2:]),
        ratio,
        fix,
    )
    return ratio


def check_compute(model: StreamingMIL, prepared: PreparedRun, config: RunConfig) -> None:
    """:func:`warn_costly_plan` for the first usable training slide (before training): the
    plan :func:`~gigastream.train.preparation.prepare` made, else planned here; a slide
    that cannot be planned is left to training, which reports it."""
    from gigastream import precision as precisions

    if prepared.plan is not None:
        warn_costly_plan(prepared.plan, config.model)
        return
    from gigastream.wsi.source import SlideSource

    data = config.data
    dtype = precisions.compute_dtype(config.train.precision)
    for row in prepared.train_rows[:3]:
        try:
            with SlideReader.open(row.path, mpp=row.mpp, backend=data.backend) as slide:
                check_slide_input(slide, row.slide_id, data)  # absurd sizes are skipped
                shape = tuple(SlideSource(slide, mpp=data.mpp).shape)
            # planned for this host: asking a GPU for its free memory would initialise CUDA
            # before Lightning starts its processes (a forked DDP worker cannot use it)
            plan = model.trunk.plan(shape, dtype, lazy_input=True, device="cpu")
        except (SlideError, ValueError, RuntimeError) as exc:  # StreamingError: a ValueError
            logger.debug("no compute check on %s: %s", row.slide_id, exc)
            continue
        warn_costly_plan(plan, config.model)
        return


__all__ = ["COSTLY_COMPUTE_RATIO", "check_compute", "warn_costly_plan"]
