from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cvmharness.compare import compare_runs, min_p_value

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "runs" / "local-smoke"


def make_run(root: Path, name: str, cells: dict[str, list[tuple[float, float]]]) -> Path:
    """A run whose cells have the given (req/s, p99 ms) per repetition."""
    run = root / name
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"schema": 1, "run_id": name, "status": "ok"}))
    lines = []
    for cell_id, reps in cells.items():
        scenario, workload = cell_id.split(".")[:2]
        for rep, (rps, p99) in enumerate(reps, start=1):
            lines.append(json.dumps({
                "schema": 1, "run_id": name, "cell_id": cell_id, "scenario": scenario,
                "workload": workload, "tool": "wrk", "params": {}, "repetition": rep,
                "status": "ok", "reason": None,
                "metrics": {"requests_per_sec": rps, "bytes_per_sec": rps * 600,
                            "latency_ms": {"mean": p99 / 3, "p50": p99 / 4, "p99": p99},
                            "errors": {}}}))
    (run / "samples.ndjson").write_text("\n".join(lines) + "\n")
    return run


BASE = [(1000.0, 2.0), (1010.0, 2.1), (990.0, 1.9), (1005.0, 2.05), (995.0, 1.95),
        (1002.0, 2.02)]


def test_identical_runs_exit_zero(tmp_path):
    a = shutil.copytree(FIXTURE, tmp_path / "a")
    b = shutil.copytree(FIXTURE, tmp_path / "b")
    comparison = compare_runs(a, b)
    assert comparison.exit_code == 0
    assert not comparison.regressed
    assert len(comparison.cells) == 7
    text = comparison.format_text()
    assert "no regression in 7 common cells" in text
    assert "host-local.http-100k" in text


def test_injected_20_percent_throughput_regression_exits_one(tmp_path):
    a = make_run(tmp_path, "a", {"host.http": BASE, "td.http": BASE})
    slower = [(rps * 0.8, p99) for rps, p99 in BASE]
    b = make_run(tmp_path, "b", {"host.http": BASE, "td.http": slower})
    comparison = compare_runs(a, b, threshold_pct=5.0)
    assert comparison.exit_code == 1
    (bad,) = comparison.regressed
    assert bad.cell_id == "td.http"
    assert bad.rps.change_pct == pytest.approx(-20.0)
    assert bad.rps.p_value is not None and bad.rps.p_value < 0.05
    assert bad.verdict == "regressed"
    assert "1 of 2 common cells regressed" in comparison.format_text()


def test_p99_latency_regression_counts_too(tmp_path):
    a = make_run(tmp_path, "a", {"host.http": BASE})
    b = make_run(tmp_path, "b", {"host.http": [(rps, p99 * 1.3) for rps, p99 in BASE]})
    comparison = compare_runs(a, b)
    assert comparison.exit_code == 1
    assert comparison.cells[0].p99.verdict == "regressed"
    assert comparison.cells[0].rps.verdict == "unchanged"


def test_improvement_and_small_change_are_not_regressions(tmp_path):
    a = make_run(tmp_path, "a", {"x.http": BASE, "y.http": BASE})
    b = make_run(tmp_path, "b", {
        "x.http": [(rps * 1.25, p99) for rps, p99 in BASE],
        "y.http": [(rps * 0.97, p99) for rps, p99 in BASE],  # significant, under threshold
    })
    comparison = compare_runs(a, b)
    assert comparison.exit_code == 0
    verdicts = {c.cell_id: c.rps.verdict for c in comparison.cells}
    assert verdicts == {"x.http": "improved", "y.http": "within threshold"}


def test_small_n_is_reported_not_flagged(tmp_path):
    a = make_run(tmp_path, "a", {"host.http": BASE[:3]})
    b = make_run(tmp_path, "b", {"host.http": [(rps * 0.5, p99) for rps, p99 in BASE[:3]]})
    comparison = compare_runs(a, b)
    assert comparison.exit_code == 0
    cell = comparison.cells[0]
    assert cell.rps.change_pct == pytest.approx(-50.0)
    assert cell.rps.verdict == "n too small"
    assert cell.verdict == "n too small for significance"
    text = comparison.format_text()
    assert "n too small for significance" in text
    assert "smallest possible p is 0.1" in text


def test_min_p_value_of_exact_rank_test():
    assert min_p_value(3, 3) == pytest.approx(0.1)
    assert min_p_value(4, 4) == pytest.approx(2 / 70)
    assert min_p_value(5, 5) == pytest.approx(2 / 252)
    assert min_p_value(1, 10) == pytest.approx(2 / 11)
    assert min_p_value(1, 1) == 1.0


def test_cells_only_in_one_run_are_listed(tmp_path):
    a = make_run(tmp_path, "a", {"host.http": BASE, "old.http": BASE})
    b = make_run(tmp_path, "b", {"host.http": BASE, "new.http": BASE})
    comparison = compare_runs(a, b)
    assert comparison.only_in_a == ("old.http",)
    assert comparison.only_in_b == ("new.http",)
    assert "only in A (1): old.http" in comparison.format_text()
