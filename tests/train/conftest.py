"""A tiny synthetic dataset and run configuration shared by the engine and train-CLI tests.

Eight 512^2 px slides (0.5 um/px) streamed at 1 um/px (256^2 px inputs) with 192 px
tiles through ``vgg_small``: a two-epoch run takes a few seconds on one CPU thread.

Each distinct streaming plan is computed once per session (:func:`planned_once`, active in
every test module here and in ``tests/cli``): every tiny run plans the same trunk at the
same input twice, for the settings check and for the model, and each plan took about 2 s
on a loaded 2-core machine, over half of a test that trains (measured: 123 of 199 s of
``tests/cli/test_faults_runs.py`` and ``test_train_cli.py``).
"""

from __future__ import annotations

import contextlib
import copy
import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

#: The settings of every tiny run (``vgg_small`` where the trunk does not matter).
TINY: dict[str, Any] = {
    "model": {
        "arch": "vgg_small",
        "tile_size": 192,
        "head": "clam_sb",
        "head_options": {"hidden_dim": 32, "attn_dim": 16, "dropout": 0.0},
    },
    "data": {
        "mpp": 1.0,
        "num_workers": 0,
        "tissue": {"mpp": 2.0, "min_object_um2": 500.0, "max_hole_um2": 1000.0},
    },
    "train": {"epochs": 2, "threads": 1, "heatmaps": 1, "progress": False},
}

_CACHE: dict[str, Path] = {}

#: This session's plans (``"plans"``) and the free memory read once per device type.
_PLANS: dict[str, dict[Any, Any]] = {"plans": {}, "memory": {}}


def _trunk_key(units) -> tuple:
    """What a plan of ``(name, module)`` units depends on: each module's repr (its layers
    and their settings) and the shapes of its parameters and buffers."""
    return tuple(
        (
            name,
            type(module).__qualname__,
            repr(module),
            tuple((key, tuple(value.shape)) for key, value in module.state_dict().items()),
        )
        for name, module in units
    )


@contextlib.contextmanager
def planned_once() -> Iterator[None]:
    """Within the context ``StreamingModule`` plans through this session's memo.

    :func:`~gigastream.streaming.planner.plan_trunk` is a pure function of its arguments:
    each distinct call is planned for real once and copied for the calls that repeat it
    (errors are never stored: a refused plan is planned again). The machine's free memory,
    an argument of every plan, is read once per device type so that repeated calls are
    equal. The planner itself is tested in ``tests/streaming``, without the memo.
    """
    from gigastream.streaming import module

    if getattr(module.plan_trunk, "planned_once", False):  # already within the context
        yield
        return
    plans, memory = _PLANS["plans"], _PLANS["memory"]
    plan_trunk, available_memory = module.plan_trunk, module.available_memory

    def memoized(units, input_shape, **kwargs):
        key = (_trunk_key(units), tuple(input_shape), repr(sorted(kwargs.items())))
        if key not in plans:
            plans[key] = plan_trunk(units, input_shape, **kwargs)
        return copy.deepcopy(plans[key])

    memoized.planned_once = True

    def read_once(device):
        if device.type not in memory:
            memory[device.type] = available_memory(device)
        return memory[device.type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "plan_trunk", memoized)
        patch.setattr(module, "available_memory", read_once)
        yield


@pytest.fixture(autouse=True, scope="module")
def _each_plan_once():
    """The plan memo (module scope: never active outside these tests, e.g. in the planner's
    own tests)."""
    with planned_once():
        yield


def synth_manifest(root: Path, **settings: Any) -> Path:
    """A tiny synthetic dataset (512^2 px slides cut from the shared H&E images; skips when
    they are absent) with ``SynthConfig`` ``settings`` written under ``root``; its manifest."""
    from gigastream.wsi.synth import SynthConfig, synthesize_dataset

    if not (DATA / "images").is_dir():
        pytest.skip(f"shared H&E images not found at {DATA / 'images'}")
    config = SynthConfig(**{"slides": 8, "size": 512, "lesion_size": 96, "seed": 0, **settings})
    return synthesize_dataset(root, config, [str(DATA / "images")], progress=False)


def dataset_manifest(root: Path) -> Path:
    """Synthesize the tiny dataset once per session under ``root``; its manifest."""
    if "manifest" not in _CACHE:
        _CACHE["manifest"] = synth_manifest(root / "synth")
    return _CACHE["manifest"]


def write_tiny_yaml(path: Path, **sections: dict[str, Any]) -> Path:
    """``TINY`` with ``sections`` merged in, written as YAML to ``path``."""
    from gigastream.train.config_files import merge

    path.write_text(yaml.safe_dump(merge(TINY, sections), sort_keys=False))
    return path


def tiny_config(manifest: Path, **sections: dict[str, Any]):
    """The tiny :class:`~gigastream.train.config.RunConfig` on ``manifest``."""
    from gigastream.train.config_files import load_config, merge

    return load_config(merge(TINY, sections), {"manifest": str(manifest)}, source="tiny")


def copy_manifest(manifest: Path, dest: Path, edit=None) -> Path:
    """``manifest`` rewritten to ``dest`` with absolute slide paths; ``edit(rows)`` may change rows."""
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["path"] = str((manifest.parent / row["path"]).resolve())
    if edit is not None:
        rows = edit(rows)
    with open(dest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return dest


@pytest.fixture(scope="session")
def manifest(tmp_path_factory) -> Path:
    """The tiny synthetic dataset's manifest (8 slides, half positive)."""
    return dataset_manifest(tmp_path_factory.getbasetemp())


@pytest.fixture
def tiny_yaml(tmp_path) -> Path:
    """The tiny run's settings as a YAML file."""
    return write_tiny_yaml(tmp_path / "tiny.yaml")


def trained_run_folder(tmp_path_factory, manifest: Path) -> Path:
    """Train the tiny two-epoch run once per session; its folder."""
    if "run" not in _CACHE:
        from gigastream.train.fitting import fit

        out = tmp_path_factory.mktemp("trained") / "run"
        with planned_once():  # session fixtures are set up before the module's memo
            fit(tiny_config(manifest), out)
        _CACHE["run"] = out
    return _CACHE["run"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, manifest) -> Path:
    """One finished two-epoch run (shared read-only by several tests; copy before writing)."""
    return trained_run_folder(tmp_path_factory, manifest)


__all__ = [
    "TINY",
    "copy_manifest",
    "dataset_manifest",
    "planned_once",
    "tiny_config",
    "trained_run_folder",
    "write_tiny_yaml",
]
