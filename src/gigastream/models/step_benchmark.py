"""Benchmark: one whole training step read from a pyramidal slide file, against the same
step from the slide's pixels in memory.

A synthetic H&E slide of ``size``² px at 0.5 um/px (:mod:`gigastream.wsi.synth`'s renderer,
texture cut from real H&E, tissue everywhere so that every read decodes tissue) is written
once per compression (:class:`~gigastream.wsi.pyramid.PyramidConfig`: 256 px file tiles,
``jpeg`` at quality 90 or ``jpeg2000`` at 40 dB PSNR). A training step is: read tiles from
the file -> stream them through a trunk (:func:`~gigastream.models.trunks.build_trunk`,
random initialisation, BatchNorm frozen) -> global average pool + ``Linear(channels, 2)``
-> cross-entropy with label 1 -> backward -> SGD step (lr 1e-3, every parameter). For every compression and every
number of read threads (``read_workers``), each in a fresh Python process so that its
peak resident set (``ru_maxrss``) is its own, three modes are timed:

- ``read``: decoding every tile of the first streamed segment alone, on the streaming
  read-ahead threads (``_reads_ahead``, ``read_workers`` threads): seconds and MP/s;
- ``file``: the step from the lazy :class:`~gigastream.wsi.source.SlideSource`, with the
  decoded uint8 pixels kept from the forward pass for the backward recompute
  (``input_cache``), so each pixel is decoded once per step; the pixels decoded per step
  over the slide's pixels (tile margins make it a little over 1; read twice without the
  cache);
- ``memory``: the same step from a tensor of the same pixels (the slide read whole
  before timing): the compute alone. It reads nothing during the step, so one run per
  compression serves every ``read_workers``.

``file / memory`` is the key figure (reading *hidden* behind the compute: <= 1.05); the
*hidden fraction* of the read is ``1 - (file - memory) / read`` clipped to [0, 1]. The
losses of the file and the memory steps agree (the same pixels, the same seeded model).

Run it with ``gigastream bench step`` (see ``--help``) or :func:`run_step_benchmark`;
``python -m gigastream.models.step_bench_worker --worker JSON`` is the per-mode worker (it
reads only its own JSON, never the command line's flags).

Example:
    >>> config = StepBenchConfig(size=512, tile_size=192, formats=("jpeg",),
    ...                          read_workers=(1,), repeats=1, warmup=0)
    >>> result = run_step_benchmark(config)  # doctest: +SKIP
    >>> result["rows"][0]["file_vs_memory"]  # doctest: +SKIP
    1.02
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gigastream.models.step_bench_worker import MODES, SLIDE_MPP, run_worker
from gigastream.streaming.planner import parse_bytes
from gigastream.wsi.pyramid import COMPRESSIONS, PyramidConfig, write_pyramid

logger = logging.getLogger(__name__)

#: Where the real H&E texture comes from by default: ``../shared/data/images`` beside the
#: repository checkout.
DEFAULT_SOURCES = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "images"
#: Backends: ``auto`` is OpenSlide where it reads the compression (JPEG), else tiffslide.
BACKENDS = ("auto", "openslide", "tiffslide")
#: The compressions OpenSlide cannot read (see :mod:`gigastream.wsi.pyramid`).
NOT_OPENSLIDE = ("jpeg2000",)

#: ``launch(worker_args) -> result``: runs one mode (in a fresh process, or in this one).
Launcher = Callable[[dict], dict]


@dataclass
class StepBenchConfig:
    """What ``gigastream bench step`` measures.

    Attributes:
        size: edge of the square synthetic slide in pixels (at :data:`SLIDE_MPP`).
        arch: trunk (:func:`~gigastream.models.trunks.list_trunks`).
        tile_size: largest streamed tile in pixels (margins included).
        formats: compressions of the slide file (``jpeg``, ``jpeg2000``), each timed.
        read_workers: numbers of read threads, each timed.
        repeats: timed steps per mode (the median is reported).
        warmup: untimed steps per mode before the timed ones.
        threads: ``torch.set_num_threads`` of the workers (``None``: torch's default).
        input_cache: the streamed module's ``input_cache`` (bytes, e.g. ``"2GiB"``;
            ``"0"``: decode every tile again in backward; ``"auto"``).
        fold_batchnorm: fold the frozen BatchNorms into the convolutions.
        input_spill: folder of the spill file for what does not fit ``input_cache``
            (memory-mapped, read back in backward instead of decoded again); ``None``: none.
        backend: slide reader (:data:`BACKENDS`).
        work_dir: where the slides are written and kept (``None``: a temporary folder,
            removed at the end); a slide already there (same size, format, seed) is reused.
        sources: H&E images the slide's texture is cut from.
        seed: seed of the slide and of the model's initialisation.
        device: ``cpu`` or ``cuda[:N]``: where the trunk and head run (tiles are decoded
            on the CPU and copied there).
        precision: Lightning's name (``32``, ``bf16-mixed``, ``16-mixed`` on CUDA, ...;
            :mod:`gigastream.precision`).
        memory_budget: the streamed module's ``memory_budget`` (e.g. ``"40GiB"``; the planner
            picks the tiles within it, ``tile_size`` the largest); ``None``: the plan of
            ``tile_size`` alone.
        host_memory_budget: the streamed module's ``host_memory_budget`` (maps offloaded
            to host memory on CUDA); ``None``: the machine's available memory.
        channels_last: run the tiles in ``torch.channels_last``.
        cudnn_benchmark: cuDNN autotuning on CUDA (``None``: on for the mixed and half
            precisions, off for float32, whose autotuning at 8192² took minutes).
        read_bands: decode a large region in bands by every reader at once
            (:class:`~gigastream.wsi.source.SlideSource`'s ``bands``; ``False``: one reader
            per region).
        modes: the modes to run, of :data:`MODES` (``memory`` needs the whole slide as a
            tensor on the device: leave it out where that does not fit, e.g. 65536²).
    """

    size: int = 4096
    arch: str = "vgg_small"
    tile_size: int = 1024
    formats: tuple[str, ...] = ("jpeg", "jpeg2000")
    read_workers: tuple[int, ...] = (1, 2)
    repeats: int = 2
    warmup: int = 1
    threads: int | None = None
    input_cache: str = "auto"
    fold_batchnorm: bool = False
    input_spill: Path | None = None
    backend: str = "auto"
    work_dir: Path | None = None
    sources: tuple[Path, ...] = field(default_factory=lambda: (DEFAULT_SOURCES,))
    seed: int = 0
    device: str = "cpu"
    precision: str = "32"
    memory_budget: str | None = None
    host_memory_budget: str | None = None
    channels_last: bool = False
    cudnn_benchmark: bool | None = None
    modes: tuple[str, ...] = MODES
    read_bands: bool = True

    def validate(self) -> None:
        """Raise ValueError naming the bad setting and the fix (before any work)."""
        from gigastream.models.trunks import list_trunks
        from gigastream.streaming.bench_worker import check_precision

        if self.size < 512:
            raise ValueError(f"--size must be at least 512 px, got {self.size}")
        if self.arch not in list_trunks():
            raise ValueError(f"--arch {self.arch!r} is unknown; choose one of {list_trunks()}")
        if self.tile_size < 64:
            raise ValueError(f"--tile must be at least 64 px, got {self.tile_size}")
        bad = [f for f in self.formats if f not in COMPRESSIONS]
        if bad or not self.formats:
            raise ValueError(
                f"--formats {' '.join(bad) or '(none)'}: not a slide compression; "
                f"choose from {' '.join(COMPRESSIONS)}"
            )
        if not self.read_workers or min(self.read_workers) < 1:
            raise ValueError(
                f"--read-workers must be 1 or more threads each, got "
                f"{' '.join(map(str, self.read_workers)) or '(none)'}"
            )
        if self.repeats < 1:
            raise ValueError(f"--repeats must be at least 1, got {self.repeats}")
        if self.warmup < 0:
            raise ValueError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {self.threads}")
        if self.input_cache != "auto":
            parse_bytes(self.input_cache)  # its ValueError names the value and the form
        for budget in (self.memory_budget, self.host_memory_budget):
            if budget is not None:
                parse_bytes(budget)
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ValueError(f"--modes {' '.join(bad) or '(none)'}: choose from {' '.join(MODES)}")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"--device {self.device!r}: use cpu or cuda[:N]") from None
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"--device {self.device!r}: use cpu or cuda[:N]")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available here; use --device cpu")
        check_precision(self.precision, False, device)  # names the precision and the fix
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend {self.backend!r}: choose one of {' '.join(BACKENDS)}")
        if self.backend == "openslide" and any(f in NOT_OPENSLIDE for f in self.formats):
            raise ValueError(
                "--backend openslide cannot read JPEG 2000 slides (generic TIFF, tag 34712); "
                "use --backend auto or tiffslide, or --formats jpeg"
            )


def backend_for(compression: str, backend: str) -> str:
    """The reader backend for a slide of ``compression`` (``auto``: OpenSlide for JPEG,
    tiffslide for JPEG 2000, which OpenSlide cannot read)."""
    if backend != "auto":
        return backend
    return "tiffslide" if compression in NOT_OPENSLIDE else "openslide"


# ----------------------------------------------------------------------------- the slide
def tissue_strips(size: int, seed: int, sources: Sequence[Path]) -> Iterator[np.ndarray]:
    """Level-0 strips of a ``size``² synthetic H&E slide that is tissue everywhere.

    :class:`~gigastream.wsi.synth.SlideRenderer`'s texture (real H&E blocks, cross-faded)
    with its tissue field set to 1, so no pixel is empty glass (reads decode tissue, as
    in a slide's tissue region). The same arguments give the same pixels.
    """
    from gigastream.wsi.synth import (
        SlideRenderer,
        SynthConfig,
        build_texture_bank,
        find_sources,
    )

    config = SynthConfig(slides=1, size=size, positive_fraction=0.0, seed=seed)
    config.validate()
    bank = build_texture_bank(find_sources(sources), config)
    renderer = SlideRenderer(config, bank, index=0, positive=False)
    renderer.field_padded = np.ones_like(renderer.field_padded)  # opaque tissue everywhere
    return renderer.strips()


def slide_path(work_dir: Path, size: int, compression: str, seed: int) -> Path:
    """Where the slide of these settings is kept in ``work_dir``."""
    return Path(work_dir) / f"step-slide-{size}px-{compression}-seed{seed}.tif"


def ensure_slide(
    work_dir: Path, size: int, compression: str, seed: int, sources: Sequence[Path]
) -> Path:
    """The slide file of these settings in ``work_dir``, written if it is not there yet
    (:func:`~gigastream.wsi.pyramid.write_pyramid` writes it whole or not at all)."""
    path = slide_path(work_dir, size, compression, seed)
    if path.is_file():
        logger.info("reusing %s", path)
        return path
    t0 = time.perf_counter()
    write_pyramid(
        path,
        tissue_strips(size, seed, sources),
        size,
        size,
        SLIDE_MPP,
        PyramidConfig(compression=compression),
        description=f"gigastream bench step slide ({compression}, seed {seed})",
    )
    logger.info("wrote %s in %.1f s", path, time.perf_counter() - t0)
    return path


# ----------------------------------------------------------------------------- the benchmark
def process_launcher(threads: int | None, timeout_s: float | None = None) -> Launcher:
    """A launcher that runs each mode in a fresh Python process (``OMP_NUM_THREADS`` set to
    ``threads``); a failed worker gives ``{"status": "failed", "error": ...}``."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)

    def launch(args: dict) -> dict:
        cmd = [sys.executable, "-m", "gigastream.models.step_bench_worker", "--worker"]
        try:
            proc = subprocess.run(
                [*cmd, json.dumps(args)], capture_output=True, text=True, env=env, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            return {"status": "failed", "error": f"timed out after {timeout_s:g} s"}
        lines = proc.stdout.strip().splitlines()
        if proc.returncode == 0 and lines:
            return json.loads(lines[-1])
        tail = proc.stderr.strip().splitlines()
        error = tail[-1] if tail else f"exit status {proc.returncode}"
        return {"status": "failed", "error": error, "stderr": proc.stderr[-4000:]}

    return launch


def in_process_launcher(args: dict) -> dict:
    """Run a mode in this process (tests; its peak RSS is the process's so far); torch's
    thread count is put back afterwards."""
    threads = torch.get_num_threads()
    try:
        return {"status": "ok", **run_worker(**args)}
    finally:
        torch.set_num_threads(threads)


def _json_value(value: Any) -> Any:
    """A config value as JSON holds it: paths as strings (also in tuples), else as is."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    return value


def run_step_benchmark(
    config: StepBenchConfig, launch: Launcher | None = None, out: Path | None = None
) -> dict:
    """Write the slides, run every (format, read workers, mode) and collect the result.

    Args:
        config: what to measure (validated here).
        launch: runs one mode (default: :func:`process_launcher`, a fresh process each).
        out: JSON file to write (atomically); ``None``: none.

    Returns:
        ``{"config", "machine", "slide", "plan", "rows", "modes"}``: one row per format
        and read-worker count (:func:`summarise`), ``modes`` every worker's own result.

    Raises:
        ValueError: a bad setting (:meth:`StepBenchConfig.validate`).
    """
    from gigastream.atomic import atomic_write
    from gigastream.models.bag_benchmark import machine_info

    config.validate()
    launch = launch or process_launcher(config.threads)
    load_before = os.getloadavg()[0]
    modes: dict[str, dict] = {}
    files: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="gigastream-step-") as tmp:
        work_dir = Path(config.work_dir) if config.work_dir is not None else Path(tmp)
        work_dir.mkdir(parents=True, exist_ok=True)
        for compression in config.formats:
            path = ensure_slide(work_dir, config.size, compression, config.seed, config.sources)
            backend = backend_for(compression, config.backend)
            files[compression] = {"bytes": path.stat().st_size, "backend": backend}
            common = {
                "path": str(path),
                "backend": backend,
                "arch": config.arch,
                "tile_size": config.tile_size,
                "warmup": config.warmup,
                "repeats": config.repeats,
                "threads": config.threads,
                "input_cache": config.input_cache,
                "fold_batchnorm": config.fold_batchnorm,
                "seed": config.seed,
                "input_spill": _json_value(config.input_spill),
                "device": config.device,
                "precision": config.precision,
                "memory_budget": config.memory_budget,
                "host_memory_budget": config.host_memory_budget,
                "channels_last": config.channels_last,
                "cudnn_benchmark": config.cudnn_benchmark,
                "read_bands": config.read_bands,
            }
            runs = [("memory", 1)] if "memory" in config.modes else []
            runs += [
                (m, n) for n in config.read_workers for m in ("read", "file") if m in config.modes
            ]
            for mode, workers in runs:
                key = mode_key(compression, mode, workers)
                logger.warning("running %s ...", key)
                modes[key] = launch({**common, "mode": mode, "read_workers": workers})
    config_record = {k: _json_value(v) for k, v in asdict(config).items()}
    machine = machine_info(torch.device(config.device))
    machine.update(
        threads=config.threads or torch.get_num_threads(), load_average_before=load_before
    )
    machine["load_average_after"] = os.getloadavg()[0]
    plan = next((r["plan"] for r in modes.values() if r.get("mode") == "file"), None)
    result = {
        "config": config_record,
        "machine": machine,
        "slide": {"size": config.size, "mpp": SLIDE_MPP, "pixels": config.size**2, "files": files},
        "plan": plan,
        "rows": summarise(config, modes, files),
        "modes": modes,
    }
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(out), lambda tmp: tmp.write_text(json.dumps(result, indent=1) + "\n"))
    return result


def mode_key(compression: str, mode: str, read_workers: int) -> str:
    """The key of one worker's result in ``result["modes"]``, e.g. ``jpeg/file/2``."""
    return f"{compression}/memory" if mode == "memory" else f"{compression}/{mode}/{read_workers}"


def summarise(config: StepBenchConfig, modes: dict[str, dict], files: dict[str, dict]) -> list:
    """One row per format and read-worker count, from the workers' results.

    A row holds ``read_seconds``, ``read_megapixels_per_s``, ``compute_seconds`` (the memory
    step), ``file_seconds``, ``file_vs_memory``, ``hidden_fraction``,
    ``decoded_per_slide_pixel`` (pixels decoded per file step / H*W), the first losses of
    the file and memory steps and their relative difference, the peak RSS per mode and, on
    CUDA, ``peak_cuda_mib`` per step mode; a figure whose mode was not run
    (``config.modes``) is ``None``. ``status`` is ``ok`` or names the worker that failed.
    """
    rows = []
    slide_pixels = config.size**2
    for compression in config.formats:
        memory = modes.get(mode_key(compression, "memory", 1))
        for workers in config.read_workers:
            read = modes.get(mode_key(compression, "read", workers))
            file = modes.get(mode_key(compression, "file", workers))
            row: dict = {
                "format": compression,
                "backend": files[compression]["backend"],
                "file_bytes": files[compression]["bytes"],
                "read_workers": workers,
            }
            ran = {m: r for m, r in (("memory", memory), ("read", read), ("file", file)) if r}
            failed = [(m, r) for m, r in ran.items() if r.get("status", "ok") != "ok"]
            if failed:
                mode, bad = failed[0]
                row["status"] = f"{mode} failed: {bad.get('error')}"
                rows.append(row)
                continue

            def median(r: dict | None) -> float | None:
                return None if r is None else r["seconds_median"]

            read_s, compute_s, file_s = median(read), median(memory), median(file)
            loss_file = file["losses"][0] if file else None
            loss_memory = memory["losses"][0] if memory else None
            both = file_s is not None and compute_s is not None
            row.update(
                status="ok",
                read_seconds=read_s,
                read_megapixels_per_s=read["megapixels_per_s"] if read else None,
                first_piece_seconds=read["first_piece_seconds"] if read else None,
                compute_seconds=compute_s,
                file_seconds=file_s,
                file_vs_memory=file_s / compute_s if both else None,
                hidden_fraction=(
                    min(1.0, max(0.0, 1.0 - (file_s - compute_s) / read_s))
                    if both and read_s
                    else None
                ),
                decoded_per_slide_pixel=(
                    file["input_stats"]["pixels_read"] / slide_pixels if file else None
                ),
                loss_file=loss_file,
                loss_memory=loss_memory,
                loss_rel_diff=(
                    abs(loss_file - loss_memory) / max(abs(loss_memory), 1e-30)
                    if loss_file is not None and loss_memory is not None
                    else None
                ),
                peak_rss_mib={m: r["peak_rss_mib"] for m, r in ran.items()},
            )
            cuda = {m: r["peak_cuda_mib"] for m, r in ran.items() if "peak_cuda_mib" in r}
            if cuda:
                row["peak_cuda_mib"] = cuda
            rows.append(row)
    return rows


def _cell(value: float | None, width: int, digits: int, suffix: str = "") -> str:
    text = "-" if value is None else f"{value:.{digits}f}{suffix}"
    return f"{text:>{width}}"


def format_table(result: dict) -> str:
    """The rows as a short text table (``-`` where a mode was not run); on CUDA the peak
    device memory of the file and memory steps as well."""
    head = (
        f"{'format':<9}{'workers':>8}{'read s':>9}{'MP/s':>8}{'first s':>9}{'compute s':>11}"
        f"{'file s':>9}"
        f"{'file/mem':>10}{'hidden':>8}{'decoded':>9}{'RSS file/mem MiB':>18}"
    )
    cuda = any("peak_cuda_mib" in r for r in result["rows"])
    lines = [head + (f"{'CUDA file/mem MiB':>19}" if cuda else "")]
    for r in result["rows"]:
        if r["status"] != "ok":
            lines.append(f"{r['format']:<9}{r['read_workers']:>8}  {r['status']}")
            continue
        rss = "/".join(
            "-" if r["peak_rss_mib"].get(m) is None else f"{r['peak_rss_mib'][m]:.0f}"
            for m in ("file", "memory")
        )
        line = (
            f"{r['format']:<9}{r['read_workers']:>8}{_cell(r['read_seconds'], 9, 2)}"
            f"{_cell(r['read_megapixels_per_s'], 8, 1)}{_cell(r.get('first_piece_seconds'), 9, 3)}"
            f"{_cell(r['compute_seconds'], 11, 2)}"
            f"{_cell(r['file_seconds'], 9, 2)}{_cell(r['file_vs_memory'], 10, 3, 'x')}"
            f"{_cell(r['hidden_fraction'], 8, 2)}{_cell(r['decoded_per_slide_pixel'], 9, 3)}"
            f"{rss:>18}"
        )
        if cuda:
            peaks = r.get("peak_cuda_mib", {})
            line += f"{'/'.join(f'{peaks[m]:.0f}' if m in peaks else '-' for m in ('file', 'memory')):>19}"
        lines.append(line)
    return "\n".join(lines)


__all__ = ["StepBenchConfig", "format_table", "run_step_benchmark"]
