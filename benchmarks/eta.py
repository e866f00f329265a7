"""Does the dry-run plan's estimate agree with the wall time of the real run?

Runs `cvmharness bench --dry-run` for a matrix, then the same bench for real, and
prints the estimate, the measured wall time and their difference (goal: within 10%).
The lab must be provisioned (`cvmharness provision`). The plan learns its set-up and
per-repetition costs from the newest finished run of the same lab in the output
directory, so the first run on a fresh machine uses the built-in defaults and the
following ones what this machine measured: `--runs 2` shows both.

    python3 benchmarks/eta.py [--matrix smoke] [--lab local] [--runs 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ESTIMATE = re.compile(r"estimated (?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?\b")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cvmharness.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, check=False)


def estimate_s(matrix: str, lab: str, out: Path) -> tuple[float, str]:
    done = cli("bench", "--matrix", matrix, "--lab", lab, "--out", str(out), "--dry-run")
    if done.returncode != 0:
        sys.exit(f"dry run failed (exit {done.returncode}): {done.stderr.strip()}")
    found = ESTIMATE.search(done.stdout)
    if found is None:
        sys.exit(f"no 'estimated ...' line in the plan:\n{done.stdout}")
    hours, minutes, seconds = (int(g) if g else 0 for g in found.groups())
    source = "learned" if "timing learned from run" in done.stdout else "defaults"
    return float(hours * 3600 + minutes * 60 + seconds), source


def measured_s(matrix: str, lab: str, out: Path) -> float:
    start = time.monotonic()
    done = cli("bench", "--matrix", matrix, "--lab", lab, "--out", str(out))
    wall = time.monotonic() - start
    if done.returncode != 0:
        sys.exit(f"bench failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", default="smoke")
    parser.add_argument("--lab", default="local")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: a fresh temporary one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cvmh-eta-") as scratch:
        out = args.out or Path(scratch)
        for run in range(1, args.runs + 1):
            planned, source = estimate_s(args.matrix, args.lab, out)
            wall = measured_s(args.matrix, args.lab, out)
            error = (wall - planned) / planned * 100
            verdict = "meets" if abs(error) <= 10 else "MISSES"
            print(f"run {run}: matrix {args.matrix} on {args.lab}: estimated {planned:.0f} s "
                  f"({source}), measured {wall:.1f} s wall ({error:+.1f}%) -> {verdict} "
                  "the 10% goal", flush=True)


if __name__ == "__main__":
    main()
