"""Synthetic gigapixel slides with planted lesions: our stand-in for CAMELYON16.

Each slide is a pyramidal tiled JPEG TIFF (:mod:`gigastream.wsi.pyramid`) showing
tissue-shaped regions on white glass. The tissue texture is real H&E: blocks cut from
the given source images and slides (random crops, flips, 90-degree rotations, colour
jitter), cross-faded where neighbouring blocks meet along meandering boundaries. *Positive* slides carry a few
small lesions: discs of ``lesion_size`` pixels in which the texture gains a dense,
regular packing of small dark nuclei (period about 7 px) balanced by a lighter stroma
between them, so the lesion's *mean colour equals its surroundings*. The morphology is
plain at full resolution and averages away once the slide is shrunk by about the
nuclear period (8x and more), which is what makes resolution matter, as in the
streaming paper.

Slides are generated strip by strip from seeded random streams, so any size (65536^2
too) is written in bounded memory and the same seed gives the same dataset. Per slide a
ground-truth lesion mask PNG and a JSON list of lesions are written, and for the whole
dataset ``manifest.csv`` (``slide_id,path,label,case_id,split,mpp``) and ``synth.json``
(the resolved configuration).

Example:
    >>> config = SynthConfig(size=2048, slides=2, seed=0)
    >>> manifest_path = synthesize_dataset("synth-data", config, sources=["../shared/data"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gigastream.wsi.manifest import ManifestRow, write_manifest
from gigastream.wsi.pyramid import PyramidConfig, write_pyramid
from gigastream.wsi.resample import apply_axis, plan_axis
from gigastream.wsi.synth_targets import slide_label, slide_subtypes
from gigastream.wsi.tissue import saturation

logger = logging.getLogger(__name__)

SOURCE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".svs")
#: Direction in RGB from pink stroma to hematoxylin-dark nuclei, per unit of nuclear density.
NUCLEUS_RGB = np.array([-120.0, -150.0, -60.0], dtype=np.float32)


@dataclass
class SynthConfig:
    """A synthetic dataset.

    Attributes:
        slides: number of slides.
        size: level-0 edge of every (square) slide in pixels.
        mpp: microns per level-0 pixel written into the files.
        positive_fraction: fraction of slides with lesions.
        lesion_size: lesion diameter in level-0 pixels.
        min_lesions: fewest lesions on a positive slide.
        max_lesions: most lesions on a positive slide.
        max_lesion_fraction: lesions cover at most this fraction of a positive slide's
            tissue (fewer lesions are planted where there is little tissue; at least one).
        lesion_contrast: strength of the lesion's nuclear pattern (0: invisible).
        nucleus_period: spacing of lesion nuclei in pixels (the pattern averages out
            at downsampling factors of about this and more).
        block_size: edge of the texture blocks tissue is assembled from.
        feather: neighbouring blocks cross-fade over ``feather`` pixels along boundaries
            bent by up to ``feather / 2`` (no hard seams, no square grid).
        bank_size: number of augmented texture blocks cut from the sources.
        tile_size: TIFF tile edge.
        quality: JPEG quality.
        mask_downsample: the ground-truth lesion mask is level 0 shrunk by this factor.
        target: the manifest's ``label`` (:mod:`gigastream.wsi.synth_targets`): ``class``
            (``positive``/``negative``), ``subtype`` (``negative`` or the positive slide's
            lesion subtype ``subtype_a``, ``subtype_b``, ...: a multi-class task),
            ``lesion_count`` or ``lesion_area`` (the percentage of the tissue the lesions
            cover: regression targets).
        subtypes: lesion subtypes of ``target: subtype``: subtype ``k`` has the nuclear
            pattern scaled by ``1.6 ** k`` (bigger nuclei, further apart; same mean colour).
        seed: random seed; the same seed and sources give the same dataset.
    """

    slides: int = 4
    size: int = 16384
    mpp: float = 0.5  # like a 20x scan, as the CMU-1 source slide (0.499 um/px)
    positive_fraction: float = 0.5
    lesion_size: int = 96
    min_lesions: int = 1
    max_lesions: int = 3
    max_lesion_fraction: float = 0.1
    lesion_contrast: float = 0.6
    nucleus_period: float = 7.0
    block_size: int = 512
    feather: int = 32
    bank_size: int = 48
    tile_size: int = 256
    quality: int = 90
    mask_downsample: int = 16
    target: str = "class"
    subtypes: int = 2
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError on impossible settings."""
        if self.slides < 1:
            raise ValueError(f"slides must be >= 1, got {self.slides}")
        if self.size < 256:
            raise ValueError(f"size must be >= 256, got {self.size}")
        if not 0 <= self.feather <= self.block_size // 4:
            raise ValueError(f"feather must be in [0, block_size/4], got {self.feather}")
        if self.block_size % 16 or self.block_size < 64:
            raise ValueError(
                f"block_size must be a multiple of 16 and >= 64, got {self.block_size}"
            )
        if not 0 <= self.positive_fraction <= 1:
            raise ValueError(f"positive_fraction must be in [0, 1], got {self.positive_fraction}")
        if not 8 <= self.lesion_size <= self.size // 4:
            raise ValueError(f"lesion_size must be in [8, size/4], got {self.lesion_size}")
        if not 0 < self.max_lesion_fraction <= 1:
            raise ValueError(
                f"max_lesion_fraction must be in (0, 1], got {self.max_lesion_fraction}"
            )
        if not 0 <= self.min_lesions <= self.max_lesions or self.max_lesions < 1:
            raise ValueError("need 0 <= min_lesions <= max_lesions and max_lesions >= 1")
        from gigastream.wsi.synth_targets import check_target

        check_target(self.target, self.subtypes)


