"""Small instance encoders for bags of small images (e.g. MNIST digits)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

# mean and standard deviation of MNIST pixel values scaled to [0, 1] (SmallCNN's defaults)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class Normalize(nn.Module):
    """Convert images to the dtype of the model and standardise them.

    Integer images (e.g. uint8 pixels) are first divided by ``scale``; floating images are
    taken as already scaled to [0, 1]. Keeping bags as uint8 until they reach the encoder
    means a chunked encoder holds only one chunk in floating point.

    Args:
        mean: mean subtracted after scaling.
        std: standard deviation divided by after scaling.
        scale: the integer pixel value of 1.0 (255 for 8-bit images).
    """

    def __init__(self, mean: float, std: float, scale: float = 255.0) -> None:
        super().__init__()
        self.mean, self.std, self.scale = mean, std, scale
        self.register_buffer("_dtype_probe", torch.zeros(()), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if not x.is_floating_point():
            x = x.to(self._dtype_probe.dtype) / self.scale
        return (x - self.mean) / self.std


class SmallCNN(nn.Module):
    """A LeNet-style encoder: two 5x5 conv + max-pool stages and a linear layer.

    No BatchNorm, so it can be chunked exactly in train mode; no dropout by default, so the
    full-bag and chunked computations consume the random stream identically. The input is
    standardised first (:class:`Normalize`): uint8 pixels, or floats in [0, 1].

    Args:
        in_channels: image channels.
        out_dim: instance feature size ``D``.
        width: channels of the first conv (the second has twice as many).
        image_size: input height = width (28 for MNIST).
        dropout: dropout before the linear layer.
        mean: input mean after scaling to [0, 1] (MNIST's by default).
        std: input standard deviation after scaling to [0, 1].

    Example:
        >>> import torch
        >>> SmallCNN(out_dim=32)(torch.randn(5, 1, 28, 28)).shape
        torch.Size([5, 32])
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_dim: int = 64,
        width: int = 8,
        image_size: int = 28,
        dropout: float = 0.0,
        mean: float = MNIST_MEAN,
        std: float = MNIST_STD,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"image_size {image_size} is too small for two 5x5 conv stages")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (n, w, 12, 12)
            nn.Conv2d(width, 2 * width, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (n, 2w, 4, 4)
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Sequential(nn.Linear(2 * width * side * side, out_dim), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        """Encode images ``(n, C, H, W)`` (uint8, or floats in [0, 1]) into ``(n, out_dim)``."""
        return self.fc(self.dropout(self.features(self.normalize(x))))
