"""The plan's estimate: built-in defaults on a fresh lab, then what the lab's own
finished runs measured (median of the newest three on the same lab and nodes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cvmharness.bench import SETUP_PER_EXTRA_NODE_S, SETUP_S, Timing, learned_timing

MATRIX = """\
name: eta
defaults: {repetitions: 2, warmup: 1s, cooldown: 1s}
workloads:
  http: {tool: wrk, threads: 1, connections: 4, duration: 3s, path: /}
scenarios:
  - {id: host-local, client: host, server: host}
"""


def finished_run(out: Path, name: str, *, setup_s: float, overhead: float,
                 lab: str = "local", nodes: tuple[str, ...] = ("localhost",),
                 status: str = "ok", age_s: int = 0) -> Path:
    run = out / name
    run.mkdir(parents=True)
    meta = run / "run.json"
    meta.write_text(json.dumps({
        "lab": {"name": lab}, "status": status,
        "timing": {"setup_s": setup_s, "overhead_per_rep_s": overhead, "nodes": list(nodes)},
    }))
    stamp = 1_700_000_000 - age_s
    os.utime(meta, (stamp, stamp))
    return run


def test_defaults_grow_with_the_nodes() -> None:
    assert Timing.default(1).setup_s == SETUP_S
    assert Timing.default(3).setup_s == SETUP_S + 2 * SETUP_PER_EXTRA_NODE_S
    assert Timing.default(1).learned_from is None


def test_learns_the_median_of_the_newest_matching_runs(tmp_path: Path) -> None:
    finished_run(tmp_path, "r1", setup_s=10, overhead=0.5, age_s=50)
    finished_run(tmp_path, "r2", setup_s=30, overhead=0.9, age_s=40)
    finished_run(tmp_path, "r3", setup_s=20, overhead=0.7, age_s=30)
    finished_run(tmp_path, "r4", setup_s=99, overhead=9.0, age_s=20, status="failed")
    finished_run(tmp_path, "r5", setup_s=99, overhead=9.0, age_s=10, lab="other")
    finished_run(tmp_path, "r6", setup_s=99, overhead=9.0, age_s=5,
                 nodes=("localhost", "vm0"))
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text("{not json")

    timing = learned_timing(tmp_path, "local", ["localhost"])
    assert timing == Timing(setup_s=20, overhead_per_rep_s=0.7,
                            learned_from="r3 and 2 before")
    assert learned_timing(tmp_path, "local", ["localhost", "vm0"]) == Timing(
        setup_s=99, overhead_per_rep_s=9.0, learned_from="r6")
    assert learned_timing(tmp_path, "nowhere", ["localhost"]) is None
    assert learned_timing(tmp_path / "missing", "local", ["localhost"]) is None


def test_dry_run_uses_the_learned_timing(root: Path, tmp_path: Path) -> None:
    matrix = tmp_path / "eta.yml"
    matrix.write_text(MATRIX)
    out = tmp_path / "runs"

    def plan() -> str:
        done = subprocess.run(
            [sys.executable, "-m", "cvmharness.cli", "bench", "--matrix", str(matrix),
             "--lab", "local", "--out", str(out), "--dry-run"],
            cwd=root, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()[-1]

    # 2 repetitions of 1 s warm-up + 3 s run + 1 s cool-down, plus the defaults
    assert plan().endswith(f"estimated {10 + 2 * 0.4 + SETUP_S:.0f}s")
    finished_run(out, "20261123-eta-a", setup_s=20, overhead=1.0)
    assert plan().endswith("estimated 32s (timing learned from run 20261123-eta-a)")
