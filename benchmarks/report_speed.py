"""How long `cvmharness report` takes on a big run, and how much memory it needs.

Goal: 100,000 samples in at most 5 s and 500 MB peak RSS. Writes a synthetic run into a
temporary directory (not timed), then times write_report on it in a fresh process, so
that the RSS measured is the report's alone and the import of numpy/matplotlib counts.

    PYTHONPATH=harness python3 benchmarks/report_speed.py [--shape cells-x-reps ...]

Shapes: ``2000x50`` (default: 8 scenarios x 5 workloads x 50 sweep points, 50 reps),
``20000x5`` (the same matrix with 500 sweep points and the default 5 repetitions),
``1x100000`` (one cell, every sample a repetition).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_S = 5.0
GOAL_MB = 500.0
SCENARIOS = ["host-local", "host-to-vm", "host-to-td", "td-local", "runc", "kata",
             "kata-tdx", "kata-to-kata-tdx"]
WORKLOADS = ["http", "http-1k", "http-10k", "http-100k", "http-1m"]


def synth(run_dir: Path, cells: int, reps: int, seed: int = 1) -> int:
    """A run of ``cells * reps`` samples shaped like a real one (ok, a few failed/skipped)."""
    rng = random.Random(seed)
    run_dir.mkdir(parents=True)
    (run_dir / "facts").mkdir()
    (run_dir / "run.json").write_text(json.dumps({
        "schema": 1, "run_id": run_dir.name, "status": "ok",
        "harness": {"version": "0.1.0", "git_revision": None, "python": "3.11"},
        "matrix": {"file": "synthetic", "name": "synthetic", "resolved": None},
        "lab": {"name": "synthetic", "inventory": None, "hosts": ["h1"]},
        "plan": {"cells": cells, "repetitions": cells * reps},
        "started_at": "2026-01-01T00:00:00Z", "ended_at": "2026-01-02T00:00:00Z"}))
    (run_dir / "facts" / "h1.json").write_text(json.dumps({"node": "h1", "cpu": {
        "model": "Intel(R) Xeon(R) Platinum 8580", "microcode": "0x21000240"}}))
    per_scenario_workload = max(1, cells // (len(SCENARIOS) * len(WORKLOADS)))
    written = 0
    with (run_dir / "samples.ndjson").open("w") as out:
        made = 0
        for scenario_index, scenario in enumerate(SCENARIOS):
            for workload in WORKLOADS:
                for point in range(per_scenario_workload):
                    if made >= cells:
                        break
                    made += 1
                    conns = 16 * (point + 1)
                    cell_id = f"{scenario}.{workload}.connections-{conns}"
                    base = 200_000 / (1 + scenario_index) * (1 + point / 50)
                    skipped = scenario == "host-to-td" and point % 7 == 0
                    for rep in range(1, reps + 1):
                        status = "skipped" if skipped else (
                            "failed" if rng.random() < 0.002 else "ok")
                        rps = base * rng.gauss(1.0, 0.03)
                        p50 = 100.0 / rps * 1000
                        metrics = None if status != "ok" else {
                            "requests": int(rps * 30), "duration_s": 30.0,
                            "requests_per_sec": round(rps, 3),
                            "bytes_per_sec": round(rps * 850, 3),
                            "latency_ms": {"mean": p50 * 1.2, "stdev": p50, "max": p50 * 40,
                                           "p50": p50, "p75": p50 * 1.3, "p90": p50 * 1.8,
                                           "p99": p50 * 4, "p999": p50 * 9},
                            "errors": {"connect": 0, "read": rng.randrange(3), "write": 0,
                                       "timeout": 0, "status": 0}}
                        out.write(json.dumps({
                            "schema": 1, "run_id": run_dir.name, "cell_id": cell_id,
                            "scenario": scenario,
                            "client": {"kind": "host", "name": None, "node": "h1"},
                            "server": {"kind": "host", "name": None, "node": "h1"},
                            "via": None, "workload": workload, "tool": "wrk",
                            "params": {"threads": 4, "connections": conns, "duration": 30.0,
                                       "path": "/"},
                            "repetition": rep, "started_at": "2026-01-01T00:00:00Z",
                            "ended_at": "2026-01-01T00:00:30Z", "status": status,
                            "reason": None if status == "ok" else f"synthetic {status}",
                            "metrics": metrics, "server_requests": None,
                            "url": "http://127.0.0.1:8080/"}, separators=(",", ":")) + "\n")
                        written += 1
    return written


def measure(run_dir: Path) -> None:
    """Runs in the child: time write_report, print seconds and peak RSS as JSON.

    For a big run write_report draws its plots in a worker process of its own: its peak
    RSS is reported too (the largest child's; Linux: KiB) and counts towards the goal,
    as does its CPU time (shown beside the wall time: on a busy machine wall time says
    more about the machine than about the report)."""
    start = time.perf_counter()
    from cvmharness.report import write_report

    md, html = write_report(run_dir)
    elapsed = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"seconds": elapsed, "peak_rss_mb": own.ru_maxrss / 1024.0,
                      "worker_rss_mb": children.ru_maxrss / 1024.0,
                      "cpu_s": own.ru_utime + own.ru_stime,
                      "worker_cpu_s": children.ru_utime + children.ru_stime,
                      "md_bytes": md.stat().st_size, "html_bytes": html.stat().st_size}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", action="append", help="CELLSxREPS (default 2000x50)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure)
        return 0
    failed = False
    for shape in args.shape or ["2000x50"]:
        cells, reps = (int(x) for x in shape.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "synthetic"
            count = synth(run_dir, cells, reps)
            size_mb = (run_dir / "samples.ndjson").stat().st_size / 1e6
            done = subprocess.run([sys.executable, __file__, "--measure", str(run_dir)],
                                  capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
        rss_mb = result["peak_rss_mb"] + result["worker_rss_mb"]
        ok = result["seconds"] <= GOAL_S and rss_mb <= GOAL_MB
        failed |= not ok
        worker = (f" + plot worker {result['worker_rss_mb']:.0f} MB"
                  if result["worker_rss_mb"] else "")
        cpu = (f"CPU {result['cpu_s']:.2f} s"
               + (f" + {result['worker_cpu_s']:.2f} s in the worker"
                  if result["worker_cpu_s"] else ""))
        print(f"{shape}: {count} samples ({size_mb:.0f} MB of NDJSON): "
              f"write_report {result['seconds']:.2f} s (goal <= {GOAL_S:g} s; {cpu}), "
              f"peak RSS {result['peak_rss_mb']:.0f} MB{worker} (goal <= {GOAL_MB:g} MB), "
              f"report.html {result['html_bytes'] / 1e6:.1f} MB -> "
              f"{'meets the goals' if ok else 'MISSES the goals'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