@dataclass(frozen=True)
class Lesion:
    """A planted lesion: centre ``(x, y)`` and ``radius`` in level-0 pixels; its
    ``subtype`` scales its nuclear pattern by :data:`SUBTYPE_SCALE` ``** subtype``."""

    x: int
    y: int
    radius: float
    subtype: int = 0


#: How much larger (nuclei and their spacing) each lesion subtype's pattern is than the last.
SUBTYPE_SCALE = 1.6


# ----------------------------------------------------------------------------- sources
def find_sources(paths: Sequence[str | Path]) -> list[Path]:
    """Image and slide files under ``paths`` (files or folders, searched recursively)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in SOURCE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"{p}: H&E source not found")
    if not found:
        raise FileNotFoundError(
            f"no H&E source images or slides under {', '.join(map(str, paths))}"
        )
    return found


def _load_source(path: Path) -> np.ndarray:
    from gigastream.wsi.reader import SlideReader

    slide = SlideReader.open(path, mpp=1.0)  # mpp only satisfies readers; level 0 is used
    with slide:
        w, h = slide.dimensions
        if w * h > 64_000_000:  # a real gigapixel slide: use a level of at most ~8k
            level = min(
                range(len(slide.levels)), key=lambda i: abs(max(slide.levels[i].dimensions) - 8192)
            )
            w, h = slide.levels[level].dimensions
            return slide.read_level(level, 0, 0, w, h)
        return slide.read_level(0, 0, 0, w, h)


def build_texture_bank(sources: Sequence[Path], config: SynthConfig) -> np.ndarray:
    """Cut ``bank_size`` augmented tissue blocks from the source images.

    Crops are taken where the source is mostly tissue (saturation), then flipped,
    rotated by a multiple of 90 degrees and colour-jittered. Sources smaller than a
    block are skipped (mirror-tiling them makes kaleidoscopes, not tissue).

    Returns:
        ``(bank_size, block + 2 * feather, block + 2 * feather, 3)`` uint8.
    """
    rng = np.random.default_rng([config.seed, 0])
    block = config.block_size + 2 * config.feather
    images = []
    for path in sources:
        image = _load_source(path)
        if min(image.shape[:2]) < block:
            logger.info(
                "texture source %s: %s is smaller than a %d px block; not used",
                path,
                image.shape,
                block,
            )
            continue
        images.append(image)
        logger.debug("texture source %s: %s", path, image.shape)
    if not images:
        raise ValueError(
            f"no source image is at least block_size + 2 * feather = {block} px on each side"
        )
    bank = np.empty((config.bank_size, block, block, 3), np.uint8)
    for i in range(config.bank_size):
        image = images[i % len(images)]
        h, w = image.shape[:2]
        best, best_fraction = None, -1.0
        for _ in range(40):
            y, x = rng.integers(0, h - block + 1), rng.integers(0, w - block + 1)
            crop = image[y : y + block, x : x + block]
            fraction = float((saturation(crop[::8, ::8]) > 0.1).mean())
            if fraction > best_fraction:
                best, best_fraction = crop, fraction
            if fraction > 0.85:
                break
        crop = np.rot90(best, k=int(rng.integers(4)))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        gain = rng.normal(1.0, 0.05, size=3).astype(np.float32)
        shift = rng.normal(0.0, 5.0, size=3).astype(np.float32)
        bank[i] = np.clip(crop.astype(np.float32) * gain + shift, 0, 255).astype(np.uint8)
    return bank


# ----------------------------------------------------------------------------- layout
def tissue_field(config: SynthConfig, rng: np.random.Generator, cells: int = 256) -> np.ndarray:
    """A coarse ``(cells, cells)`` field; tissue is where it exceeds 0.5.

    A few large elliptical lobes make the overall tissue shape; smoothed noise makes
    ragged edges, holes and islands.
    """
    from scipy import ndimage

    yy, xx = np.mgrid[0:cells, 0:cells].astype(np.float32) / cells
    envelope = np.zeros((cells, cells), np.float32)
    for _ in range(int(rng.integers(2, 5))):
        cy, cx = rng.uniform(0.25, 0.75, size=2)
        ry, rx = rng.uniform(0.12, 0.3, size=2)
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
        envelope = np.maximum(envelope, np.exp(-0.5 * (u * u + v * v)))
    noise = ndimage.gaussian_filter(
        rng.standard_normal((cells, cells)).astype(np.float32), cells / 40
    )
    noise /= noise.std() + 1e-6
    field = envelope + 0.12 * noise
    border = np.minimum(np.minimum(yy, 1 - yy), np.minimum(xx, 1 - xx))
    return field * np.clip(border * 20, 0, 1)  # no tissue at the very edge


def place_lesions(
    field: np.ndarray, config: SynthConfig, rng: np.random.Generator, count: int, subtype: int = 0
) -> list[Lesion]:
    """Put ``count`` lesions (of ``subtype``) well inside tissue, not overlapping each other."""
    cells = field.shape[0]
    cell = config.size / cells
    radius = config.lesion_size / 2
    inside = np.argwhere(field > 0.75)
    if inside.size == 0:
        inside = np.argwhere(field > 0.5)
    lesions: list[Lesion] = []
    for _ in range(count * 50):
        if len(lesions) == count or inside.size == 0:
            break
        cy, cx = inside[rng.integers(len(inside))]
        y = int((cy + rng.random()) * cell)
        x = int((cx + rng.random()) * cell)
        if not (radius < x < config.size - radius and radius < y < config.size - radius):
            continue
        if all(math.hypot(x - o.x, y - o.y) > 4 * radius for o in lesions):
            lesions.append(Lesion(x, y, radius, subtype))
    if len(lesions) < count:
        logger.warning("placed %d of %d lesions (too little tissue)", len(lesions), count)
    return lesions


def lesion_modulation(lesion: Lesion, config: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean nuclear pattern of one lesion: ``(d, d)`` float32, d = 2 * ceil(radius) + 1.

    1 marks nuclei (discs of ~2.5 px radius on a jittered lattice), the pattern minus its
    mean inside the lesion, times a soft disc envelope; multiplied by
    :data:`NUCLEUS_RGB` it darkens nuclei and lightens the space between them equally.
    """
    half = math.ceil(lesion.radius)
    size = 2 * half + 1
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    scale = SUBTYPE_SCALE**lesion.subtype
    period = config.nucleus_period * scale
    nuclei = np.zeros((size, size), np.float32)
    for gy in np.arange(-half, half + period, period):
        for gx in np.arange(-half + (period / 2) * (round(gy / period) % 2), half + period, period):
            cy, cx = gy + rng.normal(0, 0.7 * scale), gx + rng.normal(0, 0.7 * scale)
            r = rng.uniform(1.8, 2.8) * scale
            nuclei = np.maximum(nuclei, np.clip(r + 0.5 - np.hypot(yy - cy, xx - cx), 0, 1))
    dist = np.hypot(yy, xx)
    envelope = np.clip((lesion.radius - dist) / 6.0, 0, 1)  # soft 6 px rim
    inside = envelope > 0
    pattern = (nuclei - nuclei[inside].mean()) * envelope
    pattern -= envelope * (pattern[inside].sum() / envelope[inside].sum())  # exact zero mean
    return pattern


