"""Each role's molecule scenario, run for real on this machine.

A scenario converges its role on localhost, re-runs it expecting zero changes, runs it
in check mode and verifies the effect (nginx answers, wrk builds and prints its JSON
line, the facts file matches the machine). They need root: nginx binds ports, apt
installs build packages, files go under /etc, /opt and /var.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))
EXPECTED = {"facts", "guest", "guest_image", "k3s", "kata", "libvirt_host", "nginx_bench", "wrk"}
TIMEOUT_S = 1200

pytestmark = pytest.mark.molecule


def _molecule() -> list[str]:
    beside = Path(sys.executable).with_name("molecule")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("molecule")
    if found is None:
        pytest.fail("molecule is not installed (pip install -e '.[test]')")
    return [found]


def test_every_role_has_a_scenario() -> None:
    assert set(SCENARIOS) >= EXPECTED, f"molecule scenarios found: {SCENARIOS}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("molecule scenarios configure this machine and need root")
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "NO_COLOR": "1", "PY_COLORS": "0"}
    done = subprocess.run(
        [*_molecule(), "test", "-s", scenario],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, _failure_report(scenario, done.stdout + done.stderr)


def _failure_report(scenario: str, output: str) -> str:
    """The failing tasks (with some context) and the end of molecule's output."""
    lines = output.splitlines()
    marks = [
        i
        for i, line in enumerate(lines)
        if "fatal:" in line or "[ERROR]" in line or line.startswith(("CRITICAL", "ERROR"))
    ]
    context = "\n...\n".join("\n".join(lines[max(0, i - 3) : i + 12]) for i in marks[:6])
    tail = "\n".join(lines[-40:])
    return f"molecule test -s {scenario} failed:\n{context}\n--- end of output ---\n{tail}"
