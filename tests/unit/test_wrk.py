"""The wrk result parser and checks, on real wrk and nginx output from the local lab."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvmharness.workloads.wrk import (
    WrkOutputError,
    judge,
    parse_stub_status,
    parse_wrk_json,
    wrk_argv,
)

PARAMS = {"threads": 2, "connections": 16, "duration": 3.0, "timeout": 2.0,
          "max_error_rate": 0.01, "count_tolerance": 0.01}


def test_parses_the_json_line_of_real_wrk_output(data: Path) -> None:
    result = parse_wrk_json((data / "wrk_json/host-local-c16.txt").read_text())
    assert result.requests == 80141
    assert result.duration_s == pytest.approx(3.019782)
    assert result.requests_per_sec == pytest.approx(26538.67, abs=0.01)  # wrk's own line
    assert result.bytes == 67799286
    assert result.errors == {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0}
    lat = result.latency_ms
    assert (lat["p50"], lat["p99"], lat["p999"], lat["max"]) == (0.25, 8.899, 13.467, 20.222)
    assert lat["mean"] == pytest.approx(1.40448, abs=1e-4)  # wrk's text: 1.40ms
    metrics = result.metrics()
    assert metrics["bytes_per_sec"] == pytest.approx(67799286 / 3.019782, rel=1e-6)


def test_large_object_result(data: Path) -> None:
    result = parse_wrk_json((data / "wrk_json/host-local-100k.txt").read_text())
    assert result.bytes / result.requests > 100 * 1024


@pytest.mark.parametrize(("text", "message"), [
    ("Running 3s test @ http://127.0.0.1:8080/\n", "no result line"),
    ("CVMH_WRK_JSON {not json\n", "not valid JSON"),
    ('CVMH_WRK_JSON {"duration_us": 1}\n', "must be objects"),
    ('CVMH_WRK_JSON {"duration_us": 0, "requests": 1, "bytes": 1, "errors": {"connect": 0,'
     '"read": 0, "write": 0, "status": 0, "timeout": 0}, "latency_us": {"mean": 1, "stdev": 1,'
     '"max": 1, "p50": 1, "p75": 1, "p90": 1, "p99": 1, "p999": 1}}\n', "duration is zero"),
])
def test_unusable_output_is_an_error(text: str, message: str) -> None:
    with pytest.raises(WrkOutputError, match=message):
        parse_wrk_json(text)


def test_stub_status_of_real_nginx(data: Path) -> None:
    assert parse_stub_status((data / "nginx_stub_status.txt").read_text()) == 457912
    with pytest.raises(ValueError):
        parse_stub_status("<html>404</html>")


def test_judge(data: Path) -> None:
    result = parse_wrk_json((data / "wrk_json/host-local-c16.txt").read_text())
    assert judge(result, 80141 + 5, PARAMS) == ("ok", None)
    status, reason = judge(result, 40000, PARAMS)
    assert status == "invalid" and "server counted 40000 requests, wrk 80141" in str(reason)
    status, reason = judge(result, None, PARAMS)
    assert status == "invalid" and "cannot confirm" in str(reason)
    noisy = result.__class__(result.duration_s, result.requests, result.bytes,
                             {**result.errors, "read": 5000}, result.latency_ms)
    status, reason = judge(noisy, 80141, PARAMS)
    assert status == "invalid" and "read 5000" in str(reason)
    assert judge(noisy, 80141, {**PARAMS, "max_error_rate": 1.0})[0] == "ok"


def test_wrk_argv_whole_seconds() -> None:
    argv = wrk_argv("/usr/local/bin/wrk", "/s.lua", PARAMS, "http://127.0.0.1:8080/", 180)
    assert argv == ["/usr/local/bin/wrk", "-t2", "-c16", "-d3m", "--timeout=2s", "-s", "/s.lua",
                    "http://127.0.0.1:8080/"]
    assert "-d1s" in wrk_argv("w", None, PARAMS, "u", 0.4)
