from __future__ import annotations

import json
from pathlib import Path

import pytest

from cvmharness.errors import InputError
from cvmharness.importer import WrkTextError, import_logs, parse_wrk_log, parse_wrk_text
from cvmharness.store import RunStore, read_samples

WRK = Path(__file__).resolve().parents[1] / "data" / "wrk_text"
GB = 1024**3
MB = 1024**2


def text(name: str) -> str:
    return (WRK / name).read_text(encoding="utf-8")


def test_seed000_host_local_exact_numbers():
    run = parse_wrk_text(text("seed000_host-local.txt"))
    assert run.url == "http://127.0.0.1:8080/"
    assert run.duration_s == 30.0
    assert (run.threads, run.connections) == (4, 100)
    assert run.latency_ms.avg == pytest.approx(0.64674)
    assert run.latency_ms.stdev == pytest.approx(0.95)
    assert run.latency_ms.max == pytest.approx(27.51)
    assert run.latency_ms.within_stdev_pct == pytest.approx(92.63)
    assert run.requests_per_thread.avg == pytest.approx(40850.0)
    assert run.requests_per_thread.stdev == pytest.approx(5430.0)
    assert run.requests_per_thread.max == pytest.approx(70050.0)
    assert run.requests == 4879138
    assert run.elapsed_s == pytest.approx(30.01)
    assert run.bytes_read == round(49.63 * GB)
    assert run.requests_per_sec == 162588.64
    assert run.transfer_per_sec == pytest.approx(1.65 * GB)
    assert run.socket_errors == {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    assert run.non_2xx_3xx == 0
    assert run.percentiles_ms == {}


@pytest.mark.parametrize(("name", "requests", "rps", "read_bytes", "latency_avg_ms", "elapsed"), [
    ("seed000_host-to-td.txt", 1049350, 34951.73, 862.63 * MB, 3.22, 30.02),
    ("seed000_kata-to-kata-tdx.txt", 1361655, 45368.34, 1.09 * GB, 2.20, 30.01),
    ("seed000_td-local.txt", 365107, 80986.99, 300.14 * MB, 2.45, 4.51),
])
def test_seed000_other_runs(name, requests, rps, read_bytes, latency_avg_ms, elapsed):
    run = parse_wrk_text(text(name))
    assert run.requests == requests
    assert run.requests_per_sec == rps
    assert run.bytes_read == round(read_bytes)
    assert run.latency_ms.avg == pytest.approx(latency_avg_ms)
    assert run.elapsed_s == pytest.approx(elapsed)


def test_seed000_kata_stdev_in_microseconds():
    run = parse_wrk_text(text("seed000_kata-to-kata-tdx.txt"))
    assert run.latency_ms.stdev == pytest.approx(0.78003)  # "780.03us"
    assert run.requests_per_thread.stdev == pytest.approx(910.0)  # "0.91k"


def test_seed003_t30_log_has_four_named_runs_with_socket_errors():
    runs = parse_wrk_log(text("seed003_wrk-t30-c20000-3m.log"))
    assert [r.name for r in runs] == ["host", "runc", "runc-60C100Gi", "kata-60C100Gi"]
    assert all((r.threads, r.connections, r.duration_s) == (30, 20000, 180.0) for r in runs)
    host, runc, runc_lim, kata = runs
    assert host.requests == 41286590
    assert host.elapsed_s == pytest.approx(180.0)  # "3.00m"
    assert host.bytes_read == round(11.00 * GB)
    assert host.requests_per_sec == 229242.62
    assert host.latency_ms.max == pytest.approx(1860.0)  # "1.86s"
    assert host.socket_errors == {"connect": 0, "read": 1274911, "write": 133816, "timeout": 47}
    assert runc.socket_errors == {"connect": 0, "read": 1652945, "write": 122147, "timeout": 456}
    assert runc_lim.requests_per_sec == 94544.10
    assert kata.requests_per_sec == 8108.71
    assert kata.latency_ms.avg == pytest.approx(112.63)
    assert kata.requests_per_thread.avg == pytest.approx(275.47)  # no suffix
    assert kata.requests_per_thread.max == pytest.approx(2520.0)
    assert kata.bytes_read == round(376.03 * MB)
    assert kata.socket_errors == {"connect": 0, "read": 228280, "write": 130705,
                                  "timeout": 18253}


def test_seed003_t120_log_skips_date_lines_between_runs():
    runs = parse_wrk_log(text("seed003_wrk-t120-c20000-3m.log"))
    assert [(r.name, r.threads) for r in runs] == [
        ("host", 120), ("runc", 120), ("runc-60C100Gi", 120), ("kata-60C100Gi", 120)]
    assert runs[2].socket_errors == {"connect": 0, "read": 1985436, "write": 166381,
                                     "timeout": 115}
    assert runs[2].requests == 14411946
    assert runs[2].requests_per_sec == 80021.39
    assert runs[3].requests_per_sec == 8113.26
    assert runs[3].socket_errors["timeout"] == 18391
    assert runs[1].requests_per_thread.stdev == pytest.approx(770.34)


def test_latency_distribution_and_non2xx_from_local_wrk():
    run = parse_wrk_text(text("local_latency.txt"))
    assert run.percentiles_ms == pytest.approx(
        {"p50": 0.309, "p75": 0.95, "p90": 2.39, "p99": 34.91})
    assert run.requests == 66455
    assert run.non_2xx_3xx == 0
    missing = parse_wrk_text(text("local_non2xx.txt"))
    assert missing.non_2xx_3xx == 71350
    assert missing.metrics()["errors"]["status"] == 71350


def test_metrics_follow_the_sample_schema():
    metrics = parse_wrk_text(text("seed000_host-local.txt")).metrics()
    assert metrics["requests"] == 4879138
    assert metrics["requests_per_sec"] == 162588.64
    # duration from wrk's own rate: more precise than the rounded "30.01s"
    assert metrics["duration_s"] == pytest.approx(4879138 / 162588.64, rel=1e-6)
    assert metrics["bytes_per_sec"] == pytest.approx(round(49.63 * GB) / metrics["duration_s"])
    assert metrics["latency_ms"]["p50"] is None
    assert metrics["latency_ms"]["p999"] is None
    assert metrics["latency_ms"]["mean"] == pytest.approx(0.64674)
    assert set(metrics["errors"]) == {"connect", "read", "write", "timeout", "status"}


def test_not_wrk_output_is_an_error_with_a_line():
    with pytest.raises(WrkTextError) as info:
        parse_wrk_text(text("local_refused.txt"))
    assert info.value.line == 1
    assert "no wrk run found" in str(info.value)


def test_malformed_latency_row_names_its_line():
    broken = text("seed000_host-local.txt").replace("646.74us", "646.74xx")
    with pytest.raises(WrkTextError) as info:
        parse_wrk_text(broken)
    assert info.value.line == 4
    assert "Latency" in info.value.message


def test_cut_output_is_an_error():
    cut = "\n".join(text("seed000_host-local.txt").splitlines()[:6])
    with pytest.raises(WrkTextError, match="without 'Transfer/sec:'"):
        parse_wrk_text(cut)


def test_parse_wrk_text_refuses_several_runs():
    with pytest.raises(WrkTextError, match="4 wrk runs"):
        parse_wrk_text(text("seed003_wrk-t30-c20000-3m.log"))


def test_import_seed_logs_writes_a_run(tmp_path):
    logs = [WRK / "seed003_wrk-t30-c20000-3m.log", WRK / "seed003_wrk-t120-c20000-3m.log"]
    run_dir = import_logs(logs, tmp_path, None)
    samples = read_samples(run_dir)
    assert len(samples) == 8
    meta = RunStore.open(run_dir).run_meta
    assert meta["status"] == "ok"
    assert meta["schema"] == 1
    assert [f["runs"] for f in meta["imported"]["files"]] == [4, 4]
    ids = [s["cell_id"] for s in samples]
    assert ids[:4] == ["host.http.threads-30", "runc.http.threads-30",
                       "runc-60c100gi.http.threads-30", "kata-60c100gi.http.threads-30"]
    assert ids[4] == "host.http.threads-120"
    first = samples[0]
    assert first["status"] == "ok" and first["reason"] is None
    assert first["params"] == {"threads": 30, "connections": 20000, "duration": 180.0,
                               "path": "/"}
    assert first["metrics"]["requests_per_sec"] == 229242.62
    assert first["metrics"]["errors"] == {"connect": 0, "read": 1274911, "write": 133816,
                                          "timeout": 47, "status": 0}
    assert first["repetition"] == 1
    assert all(s["run_id"] == run_dir.name for s in samples)


def test_import_with_scenario_makes_repetitions(tmp_path):
    logs = [WRK / "local_latency.txt", WRK / "local_latency.txt"]
    run_dir = import_logs(logs, tmp_path, "host-local")
    samples = read_samples(run_dir)
    assert [(s["cell_id"], s["repetition"]) for s in samples] == [
        ("host-local.http", 1), ("host-local.http", 2)]
    assert samples[0]["metrics"]["latency_ms"]["p99"] == pytest.approx(34.91)


def test_import_unnamed_run_takes_the_file_stem(tmp_path):
    run_dir = import_logs([WRK / "seed000_host-to-td.txt"], tmp_path, None)
    (sample,) = read_samples(run_dir)
    assert sample["scenario"] == "seed000-host-to-td"
    assert json.loads((run_dir / "run.json").read_text())["plan"]["cells"] == 1


def test_import_error_names_file_and_line(tmp_path):
    with pytest.raises(InputError) as info:
        import_logs([WRK / "seed000_host-local.txt", WRK / "local_refused.txt"], tmp_path, None)
    (problem,) = info.value.problems
    assert problem.file.endswith("local_refused.txt")
    assert problem.line == 1
    assert not any(tmp_path.iterdir())  # nothing written on bad input
