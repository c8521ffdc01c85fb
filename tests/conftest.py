"""Shared test fixtures (kept small and generic)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

#: set in the child process that runs one ``native`` test
CHILD_ENV = "SRDISTILL_TEST_CHILD"


def pytest_configure(config):
    config.addinivalue_line("markers", "native: loads OpenVINO, ncnn/pnnx or NNCF; runs in its own pytest process")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """A ``native`` test runs in a child pytest process, so the native runtimes' thread pools, allocators
    and second OpenMP runtime never live in the suite's own process (the single-process suite died twice
    with SIGSEGV at random points after such tests; the crash never reproduced in a shorter run). The
    child's failure output, or its skip reason, is this test's."""
    if pyfuncitem.get_closest_marker("native") is None or os.environ.get(CHILD_ENV):
        return None
    cmd = [sys.executable, "-X", "faulthandler", "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
           pyfuncitem.nodeid]
    r = subprocess.run(cmd, cwd=pyfuncitem.config.rootpath, env={**os.environ, CHILD_ENV: "1"},
                       capture_output=True, text=True, errors="replace", timeout=900)
    tail = (r.stdout + r.stderr)[-4000:]
    last = (r.stdout.strip().splitlines() or [""])[-1]
    if r.returncode == 0 and " passed" not in last:
        reasons = [ln.split(": ", 1)[-1] for ln in r.stdout.splitlines() if ln.startswith("SKIPPED")]
        pytest.skip(reasons[0] if reasons else "skipped in its own process")
    if r.returncode != 0:
        pytest.fail(f"in its own process (exit {r.returncode}):\n{tail}", pytrace=False)
    return True


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


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module: repeatable CPU numbers, no oversubscription of 2 CI cores."""
    import torch  # lazy: conftest is collected before any test needs torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def c2(tmp_path_factory) -> Path:
    """A small Compact x2 (8 features, 2 convs, weights halved) saved as .pth."""
    import torch  # lazy: conftest is collected before any test needs torch

    from srdistill.models._compat import import_spandrel  # lazy: spandrel only for tests using c2

    import_spandrel()
    from spandrel.architectures.Compact import Compact  # lazy: after import_spandrel's shim

    torch.manual_seed(0)
    m = Compact(num_feat=8, num_conv=2, upscale=2)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(0.5)
    p = tmp_path_factory.mktemp("models") / "compact_x2.pth"
    torch.save(m.state_dict(), p)
    return p
