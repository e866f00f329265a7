"""Measure guest provisioning and the cost of a guest, on the `local` lab.

Prints, as one JSON object:
  cold_provision_s   `teardown --only guests` and the image cache removed, then
                     `provision --only guests`: image build + boot + nginx/wrk inside
                     the guest (the host's own nginx and wrk are left as they are)
  warm_provision_s   the same command again, nothing changed (goal: <= 30 s)
  boot_to_ssh_s      per guest, from the guest role's boot record
  rps                median requests/s of host-local, host-to-vm, vm-local in one run,
                     and the host-to-vm / host-local ratio
Not run by the test suite. Usage: python3 benchmarks/guests.py [--warm-only] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAB = "local"
MATRIX = ROOT / "tests" / "data" / "matrices" / "guests-smoke.yml"


def cli(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cvmharness.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=7200, check=False,
                          env={**os.environ, "CVMHARNESS_HOME": str(ROOT)})
    if done.returncode not in (0, 1):
        sys.exit(f"cvmharness {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.monotonic() - started, done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--warm-only", action="store_true", help="skip the cold provision")
    parser.add_argument("--keep", action="store_true", help="do not tear down at the end")
    args = parser.parse_args()
    result: dict[str, object] = {}
    if not args.warm_only:
        cli("teardown", "--lab", LAB, "--only", "guests")
        shutil.rmtree("/var/lib/cvmharness/images", ignore_errors=True)
        result["cold_provision_s"] = round(cli("provision", "--lab", LAB, "--only", "guests")[0], 1)
    else:
        cli("provision", "--lab", LAB, "--only", "guests")
    result["warm_provision_s"] = round(cli("provision", "--lab", LAB, "--only", "guests")[0], 1)
    result["boot_to_ssh_s"] = {
        p.parent.name: json.loads(p.read_text())["boot_to_ssh_s"]
        for p in Path("/var/lib/cvmharness/guests").glob("*/boot.json")
    }
    with tempfile.TemporaryDirectory() as out:
        _, done = cli("bench", "--lab", LAB, "--matrix", str(MATRIX), "--out", out)
        run_dir = Path(done.stdout.strip().splitlines()[-1])
        rps: dict[str, float] = {}
        by: dict[str, list[float]] = {}
        for line in (run_dir / "samples.ndjson").read_text().splitlines():
            s = json.loads(line)
            if s["status"] == "ok":
                by.setdefault(s["scenario"], []).append(s["metrics"]["requests_per_sec"])
        rps = {k: round(statistics.median(v), 1) for k, v in by.items()}
        if "host-local" in rps and "host-to-vm" in rps:
            rps["host-to-vm/host-local"] = round(rps["host-to-vm"] / rps["host-local"], 4)
        result["rps"] = rps
    if not args.keep:
        result["teardown_s"] = round(cli("teardown", "--lab", LAB, "--only", "guests")[0], 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
