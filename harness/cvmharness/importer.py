"""Import wrk's human output (logs of runs made by hand) as samples of a run.

The seeds' numbers exist only as wrk's text summary. Importing them gives the same
report and compare as a harness run, so a hand-made baseline can be set beside a
measured one. The text is rounded (``49.63GB``, ``3.00m``), so values derived from it
say so: ``duration_s`` is ``requests / Requests/sec`` (wrk prints the rate from its exact
clock, to 0.01), more precise than the rounded elapsed time; bytes are wrk's binary
units (1 KB = 1024 B) times the printed mantissa.

The parser is strict inside a run (a line that starts like a wrk line but does not
parse is an error with its line number) and lenient between runs, where logs carry
``date`` lines, shell prompts and ``>>name:`` headers.
"""

from __future__ import annotations

import hashlib
import platform
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cvmharness import __version__
from cvmharness.errors import InputError, Problem
from cvmharness.store import SCHEMA_VERSION, RunStore

_TIME_US = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
"""wrk's time units (units.c) to milliseconds."""
_TIME_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_METRIC = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BINARY = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}

_NUM = r"(-?(?:\d+(?:\.\d*)?|\.\d+)|-?nan|-?inf)"
_RUNNING = re.compile(r"^Running (\d+(?:\.\d+)?)(s|m|h) test @ (\S+)\s*$")
_THREADS = re.compile(r"^\s*(\d+) threads and (\d+) connections\s*$")
_STATS_HEADER = re.compile(r"^\s*Thread Stats\s+Avg\s+Stdev\s+Max\s+\+/- Stdev\s*$")
_LATENCY = re.compile(
    rf"^\s*Latency\s+{_NUM}(us|ms|s|m|h)\s+{_NUM}(us|ms|s|m|h)\s+{_NUM}(us|ms|s|m|h)"
    rf"\s+{_NUM}%\s*$")
_REQSEC = re.compile(
    rf"^\s*Req/Sec\s+{_NUM}([kMGTP]?)\s+{_NUM}([kMGTP]?)\s+{_NUM}([kMGTP]?)\s+{_NUM}%\s*$")
_DIST_HEADER = re.compile(r"^\s*Latency Distribution\s*$")
_DIST_ROW = re.compile(rf"^\s*(\d+(?:\.\d+)?)%\s+{_NUM}(us|ms|s|m|h)\s*$")
_TOTALS = re.compile(
    rf"^\s*(\d+) requests in {_NUM}(us|ms|s|m|h), {_NUM}([KMGTP]?)B read\s*$")
_SOCKET = re.compile(
    r"^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)\s*$")
_NON2XX = re.compile(r"^\s*Non-2xx or 3xx responses: (\d+)\s*$")
_RPS = re.compile(rf"^\s*Requests/sec:\s+{_NUM}\s*$")
_TRANSFER = re.compile(rf"^\s*Transfer/sec:\s+{_NUM}([KMGTP]?)B\s*$")
_NAME = re.compile(r"^\s*>>\s*([^:]*?)\s*:?\s*$")

_KEYWORDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("Latency Distribution", _DIST_HEADER),
    ("Latency", _LATENCY),
    ("Req/Sec", _REQSEC),
    ("Socket errors:", _SOCKET),
    ("Non-2xx or 3xx responses:", _NON2XX),
    ("Requests/sec:", _RPS),
    ("Transfer/sec:", _TRANSFER),
    ("Thread Stats", _STATS_HEADER),
)
_PERCENTILE_KEYS = {50.0: "p50", 75.0: "p75", 90.0: "p90", 99.0: "p99", 99.9: "p999"}


class WrkTextError(ValueError):
    """Text that is not (complete) wrk output; ``line`` is 1-based within the text."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass(frozen=True)
class ThreadStats:
    """One row of wrk's ``Thread Stats`` table."""

    avg: float
    stdev: float
    max: float
    within_stdev_pct: float
    """Share of samples within one stdev of the mean, as wrk prints it."""


