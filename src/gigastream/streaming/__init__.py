"""Streaming: the piecewise-recompute primitive, analytic tile geometry, planner, StreamingModule.

Also :func:`~gigastream.streaming.batchnorm.freeze_batchnorm`, the one way to freeze
BatchNorm so that streaming (and chunked bag encoding) stays exact, and
:func:`~gigastream.streaming.folding.fold_batchnorm`, which folds frozen BatchNorms into the
convolutions before them (``StreamingModule(..., fold_batchnorm=True)``).
"""

from gigastream.streaming.batchnorm import FrozenBatchNorm, freeze_batchnorm
from gigastream.streaming.folding import fold_batchnorm
from gigastream.streaming.geometry import (
    AxisGeometry,
    Geometry,
    StreamingError,
    describe,
    register_geometry,
)
from gigastream.streaming.memory import tune_cpu_allocator
from gigastream.streaming.module import StreamingModule
from gigastream.streaming.planner import StreamingPlan, split_segments
from gigastream.streaming.recompute import InputSource, Piece, piecewise_recompute

__all__ = [
    "AxisGeometry",
    "FrozenBatchNorm",
    "Geometry",
    "InputSource",
    "Piece",
    "StreamingError",
    "StreamingModule",
    "StreamingPlan",
    "describe",
    "fold_batchnorm",
    "freeze_batchnorm",
    "piecewise_recompute",
    "register_geometry",
    "split_segments",
    "tune_cpu_allocator",
]
