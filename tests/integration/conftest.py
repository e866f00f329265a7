"""The `local` lab, provisioned once for the whole integration session.

Provisioning `local` builds (or reuses) the cached guest image and boots its guest vm0
under libvirt, minutes when the image cache is cold; test_local_lab.py and
test_guests.py share that one provision instead of booting a guest each. The
integration tests end with test_guests.py's teardown check, moved after the last of them
(every other one uses the guest it removes); the fixture's own finalizer tears the guests
down again in case that check did not run (a subset was selected, or it failed halfway).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEARDOWN_CHECK = "test_teardown_leaves_nothing_behind"
HOST_ONLY_FIRST = "test_report_compare.py"


def cli(*args: str, timeout: int = 3600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cvmharness.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "CVMHARNESS_HOME": str(ROOT)})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the host-only comparison tests first, before the guest is booted (an emulated
    guest, even idle, takes CPU from nginx and wrk and adds run-to-run noise); move the
    teardown check after the last integration test, and before anything that follows
    them (molecule scenarios start and stop libvirtd themselves)."""
    first = [item for item in items if item.path.name == HOST_ONLY_FIRST]
    last = [item for item in items if item.name == TEARDOWN_CHECK]
    rest = [item for item in items
            if item.name != TEARDOWN_CHECK and item.path.name != HOST_ONLY_FIRST]
    rest = first + rest
    here = Path(__file__).parent
    end = max((n + 1 for n, item in enumerate(rest) if item.path.parent == here), default=0)
    items[:] = rest[:end] + last + rest[end:]


def libvirtd_running() -> bool:
    return subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True,
                          check=False).returncode == 0


@pytest.fixture(scope="session")
def libvirtd_before() -> bool:
    """Whether libvirtd ran before this session: teardown stops it only if the harness
    started it."""
    return libvirtd_running()


@pytest.fixture(scope="session")
def local_lab(libvirtd_before: bool) -> Iterator[Path]:
    done = cli("provision", "--lab", "local")
    assert done.returncode == 0, done.stderr[-4000:]
    yield ROOT
    cli("teardown", "--lab", "local", "--only", "guests")
