"""Streaming: the piecewise-recompute primitive, analytic tile geometry, planner, StreamingModule."""

from gigastream.streaming.geometry import (
    AxisGeometry,
    Geometry,
    StreamingError,
    describe,
    register_geometry,
)
from gigastream.streaming.memory import tune_cpu_allocator
from gigastream.streaming.module import StreamingModule, batchnorm_eval
from gigastream.streaming.planner import StreamingPlan, plan_streaming, split_segments
from gigastream.streaming.recompute import InputSource, Piece, piecewise_recompute

__all__ = [
    "AxisGeometry",
    "Geometry",
    "InputSource",
    "Piece",
    "StreamingError",
    "StreamingModule",
    "StreamingPlan",
    "describe",
    "batchnorm_eval",
    "piecewise_recompute",
    "plan_streaming",
    "register_geometry",
    "split_segments",
    "tune_cpu_allocator",
]
