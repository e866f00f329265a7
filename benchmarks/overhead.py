"""What the harness costs compared with running wrk by hand. Not a test: prints figures.

1. Throughput fidelity: the harness's host-local cell and bare wrk (same binary, same
   -t/-c/-d, same URL) run alternately, N times each; prints the ratio of median
   requests/sec (goal >= 0.98).
2. Overhead per cell: one run of K single-repetition cells with no warm-up or cool-down;
   the wall time between the first measured start and the last measured end, minus the
   workloads' own durations, divided by K (goal <= 0.5 s per cell once provisioned).

Needs a provisioned `local` lab (cvmharness provision). Traffic goes to 127.0.0.1 only.
Usage: python3 benchmarks/overhead.py [--pairs 5] [--duration 10] [--cells 10]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
URL = "http://127.0.0.1:8080/"
WRK = "/usr/local/bin/wrk"


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _matrix(path: Path, cells: int, duration: int, threads: int, connections: int) -> None:
    scenarios = "\n".join(f"  - {{id: host-local-{i}, client: host, server: host}}"
                          for i in range(cells))
    path.write_text(
        f"name: overhead\ndefaults: {{repetitions: 1, warmup: 0s, cooldown: 0s}}\n"
        f"workloads:\n  http: {{tool: wrk, threads: {threads}, connections: {connections}, "
        f"duration: {duration}s}}\nscenarios:\n{scenarios}\n")


def _bench(matrix: Path, out: Path) -> tuple[Path, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cvmharness.cli", "bench", "--matrix",
                           str(matrix), "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"bench failed: {done.stderr[-2000:]}")
    return Path(done.stdout.strip().splitlines()[-1]), wall


def _samples(run_dir: Path) -> list[dict[str, object]]:
    return [json.loads(ln) for ln in (run_dir / "samples.ndjson").read_text().splitlines()]


def _bare_wrk(threads: int, connections: int, duration: int) -> float:
    done = subprocess.run([WRK, f"-t{threads}", f"-c{connections}", f"-d{duration}s", URL],
                          capture_output=True, text=True, check=True)
    match = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    if match is None:
        raise SystemExit(f"bare wrk printed no Requests/sec: {done.stdout}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--cells", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        one = work / "one.yml"
        _matrix(one, 1, args.duration, args.threads, args.connections)
        harness_rps: list[float] = []
        bare_rps: list[float] = []
        for i in range(args.pairs):
            run_dir, _ = _bench(one, work / "runs")
            sample = _samples(run_dir)[0]
            assert sample["status"] == "ok", sample["reason"]
            harness_rps.append(float(sample["metrics"]["requests_per_sec"]))  # type: ignore[index]
            bare_rps.append(_bare_wrk(args.threads, args.connections, args.duration))
            print(f"pair {i + 1}: harness {harness_rps[-1]:.0f} req/s, "
                  f"bare wrk {bare_rps[-1]:.0f} req/s", flush=True)
        ratio = statistics.median(harness_rps) / statistics.median(bare_rps)
        print(f"throughput ratio harness/bare (median of {args.pairs} pairs, "
              f"-t{args.threads} -c{args.connections} -d{args.duration}s): {ratio:.3f} "
              f"(goal >= 0.98)")

        many = work / "many.yml"
        _matrix(many, args.cells, 1, 1, 4)
        run_dir, wall = _bench(many, work / "runs")
        samples = _samples(run_dir)
        span = _ts(str(samples[-1]["ended_at"])) - _ts(str(samples[0]["started_at"]))
        own = sum(float(s["metrics"]["duration_s"]) for s in samples)  # type: ignore[index]
        per_cell = (span - own) / (len(samples) - 1)
        print(f"overhead per cell beyond the workload: {per_cell:.3f} s "
              f"({len(samples)} cells of 1s; goal <= 0.5 s); whole run incl. lab check and "
              f"facts: {wall:.1f} s")


if __name__ == "__main__":
    main()
