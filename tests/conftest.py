"""Shared test fixtures (kept small and generic)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's ``../shared`` folder (real teachers, benchmark images); skip when absent."""
    d = Path(__file__).resolve().parents[1].parent / "shared"
    if not d.is_dir():
        pytest.skip("../shared not found: real teachers/benchmark images are only in the project's shared folder")
    return d


@pytest.fixture(autouse=True, scope="session")
def _runtime_cache(tmp_path_factory):
    """``--runtime auto`` caches its choice in the user's cache folder: the tests use their own."""
    import os

    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old
