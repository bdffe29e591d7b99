"""Tissue masks: where on a slide there is tissue.

The default masker is Otsu's threshold on the HSV saturation of a low-resolution image
(stained tissue is coloured, glass is white or grey), floored so that an empty slide
does not turn its noise into tissue, followed by removal of specks and filling of small
holes. Masks are boolean arrays that carry their own mpp, so they can be resampled to
any resolution, and are saved/loaded as PNG (mpp, and optionally the key of what a cached
mask was computed from, stored in text chunks; written atomically). A user's own mask image
can be loaded for a slide (:meth:`TissueMask.load`).

A slide without tissue raises :class:`NoTissueError` from :func:`require_tissue`, so
training skips it instead of learning from glass.

Example:
    >>> import numpy as np
    >>> from gigastream import SlideReader
    >>> image = np.full((512, 512, 3), 245, np.uint8)
    >>> image[100:400, 150:350] = (180, 90, 160)  # a pink-purple "tissue" block
    >>> mask = compute_tissue_mask(SlideReader.from_array(image, mpp=4.0))
    >>> round(mask.tissue_fraction, 2)
    0.23
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from gigastream.atomic import atomic_write
from gigastream.wsi.reader import SlideError, SlideReader

logger = logging.getLogger(__name__)

MPP_KEY = "gigastream.mpp"
#: PNG text chunk holding what a cached mask was computed from (see :meth:`TissueMask.save`).
CACHE_KEY = "gigastream.mask_key"


class NoTissueError(SlideError):
    """A slide has no tissue (by its mask); training must skip it."""


@dataclass
class TissueMaskConfig:
    """Settings of the saturation-Otsu tissue masker.

    Attributes:
        mpp: resolution the mask is computed at (microns per pixel).
        min_saturation: floor of the saturation threshold (0-1); keeps an empty slide empty.
        max_saturation_threshold: cap of the threshold, so faint tissue is kept when
            a slide holds strongly stained regions too.
        min_object_um2: connected tissue pieces smaller than this (square microns) are specks.
        max_hole_um2: holes in tissue smaller than this (square microns) are filled.
        min_tissue_fraction: below this fraction of the slide area the slide has no tissue.
    """

    mpp: float = 8.0  # 16x below 0.5 um/px: a 65536^2 slide gives a 4096^2 mask
    min_saturation: float = 0.05
    max_saturation_threshold: float = 0.3
    min_object_um2: float = 100_000.0  # ~(316 um)^2
    max_hole_um2: float = 50_000.0
    min_tissue_fraction: float = 1e-3

    def scaled_to(self, width_um: float, height_um: float) -> TissueMaskConfig:
        """These settings for a slide of ``width_um`` x ``height_um`` microns.

        The defaults suit slides of centimetres. On a small slide (e.g. a synthetic one
        half a millimetre wide) the mask resolution becomes at least 256 px along the
        longer side, and the speck and hole sizes at most 0.2% and 0.5% of the slide's
        area; on ordinary slides nothing changes.

        Example:
            >>> TissueMaskConfig().scaled_to(512.0, 512.0).mpp
            2.0
            >>> TissueMaskConfig().scaled_to(25_000.0, 20_000.0) == TissueMaskConfig()
            True
        """
        area = width_um * height_um
        return replace(
            self,
            mpp=min(self.mpp, max(width_um, height_um) / 256),
            min_object_um2=min(self.min_object_um2, 0.002 * area),
            max_hole_um2=min(self.max_hole_um2, 0.005 * area),
        )


@dataclass
class TissueMask:
    """A boolean tissue mask covering a whole slide.

    Attributes:
        mask: ``(H, W)`` bool, True on tissue.
        mpp: microns per mask pixel.
    """

    mask: np.ndarray
    mpp: float

    @property
    def tissue_fraction(self) -> float:
        """Fraction of the slide covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def is_empty(self, min_fraction: float = TissueMaskConfig.min_tissue_fraction) -> bool:
        """Whether the slide has (practically) no tissue."""
        return self.tissue_fraction < min_fraction

    def resize(self, shape: tuple[int, int]) -> np.ndarray:
        """The mask at ``shape = (height, width)`` (nearest neighbour on pixel centres)."""
        h, w = self.mask.shape
        rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.int64), h - 1)
        cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.int64), w - 1)
        return self.mask[rows[:, None], cols[None, :]]

    def any_in(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        """Whether any tissue lies in a rectangle given in microns from the slide origin."""
        h, w = self.mask.shape
        c0, r0 = max(int(x0 / self.mpp), 0), max(int(y0 / self.mpp), 0)
        c1, r1 = min(int(np.ceil(x1 / self.mpp)), w), min(int(np.ceil(y1 / self.mpp)), h)
        return c1 > c0 and r1 > r0 and bool(self.mask[r0:r1, c0:c1].any())

    def save(self, path: str | Path, key: str | None = None) -> Path:
        """Write the mask as an 8-bit PNG (tissue 255) with its mpp in a text chunk.

        The file is written to a temporary name in the same folder and renamed into place,
        so a reader never sees half a mask.

        Args:
            path: the PNG file.
            key: what the mask was computed from (a cache key, e.g. JSON), stored in the
                text chunk :data:`CACHE_KEY` (read back by :func:`stored_text`).
        """
        from PIL import Image, PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_text(MPP_KEY, repr(float(self.mpp)))
        if key is not None:
            info.add_text(CACHE_KEY, key)
        image = Image.fromarray(self.mask.astype(np.uint8) * 255)
        return atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))

    @classmethod
    def load(
        cls, path: str | Path, slide: SlideReader | None = None, mpp: float | None = None
    ) -> TissueMask:
        """Load a mask image (ours, or a user's: any image, non-zero/bright = tissue).

        The mask's mpp is, in order: ``mpp`` if given, the PNG's own text chunk, or
        derived from ``slide`` (the mask is taken to cover the whole slide).

        Raises:
            SlideError: the file is missing or unreadable, or its mpp cannot be known.
        """
        from PIL import Image, UnidentifiedImageError

        path = Path(path)
        if not path.is_file():
            raise SlideError(f"{path}: mask file not found")
        try:
            with Image.open(path) as img:
                text = getattr(img, "text", {}) or {}
                array = np.asarray(img.convert("L"))
        except (UnidentifiedImageError, OSError) as exc:
            raise SlideError(f"{path}: cannot read the mask image: {exc}") from exc
        if mpp is None and MPP_KEY in text:
            mpp = float(text[MPP_KEY])
        if mpp is None and slide is not None:
            width, height = slide.dimensions
            mpp = slide.require_mpp() * (width / array.shape[1] + height / array.shape[0]) / 2
        if mpp is None:
            raise SlideError(f"{path}: the mask's mpp is unknown; pass mpp=... or the slide")
        return cls(array > 127, float(mpp))