@dataclass(frozen=True)
class WrkText:
    """One wrk run as its text summary says, in plain units (ms, bytes, seconds)."""

    url: str
    duration_s: float
    """The configured duration from ``Running 30s test``, as wrk rounds it."""
    threads: int
    connections: int
    latency_ms: ThreadStats
    requests_per_thread: ThreadStats
    requests: int
    elapsed_s: float
    """From ``N requests in 30.01s``: rounded by wrk to 3 significant digits."""
    bytes_read: int
    requests_per_sec: float
    transfer_per_sec: float
    """Bytes per second, from ``Transfer/sec``."""
    socket_errors: dict[str, int] = field(default_factory=dict)
    """connect, read, write, timeout: zero when wrk printed no ``Socket errors`` line."""
    non_2xx_3xx: int = 0
    percentiles_ms: dict[str, float] = field(default_factory=dict)
    """``p50``.. from ``Latency Distribution`` (wrk ``--latency``); empty otherwise."""
    name: str | None = None
    """The ``>>name:`` header that preceded the run in a log, if any."""
    line: int = 1
    """Line of the ``Running`` header, for messages."""

    @property
    def measured_s(self) -> float:
        """wrk's run time recovered from its rate, which it prints from its exact clock."""
        if self.requests_per_sec > 0 and self.requests > 0:
            return self.requests / self.requests_per_sec
        return self.elapsed_s

    def metrics(self) -> dict[str, Any]:
        """The sample ``metrics`` object of docs/results.md."""
        duration = self.measured_s
        latency: dict[str, float | None] = {
            "mean": self.latency_ms.avg,
            "stdev": self.latency_ms.stdev,
            "max": self.latency_ms.max,
        }
        for key in ("p50", "p75", "p90", "p99", "p999"):
            latency[key] = self.percentiles_ms.get(key)
        return {
            "requests": self.requests,
            "duration_s": round(duration, 6),
            "requests_per_sec": self.requests_per_sec,
            "bytes_per_sec": round(self.bytes_read / duration, 3) if duration > 0 else None,
            "latency_ms": latency,
            "errors": {**{k: self.socket_errors.get(k, 0)
                          for k in ("connect", "read", "write", "timeout")},
                       "status": self.non_2xx_3xx},
        }


def _float(text: str) -> float:
    return float(text)


def _time_ms(number: str, unit: str) -> float:
    return _float(number) * _TIME_US[unit]