def lesion_mask(lesions: Sequence[Lesion], size: int, downsample: int) -> np.ndarray:
    """Ground-truth lesion mask: ``(ceil(size/ds), ceil(size/ds))`` bool at 1/``downsample``."""
    n = math.ceil(size / downsample)
    centres = (np.arange(n) + 0.5) * downsample
    mask = np.zeros((n, n), bool)
    for lesion in lesions:
        mask |= np.hypot(centres[:, None] - lesion.y, centres[None, :] - lesion.x) <= lesion.radius
    return mask


# ----------------------------------------------------------------------------- rendering
class SlideRenderer:
    """Renders one synthetic slide strip by strip (:attr:`strip_rows` rows at a time)."""

    def __init__(
        self, config: SynthConfig, bank: np.ndarray, index: int, positive: bool, subtype: int = 0
    ) -> None:
        self.config = config
        self.bank = bank
        self.index = index
        rng = np.random.default_rng([config.seed, 1, index])
        self.field = tissue_field(config, rng)
        self.field_padded = np.pad(self.field, 2, mode="edge")
        self.cell = config.size / self.field.shape[0]
        self.background = np.clip(rng.normal(242, 3, size=3), 225, 252).astype(np.float32)
        self.lesions: list[Lesion] = []
        self.patterns: list[np.ndarray] = []
        if positive:
            count = int(rng.integers(config.min_lesions, config.max_lesions + 1))
            tissue_px = float((self.field > 0.5).mean()) * config.size**2
            lesion_px = math.pi * (config.lesion_size / 2) ** 2
            count = min(count, int(config.max_lesion_fraction * tissue_px / lesion_px))
            self.lesions = place_lesions(self.field, config, rng, max(count, 1), subtype)
            self.patterns = [lesion_modulation(les, config, rng) for les in self.lesions]

    def _alpha(self, y0: int, height: int) -> np.ndarray:
        """Tissue opacity of rows ``y0 .. y0 + height``: ``(height, size)`` float32."""
        scale = 1.0 / self.cell  # field cells per pixel (upsampling: linear interpolation)
        rows, cols = plan_axis(y0, height, scale), plan_axis(0, self.config.size, scale)
        window = self.field_padded[
            rows.src_start + 2 : rows.src_stop + 2, cols.src_start + 2 : cols.src_stop + 2
        ]
        field = apply_axis(apply_axis(window, rows, axis=0), cols, axis=1)
        return np.clip((field - 0.5) / 0.04, 0.0, 1.0)

    @property
    def strip_rows(self) -> int:
        """Rows per strip: at most 256 (bounds memory on wide slides), dividing the block."""
        block = self.config.block_size
        return 256 if block % 256 == 0 else block

    def _ramp(self, t: np.ndarray, first: bool, last: bool) -> np.ndarray:
        """Weight of a block at block-relative positions ``t`` (0 at its nominal start).

        Ramps up over ``[-r, r)`` and down over ``[block - r, block + r)`` with
        ``r = feather / 2``, so the weights of neighbouring blocks sum to 1; the slide's
        first/last block does not ramp at the slide edge. ``t`` is already displaced by
        the seam warp (at most ``feather / 2``), so a block's weight is zero outside its
        patch.
        """
        r, block = self.config.feather / 2, self.config.block_size
        if r == 0:
            return ((t >= 0) & (t < block)).astype(np.float32)
        up = np.ones_like(t, np.float32) if first else np.clip((t + r + 0.5) / (2 * r), 0, 1)
        down = (
            np.ones_like(t, np.float32) if last else np.clip((block + r - t - 0.5) / (2 * r), 0, 1)
        )
        return (up * down).astype(np.float32)

    def _warp(self, y0: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Seam warp of rows ``y0 .. y0 + height``: displacements ``(dy, dx)``, ``(h, W)`` each.

        A smooth random field (a few plane waves of wavelength 0.5-1.5 blocks, seeded per
        slide) of amplitude ``feather / 2`` bends the block boundaries, so the cross-fades
        between texture blocks meander instead of drawing a square grid.
        """
        size, block = self.config.size, self.config.block_size
        amplitude = self.config.feather / 2
        rng = np.random.default_rng([self.config.seed, 4, self.index])
        yy = np.arange(y0, y0 + height, dtype=np.float32)[:, None]
        xx = np.arange(size, dtype=np.float32)[None, :]
        fields = []
        for _ in range(2):
            field = np.zeros((height, size), np.float32)
            waves = 4
            for _ in range(waves):
                angle = rng.uniform(0, 2 * np.pi)
                wavelength = rng.uniform(0.5, 1.5) * block
                phase = rng.uniform(0, 2 * np.pi)
                kx, ky = np.cos(angle) / wavelength, np.sin(angle) / wavelength
                field += np.sin(2 * np.pi * (kx * xx + ky * yy) + phase)
            fields.append(field * (amplitude / waves))  # |d| <= amplitude
        return fields[0], fields[1]

    def _patch(self, by: int, bx: int) -> np.ndarray:
        rng = np.random.default_rng([self.config.seed, 2, self.index, by, bx])
        patch = self.bank[rng.integers(len(self.bank))]
        return patch[::-1] if rng.random() < 0.5 else patch

    def _texture(self, y0: int, height: int) -> np.ndarray:
        """Texture of rows ``y0 .. y0 + height``: ``(h, W, 3)`` float32.

        Block ``(by, bx)`` nominally covers ``[by * block, (by + 1) * block)`` (and likewise
        in x); its patch extends ``feather`` pixels further on every side and is
        cross-faded with its neighbours over ``feather`` pixels along boundaries that
        meander by up to ``feather / 2`` (:meth:`_warp`).
        """
        block, f, size = self.config.block_size, self.config.feather, self.config.size
        blocks = math.ceil(size / block)
        out = np.zeros((height, size, 3), np.float32)
        dy, dx = self._warp(y0, height)  # (h, W) each
        rows = np.arange(y0, y0 + height, dtype=np.float32)[:, None] + dy  # warped y
        cols = np.arange(size, dtype=np.float32)[None, :] + dx  # warped x
        first_by = max((y0 - f) // block, 0)
        last_by = min((y0 + height - 1 + f) // block, blocks - 1)
        for by in range(first_by, last_by + 1):
            top, bottom = max(y0, by * block - f), min(y0 + height, (by + 1) * block + f)
            if bottom <= top:
                continue
            wy = self._ramp(rows[top - y0 : bottom - y0] - by * block, by == 0, by == blocks - 1)
            for bx in range(blocks):
                left, right = max(0, bx * block - f), min(size, (bx + 1) * block + f)
                wx = self._ramp(
                    cols[top - y0 : bottom - y0, left:right] - bx * block, bx == 0, bx == blocks - 1
                )
                origin_y, origin_x = by * block - f, bx * block - f  # patch (0, 0) on the slide
                piece = self._patch(by, bx)[
                    top - origin_y : bottom - origin_y, left - origin_x : right - origin_x
                ]
                out[top - y0 : bottom - y0, left:right] += (
                    piece * (wy[:, left:right] * wx)[..., None]
                )
        return out

    def strips(self) -> Iterator[np.ndarray]:
        """Level-0 strips of :attr:`strip_rows` rows (the last may be shorter), top to bottom."""
        size = self.config.size
        contrast = self.config.lesion_contrast
        for y0 in range(0, size, self.strip_rows):
            height = min(self.strip_rows, size - y0)
            strip = self._texture(y0, height)  # (h, W, 3)
            for lesion, pattern in zip(self.lesions, self.patterns, strict=True):
                half = pattern.shape[0] // 2
                top, left = lesion.y - half, lesion.x - half
                r0, r1 = max(top, y0), min(top + pattern.shape[0], y0 + height)
                if r1 <= r0:
                    continue
                piece = pattern[r0 - top : r1 - top, :, None] * (contrast * NUCLEUS_RGB)
                strip[r0 - y0 : r1 - y0, left : left + pattern.shape[1]] += piece
            alpha = self._alpha(y0, height)[..., None]  # (h, W, 1)
            strip -= self.background  # alpha * strip + (1 - alpha) * background, in place
            strip *= alpha
            strip += self.background + 0.5
            np.clip(strip, 0, 255, out=strip)
            yield strip.astype(np.uint8)


# ----------------------------------------------------------------------------- dataset
def synthesize_dataset(
    out: str | Path,
    config: SynthConfig,
    sources: Sequence[str | Path],
    progress: bool = True,
) -> Path:
    """Write a labelled synthetic dataset to ``out``.

    Layout: ``slides/<id>.tif``, ``lesions/<id>.png`` (ground truth at
    1/``mask_downsample``, with its mpp), ``lesions/<id>.json``, ``manifest.csv``,
    ``synth.json``.

    Args:
        out: output folder (created).
        config: dataset settings.
        sources: H&E images/slides (files or folders) that tissue texture is cut from.
        progress: show a progress bar per slide.

    Returns:
        Path of the manifest.
    """
    from tqdm import tqdm

    from gigastream.wsi.tissue import TissueMask

    config.validate()
    out = Path(out)
    (out / "slides").mkdir(parents=True, exist_ok=True)
    (out / "lesions").mkdir(exist_ok=True)
    source_files = find_sources(sources)
    bank = build_texture_bank(source_files, config)
    rng = np.random.default_rng([config.seed, 3])
    n_pos = round(config.positive_fraction * config.slides)
    positives = set(rng.permutation(config.slides)[:n_pos].tolist())
    subtype_of = slide_subtypes(config, sorted(positives))
    rows = []
    pyramid = PyramidConfig(tile_size=config.tile_size, quality=config.quality)
    for index in range(config.slides):
        slide_id = f"synth_{index:03d}"
        positive = index in positives
        renderer = SlideRenderer(config, bank, index, positive, subtype_of.get(index, 0))
        path = out / "slides" / f"{slide_id}.tif"
        strips = tqdm(
            renderer.strips(),
            total=math.ceil(config.size / renderer.strip_rows),
            desc=slide_id,
            unit="strip",
            disable=None if progress else True,  # None: off when not a terminal (a log file)
            leave=False,
        )
        write_pyramid(
            path,
            strips,
            config.size,
            config.size,
            config.mpp,
            pyramid,
            description=f"gigastream synthetic slide {slide_id} (seed {config.seed})",
        )
        mask = lesion_mask(renderer.lesions, config.size, config.mask_downsample)
        TissueMask(mask, config.mpp * config.mask_downsample).save(
            out / "lesions" / f"{slide_id}.png"
        )
        (out / "lesions" / f"{slide_id}.json").write_text(
            json.dumps(
                {"slide_id": slide_id, "lesions": [asdict(les) for les in renderer.lesions]},
                indent=1,
            )
        )
        label = slide_label(config, renderer.lesions, float((renderer.field > 0.5).mean()))
        rows.append(ManifestRow(slide_id, path, label, slide_id, None, config.mpp))
        logger.info("%s: %s, %d lesions", slide_id, label, len(renderer.lesions))
    manifest = write_manifest(out / "manifest.csv", rows)
    resolved = {**asdict(config), "sources": [str(p) for p in source_files]}
    (out / "synth.json").write_text(json.dumps(resolved, indent=1))
    return manifest


# ----------------------------------------------------------------------------- procedural
def procedural_he_image(path: str | Path, size: int = 1024, seed: int = 0) -> Path:
    """Write a procedural H&E-like PNG: pink fibrous stroma with clusters of dark nuclei.

    The fallback texture source when no real H&E image is at hand (e.g. a fresh ``pip
    install``): synthetic slides can then still be made, of cruder tissue. Real H&E is
    better.

    Args:
        path: PNG file to write.
        size: edge in pixels.
        seed: random seed.

    Returns:
        ``path``.
    """
    from PIL import Image
    from skimage.draw import ellipse

    rng = np.random.default_rng(seed)

    def smooth_noise(cells: int) -> np.ndarray:  # (size, size) in [0, 1]
        grid = Image.fromarray(rng.random((cells, cells), dtype=np.float32), mode="F")
        return np.asarray(grid.resize((size, size), Image.BICUBIC)).clip(0, 1)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = smooth_noise(4) * np.pi
    phase = (xx * np.cos(angle) + yy * np.sin(angle)) / 4.0 + 12.0 * smooth_noise(24)
    fibres = (0.5 + 0.5 * np.sin(phase)) * smooth_noise(16)
    shade = 0.6 * smooth_noise(8) + 0.5 * fibres  # (size, size)
    stroma = np.array([235, 165, 200], np.float32)
    dark = np.array([200, 110, 170], np.float32)
    image = stroma + (dark - stroma) * shade[..., None]  # (size, size, 3)
    density = smooth_noise(6)
    for _ in range(size * size // 250):
        y, x = rng.integers(0, size, 2)
        if rng.random() > density[y, x] ** 2:
            continue
        rows, cols = ellipse(
            y, x, rng.uniform(3, 7), rng.uniform(3, 7), (size, size), rotation=rng.uniform(0, np.pi)
        )
        image[rows, cols] = np.array([95, 50, 140]) + rng.normal(0, 12, 3)
    image += rng.normal(0, 6, image.shape)
    path = Path(path)
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(path)
    return path
