from __future__ import annotations

import statistics

import numpy as np
import pytest

from cvmharness.stats import (
    MedianBootstrap,
    estimate,
    estimate_groups,
    ratio,
    ratios_to_baseline,
    summarize_cells,
)


def sample(cell_id, rep, status="ok", rps=None, p99=None, reason=None, errors=None):
    scenario, workload = cell_id.split(".")[:2]
    metrics = None
    if rps is not None:
        metrics = {"requests": int(rps * 10), "duration_s": 10.0, "requests_per_sec": rps,
                   "bytes_per_sec": rps * 1000.0,
                   "latency_ms": {"mean": 1.0, "stdev": 0.5, "max": 9.0, "p50": 0.9,
                                  "p75": 1.1, "p90": 1.5, "p99": p99 or 3.0, "p999": 5.0},
                   "errors": errors or {"connect": 0, "read": 0, "write": 0, "timeout": 0,
                                        "status": 0}}
    return {"schema": 1, "run_id": "r", "cell_id": cell_id, "scenario": scenario,
            "workload": workload, "tool": "wrk", "params": {"threads": 4},
            "repetition": rep, "status": status, "reason": reason, "metrics": metrics}


def test_median_mean_stdev_cv_by_hand():
    est = estimate([100.0, 102.0, 98.0, 104.0, 96.0])
    assert est.n == 5
    assert est.median == 100.0
    assert est.mean == 100.0
    # deviations 0, 2, -2, 4, -4: sum of squares 40, / (n - 1) = 10
    assert est.stdev == pytest.approx(10 ** 0.5)
    assert est.cv == pytest.approx(10 ** 0.5 / 100.0)
    assert (est.minimum, est.maximum) == (96.0, 104.0)
    assert est.values == (100.0, 102.0, 98.0, 104.0, 96.0)


def test_even_count_median_and_matches_statistics_module():
    values = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6]
    est = estimate(values)
    assert est.median == statistics.median(values) == pytest.approx(2.8)
    assert est.stdev == pytest.approx(statistics.stdev(values))


def test_one_repetition_has_no_spread_and_no_interval():
    est = estimate([42.0])
    assert est.median == 42.0
    assert est.stdev is None and est.cv is None
    assert est.ci_low is None and est.ci_high is None


def test_constant_values_give_a_point_interval():
    est = estimate([7.0] * 6)
    assert est.ci_low == est.ci_high == 7.0
    assert est.cv == 0.0


def test_ci_contains_true_mean_of_large_normal_sample():
    values = list(np.random.default_rng(2024).normal(1000.0, 50.0, 2000))
    est = estimate(values)
    assert est.ci_low is not None and est.ci_high is not None
    assert est.ci_low < 1000.0 < est.ci_high
    # about 2 * 1.2533 * 50 / sqrt(2000) * 1.96 wide: a few units, not tens
    assert 2.0 < est.ci_high - est.ci_low < 12.0


def test_ci_coverage_is_close_to_95_percent():
    rng = np.random.default_rng(11)
    groups = [list(rng.normal(0.0, 1.0, 25)) for _ in range(400)]
    ests = estimate_groups(groups)
    covered = sum(e.ci_low < 0.0 < e.ci_high for e in ests)  # type: ignore[operator]
    assert 0.88 <= covered / 400 <= 0.99


def test_seeded_bootstrap_is_deterministic_and_seed_matters():
    values = [10.0, 12.0, 9.5, 11.0, 13.5, 10.5, 12.5]
    a = estimate(values, MedianBootstrap(seed=1))
    b = estimate(values, MedianBootstrap(seed=1))
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert np.array_equal(MedianBootstrap(seed=1).ranks(8)[0], MedianBootstrap(seed=1).ranks(8)[0])
    assert not np.array_equal(MedianBootstrap(seed=1).ranks(8)[0],
                              MedianBootstrap(seed=2).ranks(8)[0])


@pytest.mark.parametrize("n", [2, 3, 6, 9])
def test_order_statistic_bootstrap_matches_resampling(n):
    """The shortcut gives the CI that numpy would give on the same resample medians,
    and those medians are distributed as medians of plain resamples."""
    rng = np.random.default_rng(n)
    values = np.sort(rng.normal(100.0, 5.0, n))
    boot = MedianBootstrap()
    lo, hi = boot.ranks(n)
    direct = np.percentile((values[lo] + values[hi]) / 2.0, [2.5, 97.5])
    assert boot.median_cis(values[None, :])[0] == pytest.approx(direct)
    resampled = np.median(values[rng.integers(0, n, size=(200_000, n))], axis=1)
    shortcut = (values[lo] + values[hi]) / 2.0
    assert np.mean(shortcut) == pytest.approx(np.mean(resampled), rel=2e-3)
    assert np.std(shortcut) == pytest.approx(np.std(resampled), rel=5e-2)


def test_vectorised_groups_equal_one_by_one():
    rng = np.random.default_rng(3)
    groups = [list(rng.normal(50, 5, n)) for n in (3, 5, 5, 8, 3)]
    together = estimate_groups(groups)
    alone = [estimate(g) for g in groups]
    assert [(e.median, e.ci_low, e.ci_high) for e in together] == \
        [(e.median, e.ci_low, e.ci_high) for e in alone]


