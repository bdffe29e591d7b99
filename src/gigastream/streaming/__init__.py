"""Streaming: the piecewise-recompute primitive, analytic tile geometry, planner, StreamingModule."""

from gigastream.streaming.geometry import (
    AxisGeometry,
    Geometry,
    StreamingError,
    describe,
    register_geometry,
)
from gigastream.streaming.module import StreamingModule, freeze_batchnorm
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
    "freeze_batchnorm",
    "piecewise_recompute",
    "plan_streaming",
    "register_geometry",
    "split_segments",
]
