"""The per-mode worker of ``gigastream bench step``: one training step from a slide file
(or from its pixels in memory), timed in this process.

:class:`TrainingStep` is the step (a streamed trunk, a pooled, layer-normalised linear head,
SGD); :func:`run_worker` runs one mode of :data:`MODES` on one slide file and returns its
times, losses, peak memory and what was decoded. :mod:`gigastream.models.step_benchmark`
starts it as ``python -m gigastream.models.step_bench_worker --worker JSON`` (the JSON holds
its arguments), one fresh process per mode, so every peak is its own.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict

import torch
from torch import Tensor, nn

from gigastream import precision as precisions
from gigastream.streaming import StreamingModule
from gigastream.streaming.geometry import Geometry, describe
from gigastream.streaming.input import _reads_ahead
from gigastream.streaming.memory import peak_rss_mib
from gigastream.streaming.planner import make_pieces, parse_bytes
from gigastream.worker import worker_main

#: Microns per pixel of the synthetic slide (a 20x scan), and the mpp it is read at.
SLIDE_MPP = 0.5
#: The modes of one worker process.
MODES = ("read", "file", "memory")


class TrainingStep:
    """A streamed trunk, a pooled, layer-normalised linear head and SGD: one training step
    per call.

    Args:
        arch: trunk name (:func:`~gigastream.models.trunks.build_trunk`).
        tile_size: largest streamed tile in pixels.
        input_cache: :class:`~gigastream.streaming.StreamingModule`'s ``input_cache``.
        fold_batchnorm: fold the frozen BatchNorms into the convolutions.
        seed: seed of the initialisation (the same seed gives the same weights).
        input_spill: :class:`~gigastream.streaming.StreamingModule`'s ``input_spill``.
        device: where the trunk and the head run.
        precision: Lightning's precision name (parameters' dtype and autocast).
        memory_budget, host_memory_budget, channels_last: the streamed module's.
    """

    def __init__(
        self,
        arch: str,
        tile_size: int,
        input_cache: str,
        fold_batchnorm: bool,
        seed: int,
        input_spill: str | None = None,
        *,
        device: str = "cpu",
        precision: str = "32",
        memory_budget: str | None = None,
        host_memory_budget: str | None = None,
        channels_last: bool = False,
    ) -> None:
        from gigastream.models.trunks import build_trunk

        self.device = torch.device(device)
        self.precision = precisions.check(precision, "--precision")
        self.dtype = precisions.param_dtype(self.precision)
        self.autocast = precisions.autocast_dtype(self.precision)
        torch.manual_seed(seed)
        trunk, channels, _ = build_trunk(arch)
        cache: int | str = input_cache if input_cache == "auto" else parse_bytes(input_cache)
        self.streamed = StreamingModule(
            trunk.eval().to(self.device, self.dtype),
            tile_size=tile_size,
            memory_budget=memory_budget,
            freeze_batchnorm=True,
            fold_batchnorm=fold_batchnorm,
            input_cache=cache,
            input_spill=input_spill,
            host_memory_budget=host_memory_budget,
            channels_last=channels_last,
        )
        # LayerNorm: a random-init trunk's pooled features can be huge (ResNet-34's saturate
        # the logits, a loss of exactly 0), which would make the file-vs-memory loss check vacuous
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(channels), nn.Linear(channels, 2)
        ).to(self.device, self.dtype)
        params = list(self.streamed.parameters()) + list(self.head.parameters())
        self.optimizer = torch.optim.SGD(params, lr=1e-3)
        self.label = torch.tensor([1], device=self.device)

    def __call__(self, x) -> float:
        """One step on ``x`` (a ``(1, 3, H, W)`` tensor or a lazy source); the loss (read back
        from the device, so on CUDA the step's work has finished when it returns)."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(
            self.device.type, dtype=self.autocast or torch.float32, enabled=bool(self.autocast)
        ):
            fmap = self.streamed(x)  # (1, C, H / stride, W / stride)
            logits = self.head(fmap)
        loss = nn.functional.cross_entropy(logits.float(), self.label)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def plan(self, shape: Sequence[int]):
        """The streamed module's plan for a lazy input of ``shape`` on this step's device."""
        return self.streamed.plan(
            tuple(shape),
            precisions.compute_dtype(self.precision),
            lazy_input=True,
            device=self.device,
        )

    def first_segment_reads(self, shape: Sequence[int]) -> list[tuple[slice, ...]]:
        """The input regions the first streamed segment reads from a lazy input of ``shape``."""
        plan = self.plan(shape)
        first = plan.segments[0]
        assert first.mode == "stream", "a lazy input is always streamed"
        units = list(self.streamed.trunk.named_children())[first.span[0] : first.span[1]]
        geometry = Geometry.chain(*(describe(module, name) for name, module in units))
        pieces = make_pieces(geometry, first.in_shape[-2:], first.out_shape[-2:], first.tiles)
        return [piece.in_index for piece in pieces]


def _pixels(index: tuple[slice, ...]) -> int:
    rows, cols = index[-2], index[-1]
    return (rows.stop - rows.start) * (cols.stop - cols.start)


