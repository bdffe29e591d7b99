"""Analytic tile geometry of local (convolution-like) layers.

Every layer gigastream can stream maps an input axis of length ``n`` to an output axis in
which output position ``j`` depends only on input positions ``j * stride + lo ..
j * stride + hi`` (``lo`` is minus the left padding; positions outside ``[0, n)`` are the
layer's padding). Composing layers composes these windows; a residual block takes the
union of the windows of its branches. From the composed window we know, for any block of
output positions, exactly which input pixels it needs and how far padding at an artificial
tile edge can reach — no probing with all-ones tensors, no cache files.

The geometry of a module comes from :func:`describe`. Custom modules describe themselves
with a ``stream_geometry(self) -> Geometry`` method or are registered with
:func:`register_geometry`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

# (effective kernel, stride, pad_left, pad_right) of one windowed operation along one axis
SizeStep = tuple[int, int, int, int]


class StreamingError(ValueError):
    """A module, input or setting that cannot be streamed exactly; the message says why and the fix."""


@dataclass(frozen=True)
class AxisGeometry:
    """Geometry along one spatial axis.

    Attributes:
        stride: output stride (input pixels per output pixel).
        lo: output ``j`` needs input from ``j * stride + lo`` (``lo <= 0`` is the padding).
        hi: ... up to and including ``j * stride + hi``.
        steps: the windowed operations in order, to compute output sizes.
    """

    stride: int = 1
    lo: int = 0
    hi: int = 0
    steps: tuple[SizeStep, ...] = ()

    @property
    def receptive_field(self) -> int:
        return self.hi - self.lo + 1

    def then(self, nxt: AxisGeometry) -> AxisGeometry:
        """Geometry of ``self`` followed by ``nxt``."""
        return AxisGeometry(
            stride=self.stride * nxt.stride,
            lo=nxt.lo * self.stride + self.lo,
            hi=nxt.hi * self.stride + self.hi,
            steps=self.steps + nxt.steps,
        )

    def out_size(self, n: int) -> int:
        """Output length for an input of length ``n`` (0 if the input is too small)."""
        for kernel, stride, pad_lo, pad_hi in self.steps:
            span = n + pad_lo + pad_hi - kernel
            if span < 0:
                return 0
            n = span // stride + 1
        return n

    def input_span(self, out_start: int, out_stop: int, in_size: int) -> tuple[int, int]:
        """Input range ``[a, b)`` a tile must read to compute outputs ``[out_start, out_stop)``.

        ``a`` is aligned to the stride grid so the tile's output grid coincides with the
        full image's; tile edges inside the image lie outside every owned output's window,
        so the padding a layer applies there only reaches outputs the tile does not own.
        """
        first = out_start * self.stride + self.lo
        a = 0 if first <= 0 else (first // self.stride) * self.stride
        b = min(in_size, (out_stop - 1) * self.stride + self.hi + 1)
        return a, b


@dataclass(frozen=True)
class Geometry:
    """Geometry of a module along (height, width)."""

    h: AxisGeometry = field(default_factory=AxisGeometry)
    w: AxisGeometry = field(default_factory=AxisGeometry)

    @classmethod
    def window(
        cls,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        pad: tuple[tuple[int, int], tuple[int, int]],
        dilation: tuple[int, int] = (1, 1),
    ) -> Geometry:
        """A sliding-window operation (convolution or pooling)."""
        axes = []
        for k, s, (pl, pr), d in zip(kernel, stride, pad, dilation, strict=True):
            k_eff = d * (k - 1) + 1
            axes.append(AxisGeometry(s, -pl, k_eff - 1 - pl, ((k_eff, s, pl, pr),)))
        return cls(axes[0], axes[1])

    def then(self, nxt: Geometry) -> Geometry:
        return Geometry(self.h.then(nxt.h), self.w.then(nxt.w))

    @staticmethod
    def chain(*parts: Geometry) -> Geometry:
        out = Geometry()
        for p in parts:
            out = out.then(p)
        return out

    @staticmethod
    def residual(main: Geometry, shortcut: Geometry) -> Geometry:
        """Branches whose outputs are added: union of windows, output sizes of ``main``."""
        axes = []
        for m, s in ((main.h, shortcut.h), (main.w, shortcut.w)):
            if m.stride != s.stride:
                raise StreamingError(
                    f"residual branches have different strides ({m.stride} vs {s.stride})"
                )
            axes.append(AxisGeometry(m.stride, min(m.lo, s.lo), max(m.hi, s.hi), m.steps))
        return Geometry(axes[0], axes[1])

    @property
    def stride(self) -> tuple[int, int]:
        return (self.h.stride, self.w.stride)

    @property
    def receptive_field(self) -> tuple[int, int]:
        return (self.h.receptive_field, self.w.receptive_field)

    def out_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return (self.h.out_size(size[0]), self.w.out_size(size[1]))


# --------------------------------------------------------------------------- registry

GeometryFn = Callable[[nn.Module, str], Geometry]
_REGISTRY: dict[type, GeometryFn] = {}

# modules that act on each position independently (spatial identity)
POINTWISE: tuple[type, ...] = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
    nn.Dropout,
    nn.Dropout2d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)

_NON_LOCAL: tuple[type, ...] = (
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Linear,
    nn.Flatten,
    nn.MultiheadAttention,
    nn.Upsample,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm2d,
)


def register_geometry(cls: type) -> Callable[[GeometryFn], GeometryFn]:
    """Register how a module type maps tiles: ``fn(module, name) -> Geometry``.

    Example:
        >>> @register_geometry(MyBlock)                      # doctest: +SKIP
        ... def _(m, name):
        ...     return Geometry.residual(describe(m.body, name + ".body"), Geometry())
    """

    def deco(fn: GeometryFn) -> GeometryFn:
        _REGISTRY[cls] = fn
        return fn

    return deco


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    if len(v) == 1:
        return (v[0], v[0])
    return (int(v[0]), int(v[1]))


def _conv(m: nn.Conv2d, name: str) -> Geometry:
    if m.padding_mode != "zeros":
        raise StreamingError(
            f"cannot stream {name!r} ({type(m).__name__}): padding_mode={m.padding_mode!r}; only "
            "zero padding keeps tiles exact at the image border. Use padding_mode='zeros'."
        )
    k, s, d = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)
    if m.padding == "valid":
        pad = ((0, 0), (0, 0))
    elif m.padding == "same":
        pads = []
        for kk, dd in zip(k, d, strict=True):
            total = dd * (kk - 1)
            pads.append((total // 2, total - total // 2))
        pad = (pads[0], pads[1])
    else:
        p = _pair(m.padding)
        pad = ((p[0], p[0]), (p[1], p[1]))
    return Geometry.window(k, s, pad, d)


def _pool(m: nn.MaxPool2d | nn.AvgPool2d, name: str) -> Geometry:
    if m.ceil_mode:
        raise StreamingError(
            f"cannot stream {name!r} ({type(m).__name__}): ceil_mode=True makes the last window "
            "depend on the image size. Use ceil_mode=False (pad the image instead)."
        )
    k = _pair(m.kernel_size)
    s = _pair(m.stride if m.stride is not None else m.kernel_size)
    p = _pair(m.padding)
    d = _pair(getattr(m, "dilation", 1))
    return Geometry.window(k, s, ((p[0], p[0]), (p[1], p[1])), d)


def _batchnorm(m: nn.BatchNorm2d, name: str) -> Geometry:
    if m.training:
        raise StreamingError(
            f"cannot stream {name!r} (BatchNorm2d in train mode): batch statistics couple all "
            "positions of the image, so tiles cannot reproduce them. Freeze it: call .eval() on "
            "the trunk, or pass freeze_batchnorm=True to StreamingModule."
        )
    if not m.track_running_stats or m.running_mean is None:
        raise StreamingError(
            f"cannot stream {name!r} (BatchNorm2d without running statistics): it always uses "
            "batch statistics. Use track_running_stats=True and freeze it."
        )
    return Geometry()


def _sequential(m: nn.Sequential, name: str) -> Geometry:
    return Geometry.chain(*(describe(c, _join(name, n)) for n, c in m.named_children()))


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _basic_block(m: nn.Module, name: str) -> Geometry:
    main = Geometry.chain(
        describe(m.conv1, _join(name, "conv1")),
        describe(m.bn1, _join(name, "bn1")),
        describe(m.conv2, _join(name, "conv2")),
        describe(m.bn2, _join(name, "bn2")),
    )
    short = (
        describe(m.downsample, _join(name, "downsample"))
        if m.downsample is not None
        else Geometry()
    )
    return Geometry.residual(main, short)


def _bottleneck(m: nn.Module, name: str) -> Geometry:
    main = Geometry.chain(
        *(
            describe(getattr(m, n), _join(name, n))
            for n in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")
        )
    )
    short = (
        describe(m.downsample, _join(name, "downsample"))
        if m.downsample is not None
        else Geometry()
    )
    return Geometry.residual(main, short)


for _cls in POINTWISE:
    _REGISTRY[_cls] = lambda m, name: Geometry()
_REGISTRY[nn.Conv2d] = _conv
_REGISTRY[nn.MaxPool2d] = _pool
_REGISTRY[nn.AvgPool2d] = _pool
_REGISTRY[nn.BatchNorm2d] = _batchnorm
_REGISTRY[nn.Sequential] = _sequential


_TORCHVISION_REGISTERED = False


def _torchvision_blocks() -> None:
    """Register torchvision's ResNet blocks, once (lazily: importing torchvision is slow)."""
    global _TORCHVISION_REGISTERED
    if _TORCHVISION_REGISTERED:
        return
    _TORCHVISION_REGISTERED = True
    try:
        from torchvision.models.resnet import BasicBlock, Bottleneck
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return
    _REGISTRY.setdefault(BasicBlock, _basic_block)
    _REGISTRY.setdefault(Bottleneck, _bottleneck)


