"""wrk -> nginx: the command line, the result parser, and the checks on a result.

wrk's human summary rounds and mixes units; the role's Lua ``done()`` hook prints the
whole result as one JSON line (``CVMH_WRK_JSON {...}``), which is what is parsed here.
The text is kept in raw/ for people.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from cvmharness.durations import format_duration

JSON_MARKER = "CVMH_WRK_JSON "
STATUS_PATH = "/__cvmh/status"
_ERROR_KINDS = ("connect", "read", "write", "timeout", "status")
_PERCENTILES = ("p50", "p75", "p90", "p99", "p999")


class WrkOutputError(ValueError):
    """wrk ran but printed no usable result."""


@dataclass(frozen=True)
class WrkResult:
    duration_s: float
    requests: int
    bytes: int
    errors: dict[str, int]
    latency_ms: dict[str, float]

    @property
    def requests_per_sec(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def bytes_per_sec(self) -> float:
        return self.bytes / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def metrics(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "duration_s": round(self.duration_s, 6),
            "requests_per_sec": round(self.requests_per_sec, 3),
            "bytes_per_sec": round(self.bytes_per_sec, 3),
            "latency_ms": {k: round(v, 6) for k, v in self.latency_ms.items()},
            "errors": dict(self.errors),
        }


def wrk_argv(binary: str, script: str | None, params: dict[str, Any], url: str,
             duration_s: float) -> list[str]:
    """wrk's arguments; durations are whole seconds (wrk's own parser takes no fractions)."""
    argv = [
        binary,
        f"-t{params['threads']}",
        f"-c{params['connections']}",
        f"-d{format_duration(max(1, math.ceil(duration_s)))}",
        f"--timeout={format_duration(max(1, math.ceil(params.get('timeout', 2))))}",
    ]
    if script:
        argv += ["-s", script]
    return [*argv, url]


def _number(data: dict[str, Any], key: str) -> float:
    value = data.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise WrkOutputError(f"wrk JSON: {key!r} is missing or not a number")
    return float(value)


def parse_wrk_json(stdout: str) -> WrkResult:
    """The result from wrk's output; the last JSON line wins if several were printed."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith(JSON_MARKER)]
    if not lines:
        raise WrkOutputError("wrk printed no result line (was the JSON Lua script loaded?)")
    try:
        data = json.loads(lines[-1][len(JSON_MARKER):])
    except json.JSONDecodeError as exc:
        raise WrkOutputError(f"wrk JSON line is not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise WrkOutputError("wrk JSON line is not an object")
    errors_raw = data.get("errors")
    latency_raw = data.get("latency_us")
    if not isinstance(errors_raw, dict) or not isinstance(latency_raw, dict):
        raise WrkOutputError("wrk JSON: 'errors' and 'latency_us' must be objects")
    errors = {kind: int(_number(errors_raw, kind)) for kind in _ERROR_KINDS}
    latency = {"mean": _number(latency_raw, "mean") / 1000.0,
               "stdev": _number(latency_raw, "stdev") / 1000.0,
               "max": _number(latency_raw, "max") / 1000.0}
    for p in _PERCENTILES:
        latency[p] = _number(latency_raw, p) / 1000.0
    duration_s = _number(data, "duration_us") / 1e6
    if duration_s <= 0:
        raise WrkOutputError("wrk JSON: duration is zero")
    return WrkResult(
        duration_s=duration_s,
        requests=int(_number(data, "requests")),
        bytes=int(_number(data, "bytes")),
        errors=errors,
        latency_ms=latency,
    )


_STUB = re.compile(r"server accepts handled requests\s*\n\s*(\d+)\s+(\d+)\s+(\d+)")


def parse_stub_status(text: str) -> int:
    """The total request count from nginx's stub_status page."""
    match = _STUB.search(text)
    if match is None:
        raise ValueError("not an nginx stub_status page")
    return int(match.group(3))


def judge(result: WrkResult, server_requests: int | None, params: dict[str, Any]
          ) -> tuple[str, str | None]:
    """ok, or invalid with the reason: too many errors, or counts that disagree.

    nginx also serves requests that were in flight when wrk stopped its clock and
    which wrk does not count, at most one per connection; the tolerance allows those.
    """
    if result.requests == 0:
        return "invalid", "wrk completed no request"
    max_rate = float(params.get("max_error_rate", 0.01))
    rate = result.error_count / max(result.requests, 1)
    if rate > max_rate:
        kinds = ", ".join(f"{k} {v}" for k, v in result.errors.items() if v)
        return "invalid", (f"error rate {rate:.2%} > {max_rate:.2%} ({kinds})")
    if server_requests is None:
        return "invalid", "server request count unavailable: cannot confirm the load arrived"
    allowed = int(params.get("connections", 0)) + math.ceil(
        float(params.get("count_tolerance", 0.01)) * result.requests)
    gap = server_requests - result.requests
    if abs(gap) > allowed:
        return "invalid", (
            f"server counted {server_requests} requests, wrk {result.requests} "
            f"(gap {gap:+d} > allowed {allowed})"
        )
    return "ok", None
