"""Patch features of a manifest's slides with a frozen encoder: stage one of the two-stage
(CLAM/TRIDENT) baseline.

:func:`extract_features` lays each slide's patch grid over its tissue
(:func:`~gigastream.train.patch_data.slide_patch_grid`, the grid a patch-bag model trains
on), encodes the patches with the encoder of ``patches.encoder`` (built once, eval mode,
no graph) in chunks of ``patches.chunk_size`` read lazily from the slide
(:class:`~gigastream.wsi.patches.PatchBag`: a bag is never in memory as pixels at once) and
writes one file per slide in CLAM/TRIDENT's layout (:mod:`gigastream.wsi.feature_files`)::

    OUT/<slide_id>.h5    features (N, D) float32; coords (N, 2) int64 level-0 (x, y) of each
                         patch's top-left corner; attributes encoder, weights_sha256, mpp,
                         patch_size, patch_size_level0, min_tissue, feature_dim, key (and
                         roi_file, roi_sha256 with data.roi_dir)
    OUT/failures.csv     slide_id, path, error of every slide that could not be encoded
    OUT/features.json    the settings, counts and every slide's status

The run is resumable: a file is written atomically, and a slide whose file has the same
``key`` (:func:`slide_key`: the slide file's identity, the encoder and its weights' hash, the
mpp, patch size and tissue settings, the ROI file's content) is skipped, while a file of another key (stale: another
encoder, patch size, a changed slide) is recomputed. One slide's failure (missing or corrupt
file, no tissue, a patch larger than the slide) is recorded and the run goes on.

With ``data.roi_dir`` (``gigastream features --roi DIR``) each slide's tissue mask is cut to
its ROI file (:mod:`gigastream.train.roi`, as ``gigastream train --roi`` cuts it), so a file
holds only the patches inside the annotated regions (minus exclusions); every slide needs an
ROI file, checked before any work.

Stage two trains a MIL head on the files: ``gigastream train --features OUT``
(:class:`~gigastream.models.feature_mil.FeatureMIL`).

Example:
    >>> rows = read_manifest("data/manifest.csv", check_files=False).rows  # doctest: +SKIP
    >>> summary = extract_features(rows, "features/r18", DataConfig(mpp=0.5), PatchConfig())  # doctest: +SKIP
    >>> len(summary.written), summary.failed  # doctest: +SKIP
    (48, {})
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gigastream import __version__
from gigastream import precision as precisions
from gigastream.models.encoders import EncoderError, PatchEncoder, build_encoder
from gigastream.models.patch_mil import PatchConfig
from gigastream.train.config import ConfigError, DataConfig
from gigastream.train.files import atomic_write_text, file_identity, write_json
from gigastream.train.patch_data import slide_patch_grid
from gigastream.train.roi import check_roi_files, roi_identity
from gigastream.wsi.feature_files import feature_key, read_attrs, write_features
from gigastream.wsi.manifest import ManifestRow
from gigastream.wsi.patches import PatchBag, PatchGrid
from gigastream.wsi.reader import SlideError, SlideReader

logger = logging.getLogger(__name__)

#: Bumped when the features of the same settings would change (part of every key).
FEATURES_VERSION = 1
#: The seed of a randomly initialised encoder (``weights: null``), so its features are the
#: same in every run (and a resumed run may keep them).
INIT_SEED = 0


@dataclass
class ExtractionSummary:
    """What :func:`extract_features` did.

    Attributes:
        out: the output folder.
        written: slides whose file was written (new or stale).
        skipped: slides whose file was up to date (same key).
        failed: slide id -> why it could not be encoded (also in ``failures.csv``).
        feature_dim: ``D`` of the encoder.
        seconds: wall time.
    """

    out: Path
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    feature_dim: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every slide was written or up to date."""
        return not self.failed


