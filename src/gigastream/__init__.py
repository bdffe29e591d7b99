"""gigastream: exact, memory-bounded end-to-end training on gigapixel images and huge bags.

The public API is small; names are imported lazily so that ``import gigastream`` stays
cheap and has no side effects.

Example:
    >>> import torch, torchvision
    >>> from gigastream import StreamingModule
    >>> trunk = torch.nn.Sequential(*list(torchvision.models.resnet18().children())[:-2]).eval()
    >>> streamed = StreamingModule(trunk, tile_size=512)
    >>> fmap = streamed(torch.randn(1, 3, 640, 640))  # == trunk(image), in bounded memory
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_EXPORTS: dict[str, str] = {
    "StreamingModule": "gigastream.streaming.module",
    "StreamingPlan": "gigastream.streaming.planner",
    "piecewise_recompute": "gigastream.streaming.recompute",
    "ChunkedEncoder": "gigastream.mil.chunked",
    "create_mil_head": "gigastream.mil.heads",
    "list_mil_heads": "gigastream.mil.heads",
    "StreamingMIL": "gigastream.models.streaming_mil",
    "StreamingMILConfig": "gigastream.models.streaming_mil",
    "SlideReader": "gigastream.wsi.reader",
    "SlideError": "gigastream.wsi.reader",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name])
        return getattr(module, name)
    raise AttributeError(f"module 'gigastream' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
