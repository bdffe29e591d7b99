"""Fixtures shared by the CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.train.conftest import planned_once

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(autouse=True, scope="module")
def _each_plan_once():
    """Each distinct streaming plan is computed once per session, shared with ``tests/train``
    (:func:`tests.train.conftest.planned_once`; module scope: never active outside these
    tests, e.g. in the planner's own tests)."""
    with planned_once():
        yield


@pytest.fixture(scope="session")
def manifest(tmp_path_factory) -> Path:
    """The tiny synthetic dataset of ``tests/train`` (synthesized once per session)."""
    from tests.train.conftest import dataset_manifest

    return dataset_manifest(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, manifest) -> Path:
    """The tiny finished two-epoch run of ``tests/train`` (trained once per session;
    read-only: copy it before writing)."""
    from tests.train.conftest import trained_run_folder

    return trained_run_folder(tmp_path_factory, manifest)


@pytest.fixture
def sources() -> list[str]:
    """The real H&E images and slide that synthetic tissue is cut from (skips if absent)."""
    if not (DATA / "images").is_dir():
        pytest.skip(f"shared H&E images not found at {DATA / 'images'}")
    return [str(DATA / "images"), str(DATA / "slides")]
