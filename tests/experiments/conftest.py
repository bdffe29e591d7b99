"""Import the experiments' code by file path: ``experiments/<name>/`` is not a package.

:func:`experiment_module` puts ``experiments/<name>`` on ``sys.path``, as running
``python experiments/<name>/run.py`` does, so the experiment's own modules (``sweep``,
``bags``, ``mnist``, ...) import each other by name; every experiment has a ``run.py``, so
that one is imported as ``<name>_run``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from tests.train.conftest import manifest  # noqa: F401  (the tiny synthetic dataset)

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
#: The real MNIST test set, where the shared data is (tests that need it skip without it).
MNIST = EXPERIMENTS.parent / ".." / "shared" / "data" / "mnist"


def experiment_module(name: str, module: str = "run") -> ModuleType:
    """``experiments/<name>/<module>.py`` (``run`` is imported as ``<name>_run``)."""
    folder = EXPERIMENTS / name
    if not (folder / f"{module}.py").is_file():
        raise FileNotFoundError(f"no experiment module {folder / module}.py")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    if module != "run":
        return importlib.import_module(module)
    unique = f"{name}_run"
    if unique not in sys.modules:
        spec = importlib.util.spec_from_file_location(unique, folder / "run.py")
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[unique] = loaded
        spec.loader.exec_module(loaded)
    return sys.modules[unique]
