"""Fixtures shared by the CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture
def sources() -> list[str]:
    """The real H&E images and slide that synthetic tissue is cut from (skips if absent)."""
    if not (DATA / "images").is_dir():
        pytest.skip(f"shared H&E images not found at {DATA / 'images'}")
    return [str(DATA / "images"), str(DATA / "slides")]
