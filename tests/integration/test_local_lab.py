"""The real CLI against the real `local` lab: real nginx, real wrk built by the role, and
the lab's libvirt guest vm0.

Provisioning happens once per session (conftest's `local_lab`, shared with
test_guests.py; it is idempotent: the second run must change nothing). Traffic goes to
127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cvmharness.store import read_samples

pytestmark = pytest.mark.integration


def cli(root: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cvmharness.cli", *args], cwd=root,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def provisioned(local_lab: Path) -> Path:
    return local_lab


def _run_dir(stdout: str) -> Path:
    return Path(stdout.strip().splitlines()[-1])


def test_provision_again_changes_nothing(provisioned: Path) -> None:
    done = cli(provisioned, "provision", "--lab", "local")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(0 changes)" in done.stderr


def test_doctor_says_what_the_local_lab_can_run(provisioned: Path) -> None:
    done = cli(provisioned, "doctor", "--lab", "local", "--matrix", "smoke")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "host placement: ready" in done.stdout
    assert "host-local: can run" in done.stdout
    assert "host-to-vm: can run" in done.stdout and "vm-local: can run" in done.stdout
    assert "host-to-td: cannot run: server td:td0: host localhost cannot launch TDX guests" \
        in done.stdout


def test_smoke_matrix_writes_real_samples(provisioned: Path, tmp_path: Path) -> None:
    done = cli(provisioned, "bench", "--matrix", "smoke", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = _run_dir(done.stdout)
    assert "ETA" in done.stderr and "cell 1/6" in done.stderr
    samples = read_samples(run_dir)
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for s in samples:
        by_cell.setdefault(s["cell_id"], []).append(s)
    assert sorted(by_cell) == ["host-local.http", "host-local.http-100k", "host-to-td.http",
                               "host-to-vm.http", "td-local.http", "vm-local.http"]
    for cell in ("host-local.http", "host-local.http-100k"):
        reps = by_cell[cell]
        assert [s["repetition"] for s in reps] == [1, 2, 3]
        for s in reps:
            assert s["status"] == "ok", s["reason"]
            m = s["metrics"]
            assert m["requests"] > 100
            assert 2.5 < m["duration_s"] < 4.0
            assert m["requests_per_sec"] == pytest.approx(m["requests"] / m["duration_s"],
                                                          rel=1e-3)
            assert 0 < m["latency_ms"]["p50"] <= m["latency_ms"]["p99"] <= m["latency_ms"]["max"]
            # nginx saw the load: its own count matches wrk's within the requests in
            # flight when wrk stopped its clock (and those of the warm-up's last moment)
            gap = s["server_requests"] - m["requests"]
            assert 0 <= gap <= 2 * s["params"]["connections"] + 0.01 * m["requests"]
            assert s["url"].startswith("http://127.0.0.1:8080/")
            raw = run_dir / "raw" / cell / str(s["repetition"])
            assert "Requests/sec" in (raw / "wrk.txt").read_text()
            assert (raw / "warmup.txt").exists()
    small = by_cell["host-local.http"][0]["metrics"]
    big = by_cell["host-local.http-100k"][0]["metrics"]
    assert small["bytes_per_sec"] / small["requests_per_sec"] == pytest.approx(615 + 238, abs=80)
    assert big["bytes_per_sec"] / big["requests_per_sec"] > 100 * 1024
    for cell, port in (("host-to-vm.http", 18080), ("vm-local.http", 8080)):
        for s in by_cell[cell]:
            assert s["status"] == "ok", s["reason"]
            assert s["metrics"]["requests"] > 0
            assert s["server_requests"] >= s["metrics"]["requests"]
            assert s["url"].startswith(f"http://127.0.0.1:{port}/")
    for cell in ("host-to-td.http", "td-local.http"):
        for s in by_cell[cell]:
            assert s["status"] == "skipped" and "cannot launch TDX guests" in s["reason"]
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "ok" and meta["ended_at"]
    assert meta["matrix"]["name"] == "smoke" and meta["harness"]["version"]
    facts = json.loads((run_dir / "facts" / "localhost.json").read_text())
    assert facts["cpu"]["model"] and facts["kernel"]["release"] == os.uname().release
    assert json.loads((run_dir / "facts" / "vm0.json").read_text())["node"] == "vm0"


def test_killed_run_resumes_without_loss_or_repeat(provisioned: Path, tmp_path: Path) -> None:
    matrix = provisioned / "tests/data/matrices/resume.yml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cvmharness.cli", "bench", "--matrix", str(matrix),
         "--out", str(tmp_path)],
        cwd=provisioned, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        run_dirs: list[Path] = []
        while time.monotonic() < deadline:
            run_dirs = [p for p in tmp_path.iterdir() if (p / "samples.ndjson").exists()]
            if run_dirs and len(read_samples(run_dirs[0])) >= 1:
                break
            time.sleep(0.2)
        assert run_dirs, "the run never started"
        time.sleep(1.0)  # into the next repetition's measured run
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    run_dir = run_dirs[0]
    before = read_samples(run_dir)
    assert 1 <= len(before) < 4
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"

    done = cli(provisioned, "bench", "--resume", str(run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    after = read_samples(run_dir)
    assert after[: len(before)] == before  # finished repetitions kept as they were
    keys = [(s["cell_id"], s["repetition"]) for s in after]
    assert sorted(keys) == [("host-local.http", r) for r in (1, 2, 3, 4)]
    assert all(s["status"] == "ok" for s in after), [s["reason"] for s in after]
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "ok" and len(meta["resumed"]) == 1


def test_sigterm_marks_the_run_interrupted(provisioned: Path, tmp_path: Path) -> None:
    matrix = provisioned / "tests/data/matrices/resume.yml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cvmharness.cli", "bench", "--matrix", str(matrix),
         "--out", str(tmp_path)],
        cwd=provisioned, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        dirs = [p for p in tmp_path.iterdir() if (p / "samples.ndjson").exists()]
        if dirs and read_samples(dirs[0]):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "cvmharness bench --resume" in err
    run_dir = next(tmp_path.iterdir())
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    # nothing of ours is left sending load
    left = subprocess.run(["pgrep", "-f", f"wrk.*{8080}"], capture_output=True, text=True,
                          check=False)
    assert left.stdout.strip() == ""


def test_unprovisioned_lab_is_exit_3(provisioned: Path, tmp_path: Path) -> None:
    inv = tmp_path / "cold.yml"
    inv.write_text((provisioned / "inventory/local.yml").read_text().replace(
        "nginx_bench_ports: [8080, 8081]", "nginx_bench_ports: [18999]"))
    done = cli(provisioned, "bench", "--lab", str(inv), "--matrix", "smoke",
               "--out", str(tmp_path / "runs"))
    assert done.returncode == 3, done.stderr[-2000:]
    assert "cvmharness provision" in done.stderr