@dataclass
class _Block:
    start: int
    name: str | None
    url: str
    duration_s: float
    threads: int | None = None
    connections: int | None = None
    latency: ThreadStats | None = None
    req: ThreadStats | None = None
    percentiles: dict[str, float] = field(default_factory=dict)
    in_distribution: bool = False
    requests: int | None = None
    elapsed_s: float | None = None
    bytes_read: int | None = None
    socket: dict[str, int] = field(default_factory=dict)
    non2xx: int = 0
    rps: float | None = None

    def feed(self, number: int, line: str) -> None:
        """Take one line of the run's body; raise WrkTextError on a malformed wrk line."""
        if self.in_distribution:
            row = _DIST_ROW.match(line)
            if row:
                pct = float(row.group(1))
                key = _PERCENTILE_KEYS.get(pct, f"p{row.group(1).replace('.', '')}")
                self.percentiles[key] = _time_ms(row.group(2), row.group(3))
                return
            self.in_distribution = False
        if self.threads is None:
            match = _THREADS.match(line)
            if match:
                self.threads, self.connections = int(match.group(1)), int(match.group(2))
                return
        totals = _TOTALS.match(line)
        if totals:
            self.requests = int(totals.group(1))
            self.elapsed_s = _float(totals.group(2)) * _TIME_S[totals.group(3)]
            self.bytes_read = round(_float(totals.group(4)) * _BINARY[totals.group(5)])
            return
        stripped = line.strip()
        for keyword, pattern in _KEYWORDS:
            if not stripped.startswith(keyword):
                continue
            match = pattern.match(line)
            if match is None:
                raise WrkTextError(number, f"malformed wrk {keyword!r} line: {stripped!r}")
            self._take(keyword, match)
            return
        if re.match(r"^\s*\d+ requests in ", line):
            raise WrkTextError(number, f"malformed wrk totals line: {stripped!r}")

    def _take(self, keyword: str, match: re.Match[str]) -> None:
        g = match.groups()
        if keyword == "Latency Distribution":
            self.in_distribution = True
        elif keyword == "Latency":
            self.latency = ThreadStats(_time_ms(g[0], g[1]), _time_ms(g[2], g[3]),
                                       _time_ms(g[4], g[5]), _float(g[6]))
        elif keyword == "Req/Sec":
            self.req = ThreadStats(_float(g[0]) * _METRIC[g[1]], _float(g[2]) * _METRIC[g[3]],
                                   _float(g[4]) * _METRIC[g[5]], _float(g[6]))
        elif keyword == "Socket errors:":
            self.socket = dict(zip(("connect", "read", "write", "timeout"),
                                   (int(x) for x in g), strict=True))
        elif keyword == "Non-2xx or 3xx responses:":
            self.non2xx = int(g[0])
        elif keyword == "Requests/sec:":
            self.rps = _float(g[0])

    def finish(self, number: int, transfer: re.Match[str]) -> WrkText:
        missing = [what for what, value in (
            ("'N threads and M connections'", self.threads),
            ("'Latency' row", self.latency),
            ("'Req/Sec' row", self.req),
            ("'N requests in T, B read'", self.requests),
            ("'Requests/sec:'", self.rps),
        ) if value is None]
        if missing:
            raise WrkTextError(number, f"wrk run that starts on line {self.start} has no "
                                       + ", no ".join(missing))
        assert self.threads is not None and self.connections is not None
        assert self.latency is not None and self.req is not None and self.rps is not None
        assert self.requests is not None and self.elapsed_s is not None
        assert self.bytes_read is not None
        return WrkText(
            url=self.url, duration_s=self.duration_s, threads=self.threads,
            connections=self.connections, latency_ms=self.latency,
            requests_per_thread=self.req, requests=self.requests, elapsed_s=self.elapsed_s,
            bytes_read=self.bytes_read, requests_per_sec=self.rps,
            transfer_per_sec=_float(transfer.group(1)) * _BINARY[transfer.group(2)],
            socket_errors={k: self.socket.get(k, 0)
                           for k in ("connect", "read", "write", "timeout")},
            non_2xx_3xx=self.non2xx, percentiles_ms=dict(self.percentiles),
            name=self.name, line=self.start,
        )


def parse_wrk_log(text: str) -> list[WrkText]:
    """Every wrk run in a log, in order; each named by the ``>>name:`` line before it."""
    runs: list[WrkText] = []
    block: _Block | None = None
    name: str | None = None
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        running = _RUNNING.match(line.strip())
        if running:
            if block is not None:
                raise WrkTextError(number, f"wrk run that starts on line {block.start} "
                                           "ends without 'Transfer/sec:' (output cut?)")
            block = _Block(start=number, name=name, url=running.group(3),
                           duration_s=float(running.group(1)) * _TIME_S[running.group(2)])
            name = None
            continue
        if block is None:
            header = _NAME.match(line)
            if header and header.group(1):
                name = header.group(1)
            elif line.strip().startswith("Running "):
                raise WrkTextError(number, f"malformed wrk header: {line.strip()!r}")
            continue
        if line.strip().startswith("Transfer/sec:"):
            transfer = _TRANSFER.match(line)
            if transfer is None:
                raise WrkTextError(number, f"malformed wrk 'Transfer/sec:' line: {line.strip()!r}")
            runs.append(block.finish(number, transfer))
            block = None
            continue
        block.feed(number, line)
    if block is not None:
        raise WrkTextError(block.start, "wrk run ends without 'Transfer/sec:' (output cut?)")
    if not runs:
        first = next((i for i, ln in enumerate(lines, start=1) if ln.strip()), 1)
        raise WrkTextError(first, "no wrk run found (expected 'Running 30s test @ URL')")
    return runs


def parse_wrk_text(text: str) -> WrkText:
    """The one wrk run in ``text`` (wrk's stdout); more than one is an error."""
    runs = parse_wrk_log(text)
    if len(runs) > 1:
        raise WrkTextError(runs[1].line, f"{len(runs)} wrk runs where one was expected "
                                         "(use parse_wrk_log for logs of several runs)")
    return runs[0]


