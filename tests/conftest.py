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
