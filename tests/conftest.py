"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

#: real data prepared next to the project (``../shared/data``); never copied into the repo
SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available: {SHARED_DATA.resolve()} does not exist")
    return SHARED_DATA.resolve()
