"""Report and compare on real runs of the `local` lab (real nginx, real wrk).

Two runs of the same matrix on the same lab must compare as unchanged; the second run
with a 20% throughput drop injected into its samples must be flagged as a regression
(exit 1), the way a CI job would use `cvmharness compare`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# Five repetitions: with fewer, no rank test over two runs can reach p < 0.05.
MATRIX = """\
name: compare-smoke
defaults: {repetitions: 5, warmup: 1s, cooldown: 0s}
workloads:
  http: {tool: wrk, threads: 2, connections: 16, duration: 2s, path: /}
scenarios:
  - {id: host-local, client: host, server: host}
"""

# Back-to-back runs on a 2-core machine differ by a few percent; a 10% threshold keeps
# that noise out while a 20% drop is still far beyond it.
THRESHOLD = "10"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cvmharness.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800, check=False)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    done = cli("provision", "--lab", "local", "--only", "nginx", "wrk")
    assert done.returncode == 0, done.stderr[-3000:]
    base = tmp_path_factory.mktemp("compare")
    matrix = base / "compare-smoke.yml"
    matrix.write_text(MATRIX)
    runs = []
    for name in ("a", "b"):
        done = cli("bench", "--matrix", str(matrix), "--out", str(base / name))
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(Path(done.stdout.strip().splitlines()[-1]))
    return runs[0], runs[1]


def test_report_of_a_real_run(two_runs: tuple[Path, Path]) -> None:
    run, _ = two_runs
    done = cli("report", str(run))
    assert done.returncode == 0, done.stderr
    md = (run / "report.md").read_text()
    assert "host-local" in md and "req/s" in md
    html = (run / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') >= 1
    assert "http://" not in html.replace("http://www.w3.org", "")


def test_two_runs_of_the_same_lab_pass(two_runs: tuple[Path, Path]) -> None:
    a, b = two_runs
    done = cli("compare", str(a), str(b), "--threshold", THRESHOLD)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "host-local.http" in done.stdout


def test_injected_20_percent_regression_is_flagged(two_runs: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    a, b = two_runs
    slower = tmp_path / "slower"
    shutil.copytree(b, slower)
    lines = []
    for line in (slower / "samples.ndjson").read_text().splitlines():
        sample = json.loads(line)
        if sample["status"] == "ok":
            metrics = sample["metrics"]
            metrics["requests_per_sec"] *= 0.8
            metrics["requests"] = int(metrics["requests"] * 0.8)
        lines.append(json.dumps(sample))
    (slower / "samples.ndjson").write_text("\n".join(lines) + "\n")

    done = cli("compare", str(a), str(slower), "--threshold", THRESHOLD)
    assert done.returncode == 1, done.stdout + done.stderr
    regressed = [ln for ln in done.stdout.splitlines() if "host-local.http" in ln]
    assert regressed and "regressed" in regressed[0], done.stdout
