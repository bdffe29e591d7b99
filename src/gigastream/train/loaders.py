"""The DataLoader of a run's slides: whole slides, their patch bags for patch models, or
their cached features for feature models (``data.features_dir``).

Its worker processes die with the process that started them: on Linux each worker asks
the kernel for ``SIGKILL`` when its parent dies (``prctl(PR_SET_PDEATHSIG)``), so a run
killed with ``kill -9`` (e.g. by the out-of-memory killer) leaves no workers behind that
hold memory and its run folder.

Example:
    >>> loader = slide_loader(rows, ["benign", "malignant"], DataConfig(), seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable, Sequence

from torch.utils.data import DataLoader, Dataset

from gigastream.models.patch_mil import PatchConfig
from gigastream.train.config import DataConfig
from gigastream.train.data import SlideExamples, example_loader
from gigastream.train.feature_data import FeatureExamples
from gigastream.train.patch_data import PatchExamples
from gigastream.wsi.manifest import ManifestRow


def slide_loader(
    rows: Sequence[ManifestRow],
    class_names: Sequence[str],
    data: DataConfig,
    seed: int = 0,
    shuffle: bool = False,
    balanced: bool = False,
    patches: PatchConfig | None = None,
    strata: Sequence[int | None] | None = None,
) -> DataLoader:
    """A DataLoader of the slides in ``rows`` (workers as configured in ``data``): whole
    slides (:class:`~gigastream.train.data.SlideExamples`), with ``patches`` their patch bags
    (:class:`~gigastream.train.patch_data.PatchExamples`), or with ``data.features_dir``
    their cached features (:class:`~gigastream.train.feature_data.FeatureExamples`).
    ``balanced`` interleaves the classes, or the groups of ``strata`` (one per row)."""
    workers = min(data.num_workers, len(rows))
    if data.features_dir is not None:
        dataset: Dataset = FeatureExamples(rows, class_names, data)
    elif patches is None:
        dataset = SlideExamples(rows, class_names, data)
    else:
        dataset = PatchExamples(rows, class_names, data, patches)
    loader = example_loader(dataset, workers, seed, shuffle, balanced, strata)
    if workers:
        loader.worker_init_fn = functools.partial(
            _die_with_parent, os.getpid(), loader.worker_init_fn
        )
    return loader


#: ``prctl`` option: the signal a process gets when its parent dies (``<linux/prctl.h>``).
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int, then: Callable[[int], None] | None, worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: the worker is killed when ``parent`` dies; then
    ``then(worker_id)`` (the loader's own ``worker_init_fn``, if any).

    The kernel sends the signal when the *thread* that forked the worker ends: loaders are
    iterated from the main thread (Lightning's loop, prediction), which ends with the process.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request
            os._exit(1)
    if then is not None:
        then(worker_id)


__all__ = ["slide_loader"]