def weights_sha256(weights: str | None) -> str:
    """sha256 of an encoder's weights file, or ``random`` (no weights) / ``imagenet``."""
    if weights is None:
        return "random"
    if weights == "imagenet":
        return "imagenet"
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def job_settings(data: DataConfig, patches: PatchConfig, weights_hash: str) -> dict[str, Any]:
    """Everything the features of every slide depend on, but the slide itself (and its ROI
    file, :func:`slide_key`); with ``data.roi_dir`` also that folder (resolved)."""
    encoder = patches.encoder_config()
    job = {
        "version": FEATURES_VERSION,
        "encoder": {
            "name": encoder.name,
            "weights_sha256": weights_hash,
            "normalize": encoder.normalize,
            "options": encoder.options,
            "init_seed": INIT_SEED if encoder.weights is None else None,
        },
        "mpp": data.mpp,
        "patch_size": patches.patch_size,
        "min_tissue": patches.min_tissue,
        "tissue": asdict(data.tissue),
        "backend": data.backend,
    }
    if data.roi_dir is not None:  # without: the keys of files written before ROIs existed
        job["roi_dir"] = str(Path(data.roi_dir).resolve())
    return job


def slide_key(
    row: ManifestRow,
    data: DataConfig,
    job: dict[str, Any],
    roi: dict[str, Any] | None = None,
) -> str:
    """The ``key`` of a slide's features: :func:`job_settings` and the identity of the slide
    file (resolved path, size, mtime), its manifest mpp, a given tissue mask
    (``data.mask_dir/<slide_id>.png``) and, with ``data.roi_dir``, its ROI file (resolved
    path and the SHA-256 of its content, :func:`~gigastream.train.roi.roi_identity`: an
    edited ROI recomputes the features; ``roi``: that identity when the caller has read it).

    Raises:
        OSError: the slide file does not exist.
    """
    settings = {**job, "slide": file_identity(row.path), "slide_mpp": row.mpp}
    if data.mask_dir is not None:
        mask = Path(data.mask_dir) / f"{row.slide_id}.png"
        settings["mask"] = file_identity(mask) if mask.is_file() else None
    if data.roi_dir is not None:  # ``roi``: the identity the caller already read
        settings["roi"] = roi if roi is not None else roi_identity(data.roi_dir, row.slide_id)
    return feature_key(settings)


def _torch_device(device: str, precision: str) -> torch.device:
    """The torch device of ``device`` (``auto``: CUDA when available); ConfigError if absent
    (the messages of :func:`~gigastream.train.trainer.resolve_device`, without Lightning)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and device != "cuda" and not device.startswith("cuda:"):
        raise ConfigError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {device}: CUDA is not available on this machine "
                "(torch.cuda.is_available() is False); use --device cpu"
            )
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ConfigError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
    elif precisions.needs_cuda(precision):
        raise ConfigError("--precision 16-mixed needs a CUDA device; on the CPU use bf16-mixed")
    return torch.device(device)


def _frozen_encoder(patches: PatchConfig, device: torch.device, precision: str) -> PatchEncoder:
    """The encoder, eval mode, no gradients, on ``device``; checked on one patch.

    Raises:
        ConfigError: an unknown encoder, weights that do not fit, or patches it cannot take.
    """
    try:
        with torch.random.fork_rng(devices=[]):  # a random encoder is the same every run
            torch.manual_seed(INIT_SEED)
            encoder = build_encoder(patches.encoder_config())
    except EncoderError as exc:
        raise ConfigError(f"patches.encoder: {exc}") from None
    encoder = encoder.to(device=device, dtype=precisions.param_dtype(precision)).eval()
    encoder.requires_grad_(False)
    size = patches.patch_size
    try:
        _encode(encoder, torch.zeros(1, 3, size, size, dtype=torch.uint8, device=device), precision)
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise ConfigError(
            f"patches.encoder {patches.encoder.name} does not take {size} px patches "
            f"({type(exc).__name__}: {' '.join(str(exc).split())}); set --patch-size to its "
            "input size, or its options (e.g. img_size for a timm ViT)"
        ) from None
    return encoder


def _encode(encoder: PatchEncoder, patches: torch.Tensor, precision: str) -> torch.Tensor:
    """Features ``(n, D)`` of uint8 patches ``(n, 3, P, P)``, without a graph."""
    dtype = precisions.autocast_dtype(precision)
    autocast = (
        torch.autocast(patches.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    )
    with torch.no_grad(), autocast:
        return encoder(patches)


def encode_bag(
    encoder: PatchEncoder, bag: PatchBag, chunk_size: int, precision: str = "32"
) -> np.ndarray:
    """Features ``(N, D)`` float32 of a lazy bag, read and encoded ``chunk_size`` patches at a
    time (only one chunk of pixels in memory)."""
    out = np.empty((bag.shape[0], encoder.out_dim), dtype=np.float32)
    for start in range(0, bag.shape[0], chunk_size):
        chunk = bag.read((slice(start, start + chunk_size),))  # (n, 3, P, P) uint8
        out[start : start + len(chunk)] = _encode(encoder, chunk, precision).float().cpu().numpy()
    return out


def _slide_attrs(
    row: ManifestRow,
    grid: PatchGrid,
    patches: PatchConfig,
    job: dict,
    key: str,
    dim: int,
    roi: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The attributes of a slide's feature file; ``roi_file``/``roi_sha256`` only with an
    ROI (:func:`~gigastream.train.roi.roi_identity`; ``None`` values are not written)."""
    return {
        "encoder": patches.encoder.name,
        "weights_sha256": job["encoder"]["weights_sha256"],
        "mpp": grid.mpp,
        "patch_size": grid.patch_size,
        "patch_size_level0": grid.level0_patch,
        "patch_level": 0,  # coords are level-0 pixels
        "min_tissue": patches.min_tissue,
        "feature_dim": dim,
        "key": key,
        "name": row.slide_id,
        "slide_path": str(Path(row.path).resolve()),
        "roi_file": None if roi is None else roi["file"],
        "roi_sha256": None if roi is None else roi["sha256"],
        "gigastream_version": __version__,
    }