def test_ratio_of_medians_with_interval():
    r = ratio([200.0, 210.0, 190.0, 205.0, 195.0], [100.0, 105.0, 95.0, 102.0, 98.0])
    assert r.value == pytest.approx(2.0)
    assert r.ci_low is not None and r.ci_high is not None
    assert r.ci_low < 2.0 < r.ci_high
    assert r.ci_low > 1.7 and r.ci_high < 2.3


def test_ratio_interval_large_samples_uses_pairing_and_contains_truth():
    rng = np.random.default_rng(2024)
    r = ratio(list(rng.normal(300, 10, 400)), list(rng.normal(100, 5, 400)))
    assert r.ci_low is not None and r.ci_high is not None
    assert r.ci_low < 3.0 < r.ci_high


def test_ratio_with_single_values_has_no_interval():
    r = ratio([10.0], [5.0])
    assert r.value == 2.0
    assert r.ci_low is None and r.ci_high is None


def test_summarize_excludes_non_ok_with_reasons_and_flags_noise():
    samples = [
        sample("host-local.http", 1, rps=100.0),
        sample("host-local.http", 2, rps=101.0),
        sample("host-local.http", 3, rps=99.0),
        sample("host-local.http", 4, status="invalid", rps=10.0, reason="error rate 50%"),
        sample("host-local.http", 5, status="failed", reason="wrk exited 1"),
        sample("td.http", 1, rps=50.0),
        sample("td.http", 2, rps=70.0),
        sample("td.http", 3, rps=60.0),
        sample("gone.http", 1, status="skipped", reason="no TD"),
        sample("gone.http", 2, status="skipped", reason="no TD"),
    ]
    cells = {c.cell_id: c for c in summarize_cells(samples)}
    host = cells["host-local.http"]
    assert (host.ok, host.recorded) == (3, 5)
    assert host.rps is not None and host.rps.median == 100.0
    assert [(e.repetition, e.status, e.reason) for e in host.excluded] == [
        (4, "invalid", "error rate 50%"), (5, "failed", "wrk exited 1")]
    assert not host.noisy  # CV 1%
    # every metric lands under its own name
    assert {k: host.metrics[k].median for k in host.metrics} == {
        "requests_per_sec": 100.0, "bytes_per_sec": 100_000.0, "latency_ms.mean": 1.0,
        "latency_ms.max": 9.0, "latency_ms.p50": 0.9, "latency_ms.p75": 1.1,
        "latency_ms.p90": 1.5, "latency_ms.p99": 3.0, "latency_ms.p999": 5.0}
    assert cells["td.http"].noisy  # CV ~16.7%
    gone = cells["gone.http"]
    assert gone.ok == 0 and gone.rps is None and gone.status == "skipped"
    assert [c.cell_id for c in summarize_cells(samples)] == [
        "host-local.http", "td.http", "gone.http"]


def test_noisy_threshold_is_configurable():
    samples = [sample("a.http", i, rps=v) for i, v in enumerate([100, 103, 97], 1)]
    (cell,) = summarize_cells(samples)
    assert cell.rps is not None and cell.rps.cv == pytest.approx(0.03)
    assert not cell.noisy
    (strict,) = summarize_cells(samples, noisy_cv=0.02)
    assert strict.noisy


def test_errors_are_summed_and_repeated_lines_count_once():
    errs = {"connect": 0, "read": 5, "write": 1, "timeout": 2, "status": 0}
    samples = [sample("a.http", 1, rps=10.0, errors=errs),
               sample("a.http", 2, rps=11.0, errors=errs),
               sample("a.http", 2, rps=12.0, errors=errs)]  # resumed: later line wins
    (cell,) = summarize_cells(samples)
    assert cell.recorded == 2
    assert cell.rps is not None and cell.rps.values == (10.0, 12.0)
    assert cell.errors == {"connect": 0, "read": 10, "write": 2, "timeout": 4, "status": 0}


def test_ratios_to_baseline_match_sweep_points():
    samples = []
    for scenario, scale in (("host-local", 1.0), ("td", 0.5)):
        for conns in (100, 1000):
            for rep in range(1, 4):
                s = sample(f"{scenario}.http.connections-{conns}", rep,
                           rps=scale * conns * (1 + 0.01 * rep))
                s["params"] = {"connections": conns}
                samples.append(s)
    cells = summarize_cells(samples)
    ratios = ratios_to_baseline(cells, "host-local")
    assert set(ratios) == {"td.http.connections-100", "td.http.connections-1000"}
    assert ratios["td.http.connections-1000"].value == pytest.approx(0.5)


def test_missing_and_junk_values_are_left_out_not_guessed():
    samples = [sample("a.http", i, rps=100.0 + i) for i in range(1, 4)]
    samples[0]["metrics"]["latency_ms"]["p999"] = None
    samples[1]["metrics"]["latency_ms"]["p999"] = "n/a"
    (cell,) = summarize_cells(samples)
    p999 = cell.latency("p999")
    assert p999 is not None and p999.n == 1
    assert cell.rps is not None and cell.rps.n == 3