def describe(module: nn.Module, name: str = "") -> Geometry:
    """Geometry of ``module``; raises :class:`StreamingError` naming what cannot be streamed.

    Args:
        module: the module (layer, block, Sequential).
        name: its qualified name, used in error messages.
    """
    _torchvision_blocks()
    label = name or type(module).__name__
    custom = getattr(module, "stream_geometry", None)
    if callable(custom):
        return custom()
    fn = _REGISTRY.get(type(module))
    if fn is None:
        for cls, candidate in _REGISTRY.items():
            if isinstance(module, cls) and cls is not nn.Sequential:
                fn = candidate
                break
        else:
            if isinstance(module, nn.Sequential):
                fn = _sequential
    if fn is not None:
        return fn(module, label)
    if isinstance(module, _NON_LOCAL):
        raise StreamingError(
            f"cannot stream {label!r} ({type(module).__name__}): it is not local (an output "
            "position depends on the whole image or the normalisation couples positions). Apply "
            "it after the StreamingModule, in the head."
        )
    raise StreamingError(
        f"cannot stream {label!r} ({type(module).__name__}): its tile geometry is unknown. Give it "
        "a `stream_geometry(self) -> gigastream.streaming.Geometry` method, or register one with "
        "gigastream.streaming.register_geometry, or move it to the head."
    )


__all__ = [
    "AxisGeometry",
    "Geometry",
    "StreamingError",
    "describe",
    "register_geometry",
    "POINTWISE",
]