def _extract_slide(
    row: ManifestRow,
    out: Path,
    data: DataConfig,
    patches: PatchConfig,
    encoder: PatchEncoder,
    job: dict[str, Any],
    device: torch.device,
    precision: str,
) -> str:
    """``skipped`` (the slide's file is up to date) or ``written``.

    With ``data.roi_dir`` the patch grid lies over the tissue mask cut to the slide's ROI
    (:func:`~gigastream.train.data.slide_tissue_mask`), so only patches inside it are encoded.

    Raises:
        SlideError: the slide cannot be read, has no tissue (inside its ROI) or no patch on
            it, or is smaller than a patch; its ROI file is missing or malformed.
        OSError: the slide file does not exist.
    """
    roi = None if data.roi_dir is None else roi_identity(data.roi_dir, row.slide_id)
    key = slide_key(row, data, job, roi)
    path = out / f"{row.slide_id}.h5"
    if path.is_file() and read_attrs(path).get("key") == key:
        return "skipped"
    with SlideReader.open(row.path, mpp=row.mpp, backend=data.backend) as slide:
        grid = slide_patch_grid(slide, row.slide_id, data, patches, save_mask=False)
        features = encode_bag(encoder, PatchBag(slide, grid, device), patches.chunk_size, precision)
    attrs = _slide_attrs(row, grid, patches, job, key, encoder.out_dim, roi)
    write_features(path, features, grid.coords, attrs)
    return "written"


def _failure(row: ManifestRow, exc: Exception) -> str:
    """One line: why a slide could not be encoded."""
    if isinstance(exc, FileNotFoundError):
        return f"{row.path}: slide file not found"
    return str(exc) if isinstance(exc, SlideError) else f"{row.path}: {exc.strerror or exc}"


def _write_failures(out: Path, rows: Sequence[ManifestRow], failed: dict[str, str]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["slide_id", "path", "error"])
    for row in rows:
        if row.slide_id in failed:
            writer.writerow([row.slide_id, str(row.path), failed[row.slide_id]])
    return atomic_write_text(out / "failures.csv", buffer.getvalue())