def run_worker(
    mode: str,
    path: str,
    backend: str,
    arch: str,
    tile_size: int,
    read_workers: int,
    warmup: int,
    repeats: int,
    threads: int | None,
    input_cache: str,
    fold_batchnorm: bool,
    seed: int,
    input_spill: str | None = None,
    device: str = "cpu",
    precision: str = "32",
    memory_budget: str | None = None,
    host_memory_budget: str | None = None,
    channels_last: bool = False,
    cudnn_benchmark: bool | None = None,
    read_bands: bool = True,
) -> dict:
    """Run one mode (:data:`MODES`) on one slide file in this process: its result.

    Returns:
        ``seconds`` (each timed run), ``seconds_median``, ``peak_rss_mib`` and, for the
        steps, ``losses`` (warm-up steps included) and ``plan``; ``read`` adds
        ``pixels_read``, ``megapixels_per_s``, ``first_piece_seconds`` (until the first
        tile was decoded: what a step waits before any compute), ``first_piece_pixels`` and
        ``bands_per_step``; ``file`` the ``input_stats`` of its last
        step (:class:`~gigastream.streaming.input.InputStats`, ``pixels_read`` added); on
        CUDA ``peak_cuda_mib`` (``max_memory_allocated`` over the timed steps, after the
        warm-up) and ``cuda_device``.
    """
    from gigastream.wsi.reader import SlideReader
    from gigastream.wsi.source import SlideSource

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda":
        mixed = precisions.autocast_dtype(precision) is not None or precision.startswith("16")
        torch.backends.cudnn.benchmark = mixed if cudnn_benchmark is None else cudnn_benchmark
    step = TrainingStep(
        arch,
        tile_size,
        input_cache,
        fold_batchnorm,
        seed,
        input_spill,
        device=device,
        precision=precision,
        memory_budget=memory_budget,
        host_memory_budget=host_memory_budget,
        channels_last=channels_last,
    )
    result: dict = {"mode": mode, "read_workers": read_workers}
    seconds: list[float] = []
    with SlideReader.open(path, backend=backend) as reader:
        source = SlideSource(
            reader,
            mpp=SLIDE_MPP,
            read_workers=read_workers,
            dtype=step.dtype,
            device=dev,
            bands=read_bands,
        )
        if mode == "read":
            indices = step.first_segment_reads(source.shape)
            first: list[float] = []
            for k in range(warmup + repeats):
                t0 = time.perf_counter()
                decoded, t_first = 0, 0.0
                for _ in _reads_ahead(source, indices):  # every tile, in the stream's order
                    decoded += 1
                    if decoded == 1:
                        t_first = time.perf_counter() - t0
                assert decoded == len(indices)
                if k >= warmup:
                    seconds.append(time.perf_counter() - t0)
                    first.append(t_first)
            result["first_piece_seconds"] = statistics.median(first)
            result["first_piece_pixels"] = _pixels(indices[0])
            result["bands_per_step"] = source.band_reads // (warmup + repeats)
            result["pixels_read"] = sum(map(_pixels, indices))
            result["tiles"] = len(indices)
        elif mode in ("file", "memory"):
            x: Tensor | SlideSource = source
            if mode == "memory":
                x = source.read((slice(None),) * 4)  # (1, 3, H, W), before timing
            losses = []
            for k in range(warmup + repeats):
                if k == warmup and dev.type == "cuda":  # the peak of the timed steps
                    torch.cuda.synchronize(dev)
                    torch.cuda.reset_peak_memory_stats(dev)
                t0 = time.perf_counter()
                losses.append(step(x))  # reads the loss back: the step's work is done
                if k >= warmup:
                    seconds.append(time.perf_counter() - t0)
            if dev.type == "cuda":
                result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
                result["cuda_device"] = torch.cuda.get_device_name(dev)
            result["losses"] = losses
            result["plan"] = str(step.streamed.last_plan)
            stats = step.streamed.last_input_stats
            if mode == "file" and stats is not None:
                result["input_stats"] = {**asdict(stats), "pixels_read": stats.pixels_read}
        else:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    result["seconds"] = seconds
    result["seconds_median"] = statistics.median(seconds)
    if mode == "read":
        result["megapixels_per_s"] = result["pixels_read"] / 1e6 / result["seconds_median"]
    result["peak_rss_mib"] = peak_rss_mib()
    result["threads"] = torch.get_num_threads()
    return result


def main(argv: list[str] | None = None) -> int:
    """The worker: ``--worker JSON`` runs :func:`run_worker` with the JSON object's
    arguments and prints its result (``status: ok`` added) as the last line of stdout.

    It parses nothing else: the benchmark's command line is ``gigastream bench step``.
    """
    return worker_main(
        argv,
        lambda **args: {"status": "ok", **run_worker(**args)},
        "gigastream.models.step_bench_worker",
        "bench step",
    )


__all__ = ["MODES", "SLIDE_MPP", "TrainingStep", "run_worker"]


if __name__ == "__main__":
    sys.exit(main())
