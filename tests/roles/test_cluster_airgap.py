"""The k3s and kata molecule scenarios with the real release artifacts (marker `cluster`).

No k3s or Kata release can be downloaded on the development machines, so the default
molecule runs (tests/roles/test_molecule.py) stop before the install. Point
CVMH_AIRGAP_DIR at a directory holding k3s's air-gap files for v1.33.5+k3s1 (`k3s`,
`k3s-airgap-images-amd64.tar.zst`, `sha256sum-amd64.txt`) and a Kata static tarball
(`kata-static-VERSION-amd64.tar.zst`) to run them for real: air-gap install, a running
k3s whose node is Ready, Kata registered and the containerd config k3s rendered checked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AIRGAP_ENV = "CVMH_AIRGAP_DIR"
NEEDED = ("k3s", "k3s-airgap-images-amd64.tar.zst", "sha256sum-amd64.txt")

pytestmark = [pytest.mark.cluster, pytest.mark.molecule]


def _airgap_dir() -> Path:
    value = os.environ.get(AIRGAP_ENV, "")
    if not value:
        pytest.skip(f"{AIRGAP_ENV} is not set: no k3s/Kata release artifacts on this machine")
    directory = Path(value)
    missing = [name for name in NEEDED if not (directory / name).is_file()]
    if not list(directory.glob("kata-static-*.tar.*")):
        missing.append("kata-static-VERSION-amd64.tar.zst")
    if missing:
        pytest.skip(f"{AIRGAP_ENV}={directory} lacks {', '.join(missing)}")
    return directory


@pytest.mark.parametrize("scenario", ["k3s", "kata"])
def test_scenario_with_release_artifacts(scenario: str) -> None:
    _airgap_dir()
    if os.geteuid() != 0:
        pytest.skip("k3s and Kata install as root")
    beside = Path(sys.executable).with_name("molecule")
    molecule = str(beside) if beside.exists() else shutil.which("molecule")
    assert molecule, "molecule is not installed (pip install -e '.[test]')"
    done = subprocess.run(
        [molecule, "test", "-s", scenario],
        cwd=ROOT,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "NO_COLOR": "1", "PY_COLORS": "0"},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-8000:]