# --------------------------------------------------------------------------- import


def _scenario_id(raw: str) -> str:
    """A scenario id from a log header or file name: lower case, [a-z0-9-]."""
    slug = re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-")
    return slug or "imported"


def _format_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def import_logs(logs: Sequence[Path], out: Path, scenario: str | None = None) -> Path:
    """Write a new run directory under ``out`` holding every wrk run of ``logs``.

    Each run becomes one ``ok`` sample of workload ``http``. The scenario is
    ``scenario`` if given, else the run's ``>>name:`` header, else the file's stem. Params
    that differ between the imported runs of one workload become the sweep part of the
    cell id (``host.http.threads-120``), as a matrix sweep would name them; runs with the
    same scenario and params are repetitions of one cell, numbered in file order.
    """
    problems: list[Problem] = []
    parsed: list[tuple[Path, WrkText]] = []
    files: list[dict[str, Any]] = []
    for log in logs:
        try:
            text = log.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            problems.append(Problem(str(log), "", f"cannot read: {exc.strerror or exc}"))
            continue
        try:
            runs = parse_wrk_log(text)
        except WrkTextError as exc:
            problems.append(Problem(str(log), "", exc.message, line=exc.line))
            continue
        parsed.extend((log, run) for run in runs)
        files.append({"path": str(log), "sha256": _sha256(log), "runs": len(runs)})
    if problems:
        raise InputError(problems)

    entries: list[tuple[str, dict[str, Any], Path, WrkText]] = []
    for log, run in parsed:
        scen = _scenario_id(scenario or run.name or log.stem)
        params: dict[str, Any] = {
            "threads": run.threads,
            "connections": run.connections,
            "duration": run.duration_s,
            "path": urlsplit(run.url).path or "/",
        }
        entries.append((scen, params, log, run))
    swept = [key for key in ("threads", "connections", "duration", "path")
             if len({_format_value(p[key]) for _, p, _, _ in entries}) > 1]

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_id = f"{stamp}-import-{secrets.token_hex(2)}"
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    repetitions: dict[str, int] = {}
    samples: list[dict[str, Any]] = []
    for scen, params, log, run in entries:
        suffix = "".join(f".{key}-{_format_value(params[key]).strip('/') or 'root'}"
                         for key in swept)
        cell_id = f"{scen}.http{suffix}"
        repetitions[cell_id] = repetitions.get(cell_id, 0) + 1
        samples.append({
            "schema": SCHEMA_VERSION,
            "run_id": run_id,
            "cell_id": cell_id,
            "scenario": scen,
            "client": {"kind": "unknown", "name": None, "node": None},
            "server": {"kind": "unknown", "name": None, "node": None},
            "via": None,
            "workload": "http",
            "tool": "wrk",
            "params": params,
            "repetition": repetitions[cell_id],
            "started_at": None,
            "ended_at": None,
            "status": "ok",
            "reason": None,
            "metrics": run.metrics(),
            "server_requests": None,
            "url": run.url,
            "source": {"file": str(log), "line": run.line},
        })

    meta: dict[str, Any] = {
        "harness": {"version": __version__, "git_revision": None,
                    "python": platform.python_version()},
        "matrix": {"file": None, "name": "import", "resolved": None},
        "lab": {"name": None, "inventory": None, "hosts": []},
        "plan": {"cells": len(repetitions), "repetitions": len(samples), "estimated_s": None},
        "argv": None,
        "imported": {"files": files, "scenario": scenario, "swept": swept},
        "started_at": now,
        "ended_at": now,
        "status": "ok",
        "resumed": [],
    }
    out.mkdir(parents=True, exist_ok=True)
    store = RunStore.create(out, run_id, meta)
    for sample in samples:
        store.append(sample)
    return store.run_dir


__all__ = [
    "ThreadStats",
    "WrkText",
    "WrkTextError",
    "import_logs",
    "parse_wrk_log",
    "parse_wrk_text",
]