def _forget_stale(path: Path) -> None:
    """Remove the file of a slide that now fails, so no run trains on its stale features."""
    if path.is_file():
        logger.warning("removing %s: its slide can no longer be encoded", path)
        with contextlib.suppress(OSError):
            path.unlink()


def extract_features(
    rows: Sequence[ManifestRow],
    out: str | Path,
    data: DataConfig,
    patches: PatchConfig,
    device: str = "auto",
    precision: str = "32",
    progress: bool = True,
) -> ExtractionSummary:
    """Write the patch features of every slide of ``rows`` into ``out`` (module docstring).

    Args:
        rows: the slides (their labels are not used).
        out: the output folder (created).
        data: how slides are read: ``mpp``, ``tissue``, ``backend``, ``mask_dir`` (masks
            there are used, none are written), ``roi_dir`` (only the patches inside each
            slide's ROI file ``<slide_id>.xml`` / ``.geojson`` / ``.json``; every slide needs
            one, :func:`~gigastream.train.roi.check_roi_files`).
        patches: ``encoder``, ``patch_size``, ``min_tissue``, ``chunk_size``.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        precision: ``32``, ``64``, ``bf16-mixed`` or ``16-mixed`` (CUDA); the files hold
            float32 whatever the precision.
        progress: a progress bar over the slides.

    Returns:
        The :class:`ExtractionSummary` (also in ``out/features.json``).

    Raises:
        ConfigError: bad settings, an unknown encoder, weights that do not fit, patches the
            encoder cannot take, an absent device, with ``data.roi_dir`` a slide without an
            ROI file or with an empty one (all before any slide is read or file written).
        AnnotationError: with ``data.roi_dir``, a malformed ROI file (naming it).
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    try:
        data.validate()
        patches.validate()
        precisions.check(precision, "--precision")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if data.roi_dir is not None:  # every slide's ROI file, read before any work
        check_roi_files(data.roi_dir, [row.slide_id for row in rows])
    torch_device = _torch_device(device, precision)
    encoder = _frozen_encoder(patches, torch_device, precision)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    job = job_settings(data, patches, weights_sha256(patches.encoder.weights))
    summary = ExtractionSummary(out, feature_dim=encoder.out_dim)
    status: dict[str, dict[str, Any]] = {}
    bar = tqdm(rows, desc="features", unit="slide", disable=None if progress else True)
    for row in bar:
        try:
            done = _extract_slide(row, out, data, patches, encoder, job, torch_device, precision)
        except (SlideError, OSError) as exc:  # missing, unreadable, no tissue, patch > slide
            reason = _failure(row, exc)
            summary.failed[row.slide_id] = reason
            status[row.slide_id] = {"status": "failed", "error": reason}
            logger.warning("no features of %s: %s", row.slide_id, reason)
            _forget_stale(out / f"{row.slide_id}.h5")
            continue
        (summary.written if done == "written" else summary.skipped).append(row.slide_id)
        status[row.slide_id] = {"status": done, "file": f"{row.slide_id}.h5"}
        bar.set_postfix(written=len(summary.written), skipped=len(summary.skipped))
    summary.seconds = time.perf_counter() - start
    _write_failures(out, rows, summary.failed)
    write_json(
        out / "features.json", _report(summary, job, patches, torch_device, precision, status)
    )
    return summary


def _report(
    summary: ExtractionSummary,
    job: dict[str, Any],
    patches: PatchConfig,
    device: torch.device,
    precision: str,
    status: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The contents of ``features.json``."""
    return {
        "settings": {
            **job,
            "chunk_size": patches.chunk_size,
            "device": str(device),
            "precision": precision,
        },
        "feature_dim": summary.feature_dim,
        "written": len(summary.written),
        "skipped": len(summary.skipped),
        "failed": len(summary.failed),
        "seconds": summary.seconds,
        "slides": status,
    }


__all__ = [
    "FEATURES_VERSION",
    "ExtractionSummary",
    "encode_bag",
    "extract_features",
    "job_settings",
    "slide_key",
    "weights_sha256",
]
