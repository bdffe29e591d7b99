"""One precision vocabulary for the whole project: Lightning's, mapped once to dtypes.

Every setting named ``precision`` (a run's ``train.precision``, ``bench streaming
--precision``, the throughput table of the planner) takes one of Lightning's names:

==============  ===================  ================  ===========
name            parameters           autocast          kind
==============  ===================  ================  ===========
``32-true``     float32              none              ``fp32``
``64-true``     float64              none              ``fp64``
``bf16-mixed``  float32              bfloat16          ``bf16``
``16-mixed``    float32              float16 (CUDA)    ``fp16``
==============  ===================  ================  ===========

``32`` and ``64`` are Lightning's short forms of ``32-true`` and ``64-true`` and mean the
same here. TF32 (CUDA tensor-core float32 arithmetic) is not a precision but a switch of
the float32 kernels: :func:`set_tf32`.

Example:
    >>> canonical("32"), param_dtype("64"), autocast_dtype("bf16-mixed")
    ('32-true', torch.float64, torch.bfloat16)
    >>> kind("16-mixed")
    'fp16'
"""

from __future__ import annotations

import torch

#: Accepted names (Lightning's), canonical first.
PRECISIONS = ("32-true", "64-true", "bf16-mixed", "16-mixed", "32", "64")

_CANONICAL = {"32": "32-true", "64": "64-true"}
_PARAM_DTYPE = {
    "32-true": torch.float32,
    "64-true": torch.float64,
    "bf16-mixed": torch.float32,
    "16-mixed": torch.float32,
}
_AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
_KIND = {"32-true": "fp32", "64-true": "fp64", "bf16-mixed": "bf16", "16-mixed": "fp16"}


def check(precision: str, setting: str = "precision") -> str:
    """The canonical name of ``precision``; ValueError naming ``setting`` and the valid names."""
    name = _CANONICAL.get(str(precision), str(precision))
    if name not in _PARAM_DTYPE:
        raise ValueError(
            f"{setting} must be one of {', '.join(PRECISIONS)} (Lightning's names), "
            f"got {precision!r}"
        )
    return name


def canonical(precision: str) -> str:
    """Lightning's full name: ``32`` -> ``32-true``, ``64`` -> ``64-true``, others as they are."""
    return check(precision)


def param_dtype(precision: str) -> torch.dtype:
    """The dtype parameters and inputs are kept in (float32 for mixed precision)."""
    return _PARAM_DTYPE[check(precision)]


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a mixed precision, ``None`` for the ``-true`` ones."""
    return _AUTOCAST.get(check(precision))


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype the arithmetic runs in: the autocast dtype, else the parameters' dtype."""
    return autocast_dtype(precision) or param_dtype(precision)


def kind(precision: str) -> str:
    """Short name of the arithmetic: ``fp32``, ``fp64``, ``bf16`` or ``fp16``."""
    return _KIND[check(precision)]


def needs_cuda(precision: str) -> bool:
    """``16-mixed`` (float16 autocast with a gradient scaler) runs on CUDA only."""
    return check(precision) == "16-mixed"


def set_tf32(enabled: bool) -> None:
    """Turn TF32 on or off for CUDA matmuls and cuDNN convolutions (the one switch)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


__all__ = [
    "PRECISIONS",
    "autocast_dtype",
    "canonical",
    "check",
    "compute_dtype",
    "kind",
    "needs_cuda",
    "param_dtype",
    "set_tf32",
]
