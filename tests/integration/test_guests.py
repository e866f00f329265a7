"""A real libvirt guest of the `local` lab, through the real CLI.

The session fixture provisions the lab (image build or cache hit, guest vm0 booted under
KVM or TCG, nginx and wrk inside it by the same roles as on the host); these tests run
host -> vm and vm-local cells, check the samples and the guest's facts, and end the
session by tearing the guests down and checking that nothing is left: no cvmh-* domain
or network, no guest disk, no namespace, no QEMU process, no libvirt daemon the harness
started. All traffic goes to 127.0.0.1 (QEMU user networking's loopback forwards, or the
guest's own loopback).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cvmharness.store import read_samples

pytestmark = [pytest.mark.integration, pytest.mark.guests]

MATRIX = "tests/data/matrices/guests-smoke.yml"
GUEST_DIR = Path("/var/lib/cvmharness/guests")
ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: int = 3600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cvmharness.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "CVMHARNESS_HOME": str(ROOT)})


def virsh(*args: str) -> list[str]:
    done = subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True,
                          text=True, timeout=60, check=False)
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def harness_qemu_processes() -> list[str]:
    done = subprocess.run(["pgrep", "-a", "-f", "qemu-system-x86_64 .*guest=cvmh-"],
                          capture_output=True, text=True, check=False)
    return done.stdout.splitlines()


def by_scenario(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for sample in read_samples(run_dir):
        found.setdefault(str(sample["scenario"]), []).append(sample)
    return found


def test_provision_again_changes_nothing_in_the_guests(local_lab: Path) -> None:
    done = cli("provision", "--lab", "local", "--only", "guests")
    assert done.returncode == 0, done.stderr[-4000:]
    assert "(0 changes)" in done.stderr, done.stderr[-4000:]


def test_the_guest_runs_under_libvirt(local_lab: Path) -> None:
    assert virsh("domstate", "cvmh-vm0") == ["running"]
    # no TDX here: the td guest is declared but never defined
    assert "cvmh-td0" not in virsh("list", "--all", "--name")
    boot = json.loads((GUEST_DIR / "vm0" / "boot.json").read_text())
    assert boot["domain"] == "cvmh-vm0" and boot["boot_to_ssh_s"] > 0


def test_doctor_names_the_failing_tdx_signals(local_lab: Path) -> None:
    done = cli("doctor", "--lab", "local", "--matrix", MATRIX)
    assert "host-to-vm: can run" in done.stdout, done.stdout
    assert "vm-local: can run" in done.stdout
    tdx_line = next(line for line in done.stdout.splitlines() if "host-to-td" in line)
    if "can run" not in tdx_line:
        assert "cannot launch TDX guests" in tdx_line
        assert "kvm_intel" in tdx_line and "tdx_host_platform" in tdx_line


def test_guest_cells_have_real_samples_and_facts(local_lab: Path, tmp_path: Path) -> None:
    done = cli("bench", "--lab", "local", "--matrix", MATRIX, "--out", str(tmp_path),
               "--only", "host-to-vm", "vm-local", "host-to-td", "td-local")
    assert done.returncode == 0, done.stderr[-4000:]
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    samples = by_scenario(run_dir)
    for scenario in ("host-to-vm", "vm-local"):
        reps = samples[scenario]
        assert [r["status"] for r in reps] == ["ok", "ok"], reps
        for rep in reps:
            metrics = rep["metrics"]
            assert metrics["requests"] > 0 and metrics["requests_per_sec"] > 0
            # the guest's nginx counted the load itself
            assert rep["server_requests"] >= metrics["requests"]
            assert (run_dir / "raw" / rep["cell_id"] / str(rep["repetition"]) / "wrk.txt"
                    ).read_text().count("Requests/sec") == 1
    # host -> vm goes through the loopback forward; vm-local stays on the guest's loopback
    assert all(r["url"].startswith("http://127.0.0.1:18080/") for r in samples["host-to-vm"])
    assert all(r["url"].startswith("http://127.0.0.1:8080/") for r in samples["vm-local"])
    for scenario in ("host-to-td", "td-local"):
        for rep in samples[scenario]:
            assert rep["status"] == "skipped"
            assert "cannot launch TDX guests" in rep["reason"], rep["reason"]

    facts = json.loads((run_dir / "facts" / "vm0.json").read_text())
    assert facts["tdx"]["guest"]["detected"] is False
    kernel_release = (Path("/var/lib/cvmharness/images/cvmh-debian/kernel-release")
                      .read_text().strip())
    assert facts["kernel"]["release"] == kernel_release
    assert facts["cpu"]["threads"] == 2  # the vCPUs and memory the lab declares for vm0
    assert 800 <= facts["memory_mib"] <= 1024
    boot = json.loads((run_dir / "facts" / "vm0.libvirt.json").read_text())
    assert boot["flavor"] == "vm" and boot["host"] == "localhost"
    assert boot["boot"]["boot_to_ssh_s"] > 0


@pytest.mark.tdx
def test_td_cells_run_on_a_tdx_host(local_lab: Path, tmp_path: Path) -> None:
    from cvmharness.libvirt import read_host_signals, tdx_host_state
    from cvmharness.transport import LocalTransport

    state = tdx_host_state(read_host_signals(LocalTransport(node="localhost")))
    if not state.ready:
        pytest.skip("this host has no Intel TDX: " + "; ".join(state.reasons))
    done = cli("bench", "--lab", "local", "--matrix", MATRIX, "--out", str(tmp_path),
               "--only", "host-to-td", "td-local")
    assert done.returncode == 0, done.stderr[-4000:]
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    assert all(s["status"] == "ok" for s in read_samples(run_dir))
    facts = json.loads((run_dir / "facts" / "td0.json").read_text())
    assert facts["tdx"]["guest"]["detected"] is True


def test_teardown_leaves_nothing_behind(local_lab: Path, libvirtd_before: bool) -> None:
    """Runs last in the session (conftest orders it): the other tests use the guest."""
    done = cli("teardown", "--lab", "local", "--only", "guests")
    assert done.returncode == 0, done.stderr[-4000:]
    assert [d for d in virsh("list", "--all", "--name") if d.startswith("cvmh-")] == []
    assert [n for n in virsh("net-list", "--all", "--name") if n.startswith("cvmh-")] == []
    assert not GUEST_DIR.exists()
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=False).stdout
    assert "cvmh" not in netns
    assert harness_qemu_processes() == []
    assert not Path("/run/cvmharness-libvirt-daemons").exists()
    if not libvirtd_before:
        assert subprocess.run(["pgrep", "-x", "libvirtd"], check=False).returncode == 1
    # the host's own bench instance is not the guests' to remove
    assert Path("/usr/local/bin/wrk").exists()
