"""Frozen BatchNorm: the one way gigastream freezes BatchNorm for streaming and chunking.

BatchNorm in train mode normalises with the statistics of the current batch, which couple
every position of an image (streaming, Pinckaers et al., TPAMI 2020) and every instance of
a chunk (chunked bag encoding): tiles and chunks cannot reproduce them, so gradients
would not be exact. Frozen, BatchNorm normalises with its running statistics: a
per-channel affine map of each position, which streams and chunks exactly. The affine
``weight`` and ``bias`` stay trainable, as in StreamingCLAM (Dooper et al., 2023).

:func:`freeze_batchnorm` replaces every BatchNorm of a model by a
:class:`FrozenBatchNorm`, in place. It stays frozen whatever ``.train()`` /
``.eval()`` later says, keeps the same parameter and buffer objects (optimisers built
before still see them) and the same ``state_dict`` keys (checkpoints of the unfrozen
model load, and the other way round), and computes bit for bit what the BatchNorm
computes in eval mode. ``StreamingModule(trunk, freeze_batchnorm=True)`` calls it on the
trunk; for :class:`~gigastream.mil.chunked.ChunkedEncoder`, call it on the encoder.

Example:
    >>> from torch import nn
    >>> net = freeze_batchnorm(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()))
    >>> type(net[1]).__name__, net.train()[1].weight.requires_grad
    ('FrozenBatchNorm', True)
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn
from torch.nn.functional import batch_norm

from gigastream.streaming.geometry import Geometry

__all__ = [
    "FrozenBatchNorm",
    "calibrate_batchnorm",
    "freeze_batchnorm",
    "is_batchnorm",
    "training_batchnorms",
]


def is_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` is a (not frozen) torch BatchNorm layer of any dimension."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


class FrozenBatchNorm(nn.Module):
    """A BatchNorm that always normalises with its running statistics (train mode or not).

    Made by :func:`freeze_batchnorm`; built from a BatchNorm, it shares that module's
    parameters and buffers (no copies). Input ``(N, C, ...)`` of any dimension.

    Args:
        bn: the BatchNorm to freeze (``track_running_stats=True``).

    Raises:
        ValueError: ``bn`` has no running statistics to normalise with.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(
                f"cannot freeze {type(bn).__name__}({bn.num_features}) built with "
                "track_running_stats=False: it has no running statistics to normalise with. "
                "Build it with track_running_stats=True (the default), or replace it by a "
                "normalisation without batch statistics (e.g. GroupNorm)."
            )
        self.num_features = bn.num_features
        self.eps = bn.eps
        # the same Parameter and buffer objects, under BatchNorm's state_dict names
        self.weight = bn.weight if bn.affine else None
        self.bias = bn.bias if bn.affine else None
        self.register_buffer("running_mean", bn.running_mean)
        self.register_buffer("running_var", bn.running_var)
        self.register_buffer("num_batches_tracked", bn.num_batches_tracked)

    calibrating: bool = False  # set only by calibrate_batchnorm

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` ``(N, C, ...)`` with the running statistics (never updated).

        Only inside :func:`calibrate_batchnorm` it normalises with the batch's statistics
        and accumulates them into the running ones, as a BatchNorm in train mode would.
        """
        return self.normalize(x)

    def normalize(self, x: Tensor) -> Tensor:
        """What :meth:`forward` computes (also when the layer is folded into a conv)."""
        if self.calibrating:  # cumulative average over the calibration batches
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked)
            return batch_norm(
                x,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                True,
                factor,
                self.eps,
            )
        return batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )

    def stream_geometry(self) -> Geometry:
        """A per-position affine map: streams like any pointwise module."""
        return Geometry()

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}"


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm in ``module`` by a :class:`FrozenBatchNorm`, in place.

    Args:
        module: a model, or a BatchNorm layer itself.

    Returns:
        ``module``, or its frozen replacement when ``module`` is itself a BatchNorm; use
        the return value.

    Raises:
        ValueError: a BatchNorm has no running statistics (``track_running_stats=False``).

    Example:
        >>> from torch import nn
        >>> enc = freeze_batchnorm(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))
        >>> enc.train()[1].training, type(enc[1]).__name__  # mode no longer matters
        (True, 'FrozenBatchNorm')
    """
    if is_batchnorm(module):
        return FrozenBatchNorm(module)
    for name, child in module.named_children():
        frozen = freeze_batchnorm(child)
        if frozen is not child:
            setattr(module, name, frozen)
    return module


def training_batchnorms(module: nn.Module) -> list[str]:
    """Qualified names of the BatchNorm layers of ``module`` in train mode (not frozen)."""
    return [
        name or type(m).__name__
        for name, m in module.named_modules()
        if is_batchnorm(m) and m.training
    ]


def calibrate_batchnorm(module: nn.Module, batches: Iterable[Tensor]) -> int:
    """Data-dependent BatchNorm calibration: running statistics from data (frozen or not).

    A randomly initialised network normalises with mean 0 and variance 1 (not at all), so
    its activations grow or shrink layer by layer. This resets the running statistics of
    every BatchNorm and :class:`FrozenBatchNorm` in ``module``, forwards ``batches``
    without gradients, each layer normalising with its batch's statistics (as in train
    mode) and accumulating them (cumulative average, ``momentum=None``), and restores
    the layers' modes. Affine parameters are untouched. Afterwards every channel is
    normalised to about zero mean and unit variance on the data.

    Args:
        module: the network (calibrated in place).
        batches: inputs ``(B, C, H, W)``, e.g. crops of training slides.

    Returns:
        The number of batches forwarded.

    Raises:
        ValueError: no batch was given.

    Example:
        >>> import torch
        >>> net = freeze_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
        >>> calibrate_batchnorm(net, [torch.randn(2, 3, 16, 16) * 5 + 3])
        1
        >>> bool(net(torch.randn(2, 3, 16, 16) * 5 + 3).std() < 2)
        True
    """
    import torch

    norms = [m for m in module.modules() if is_batchnorm(m) or isinstance(m, FrozenBatchNorm)]
    saved = {m: (getattr(m, "momentum", None), m.training) for m in norms}
    for m in norms:
        m.running_mean.zero_()
        m.running_var.fill_(1.0)
        m.num_batches_tracked.zero_()
        if isinstance(m, FrozenBatchNorm):
            m.calibrating = True
        else:
            m.momentum = None
            m.train()
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                module(batch)
                seen += 1
    finally:
        for m in norms:
            if isinstance(m, FrozenBatchNorm):
                m.calibrating = False
            else:
                m.momentum = saved[m][0]
                m.train(saved[m][1])
    if seen == 0:
        raise ValueError("calibrate_batchnorm needs at least one batch of inputs")
    return seen