def stored_text(path: str | Path) -> dict[str, str] | None:
    """The text chunks before the pixels of a mask image (:data:`MPP_KEY`, :data:`CACHE_KEY`),
    read without decoding the pixels, so also from a truncated file; ``None`` when the file
    is not an image at all."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return {k: v for k, v in img.info.items() if isinstance(v, str)}
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def saturation(image: np.ndarray) -> np.ndarray:
    """HSV saturation (0-1) of an ``(H, W, 3)`` uint8 RGB image."""
    rgb = image.astype(np.float32)
    high = rgb.max(axis=-1)
    low = rgb.min(axis=-1)
    return np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (maximises the between-class variance)."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    mean0 = np.cumsum(hist * centres) / np.maximum(weight0, 1)
    mean1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def _fill_holes(mask: np.ndarray, max_size: int) -> np.ndarray:
    """Fill background components of at most ``max_size`` pixels not touching the border."""
    from scipy import ndimage

    labels, count = ndimage.label(~mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = sizes <= max_size
    fill[0] = False  # label 0 is tissue
    fill[border] = False
    return mask | fill[labels]


def mask_from_image(
    image: np.ndarray, mpp: float, config: TissueMaskConfig | None = None
) -> TissueMask:
    """Tissue mask of an RGB image at ``mpp`` microns per pixel.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        mpp: microns per pixel of ``image``.
        config: masker settings (its ``mpp`` is ignored here).
    """
    from skimage import morphology

    config = config or TissueMaskConfig()
    sat = saturation(image)
    threshold = otsu_threshold(sat)
    threshold = min(max(threshold, config.min_saturation), config.max_saturation_threshold)
    mask = sat > threshold
    pixel_um2 = mpp * mpp
    min_size = max(int(config.min_object_um2 / pixel_um2), 1)
    max_hole = max(int(config.max_hole_um2 / pixel_um2), 1)
    mask = morphology.remove_small_objects(mask, max_size=min_size)
    mask = _fill_holes(mask, max_hole)
    logger.debug("tissue threshold %.3f, fraction %.4f", threshold, mask.mean())
    return TissueMask(mask, mpp)


def compute_tissue_mask(slide: SlideReader, config: TissueMaskConfig | None = None) -> TissueMask:
    """Tissue mask of a whole slide, computed at ``config.mpp``.

    Example:
        >>> import numpy as np
        >>> from gigastream import SlideReader
        >>> compute_tissue_mask(SlideReader.from_array(np.full((64, 64, 3), 250, np.uint8), mpp=1)).is_empty()
        True
    """
    config = config or TissueMaskConfig()
    mpp = max(config.mpp, slide.require_mpp())
    image = slide.read_at_mpp(mpp)
    actual_mpp = slide.require_mpp() * slide.dimensions[0] / image.shape[1]  # after rounding
    return mask_from_image(image, actual_mpp, config)


def require_tissue(
    mask: TissueMask, name: str, min_fraction: float = TissueMaskConfig.min_tissue_fraction
) -> TissueMask:
    """Return ``mask`` if it has tissue, else raise :class:`NoTissueError` naming the slide."""
    if mask.is_empty(min_fraction):
        raise NoTissueError(
            f"{name}: no tissue found (tissue fraction {mask.tissue_fraction:.2e} < {min_fraction:g}); "
            "skip this slide or supply a mask"
        )
    return mask
