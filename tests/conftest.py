"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Iterator
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


@pytest.fixture(autouse=True, scope="session")
def _cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """mtl's image-feature cache (dataset grouping) lives in a temporary folder during tests."""
    folder = tmp_path_factory.mktemp("mtl-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTL_CACHE_DIR", str(folder))
        yield folder
