"""Build the fixture run ``local-smoke/`` from real wrk runs against a real nginx.

Not part of the test suite: run by hand, once, and the resulting directory is committed
(the report tests must not depend on timing of this machine). It does what
``cvmharness bench`` does for a repetition -- warm-up, stub_status before, measured wrk
run with the JSON Lua hook, stub_status after, judge -- so the fixture has the shape and
the numbers of a real run: 5 repetitions per cell, a skipped cell (no TD on the
machine that made it), a cell whose every repetition is invalid (a path that does not
exist: 100% non-2xx responses) and one failed repetition (wrk pointed at a closed port).

Usage: start nginx listening on 127.0.0.1:PORT and [::1]:PORT, serving ``/`` (615 bytes),
``/obj/100k.bin`` and ``stub_status`` at ``/__cvmh/status``; then
``PYTHONPATH=harness python3 tests/data/runs/make_local_smoke.py PORT OUT_DIR``.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from cvmharness.workloads.wrk import judge, parse_stub_status, parse_wrk_json

LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('CVMH_WRK_JSON {"duration_us":%d,"requests":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"max":%d,"mean":%.3f,"stdev":%.3f,"p50":%d,"p75":%d,' ..
    '"p90":%d,"p99":%d,"p999":%d},"requests_per_thread_s":{"mean":%.3f,"stdev":%.3f,' ..
    '"max":%d}}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency.min, latency.max, latency.mean, latency.stdev,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), requests.mean, requests.stdev,
    requests.max))
end
"""

REPS = 5
RUN_ID = "20261123T150500Z-smoke-5e1f"
WORKLOADS = {
    "http": {"threads": 2, "connections": 16, "duration": 2.0, "timeout": 2.0, "path": "/",
             "max_error_rate": 0.01, "count_tolerance": 0.01},
    "http-100k": {"threads": 2, "connections": 16, "duration": 2.0, "timeout": 2.0,
                  "path": "/obj/100k.bin", "max_error_rate": 0.01, "count_tolerance": 0.01},
    "http-missing": {"threads": 2, "connections": 16, "duration": 2.0, "timeout": 2.0,
                     "path": "/missing", "max_error_rate": 0.01, "count_tolerance": 0.01},
}
SCENARIOS = [
    ("host-local", "127.0.0.1", ["http", "http-100k", "http-missing"]),
    ("host-local-ipv6", "[::1]", ["http", "http-100k"]),
    ("host-to-td", None, ["http", "http-100k"]),
]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_count(host: str, port: int) -> int:
    with urllib.request.urlopen(f"http://{host}:{port}/__cvmh/status", timeout=5) as r:
        return parse_stub_status(r.read().decode())


def first_line(path: str, prefix: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def facts() -> dict:
    def run(*argv: str) -> str | None:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return None
        return (done.stdout + done.stderr).strip() or None

    osr = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines()
               if "=" in line)
    flags = (first_line("/proc/cpuinfo", "flags") or "").split()
    interesting = [f for f in ("vmx", "svm", "tdx_host_platform", "tdx_guest", "hypervisor")
                   if f in flags]
    tdx_param = Path("/sys/module/kvm_intel/parameters/tdx")
    nginx = run("nginx", "-v")
    wrk = run("wrk", "-v")
    return {
        "node": "local",
        "gathered_at": now(),
        "cpu": {
            "model": first_line("/proc/cpuinfo", "model name"),
            "vendor": first_line("/proc/cpuinfo", "vendor_id"),
            "family": first_line("/proc/cpuinfo", "cpu family"),
            "model_id": first_line("/proc/cpuinfo", "model\t"),
            "stepping": first_line("/proc/cpuinfo", "stepping"),
            "microcode": first_line("/proc/cpuinfo", "microcode"),
            "sockets": None,
            "cores": None,
            "threads": int(run("nproc") or 0) or None,
            "flags_of_interest": interesting,
        },
        "memory_mib": int(int((first_line("/proc/meminfo", "MemTotal") or "0 kB").split()[0])
                          / 1024),
        "kernel": {"release": platform.release(), "version": platform.version(),
                   "cmdline": None},
        "os": {"name": osr.get("NAME", "").strip('"') or None,
               "version": osr.get("VERSION", "").strip('"') or None},
        "virtualization": {"role": "guest" if "hypervisor" in flags else "host", "type": None,
                           "kvm": {"present": Path("/dev/kvm").exists(), "module": None,
                                   "nested": None}},
        "tdx": {"host": {"kvm_intel_tdx": (tdx_param.read_text().strip()
                                           if tdx_param.exists() else None),
                         "module_initialized": None,
                         "cpu_flag": "tdx_host_platform" in flags, "dmesg": None},
                "guest": {"detected": "tdx_guest" in flags}},
        "versions": {"qemu": None, "libvirt": None,
                     "nginx": nginx.split("/")[-1] if nginx else None,
                     "wrk": wrk.split()[1] if wrk else None, "k3s": None, "kata": None},
        "nics": [{"name": "lo", "driver": None, "speed_mbps": None, "mtu": 65536}],
    }


def main(port: int, out: Path) -> None:
    run_dir = out / RUN_ID
    (run_dir / "facts").mkdir(parents=True)
    script = Path(tempfile.mkdtemp()) / "wrk_json.lua"
    script.write_text(LUA)
    samples = []
    for scenario, host, names in SCENARIOS:
        for name in names:
            params = WORKLOADS[name]
            cell_id = f"{scenario}.{name}"
            for rep in range(1, REPS + 1):
                sample = {
                    "schema": 1, "run_id": RUN_ID, "cell_id": cell_id, "scenario": scenario,
                    "client": {"kind": "host", "name": None, "node": "local"},
                    "server": ({"kind": "host", "name": None, "node": "local"} if host else
                               {"kind": "td", "name": "td0"}),
                    "via": None, "workload": name, "tool": "wrk",
                    "params": {k: v for k, v in params.items()
                               if k not in ("max_error_rate", "count_tolerance")},
                    "repetition": rep, "started_at": None, "ended_at": None,
                    "status": "failed", "reason": None, "metrics": None,
                    "server_requests": None, "url": None,
                }
                if host is None:
                    sample["status"] = "skipped"
                    sample["reason"] = ("server td:td0: lab 'local' declares no td guest "
                                        "'td0' (cvmharness_guests in inventory/local.yml)")
                    samples.append(sample)
                    continue
                induced_failure = scenario == "host-local-ipv6" and name == "http-100k" \
                    and rep == REPS
                target_port = port + 1 if induced_failure else port
                url = f"http://{host}:{target_port}{params['path']}"
                sample["url"] = url
                raw = run_dir / "raw" / cell_id / str(rep)
                raw.mkdir(parents=True)
                base = ["wrk", f"-t{params['threads']}", f"-c{params['connections']}",
                        "--timeout=2s"]
                warm = subprocess.run([*base, "-d1s", url], capture_output=True, text=True,
                                      check=False)
                (raw / "warmup.txt").write_text(warm.stdout + warm.stderr)
                if warm.returncode != 0:
                    sample["reason"] = (f"warm-up: wrk exited {warm.returncode}: "
                                        f"{warm.stderr.strip() or warm.stdout.strip()}")
                    samples.append(sample)
                    continue
                before = status_count(host, port)
                argv = [*base, "-d2s", "--latency", "-s", "wrk_json.lua", url]
                (raw / "command.txt").write_text(" ".join(argv) + "\n")
                sample["started_at"] = now()
                done = subprocess.run([*argv[:-3], "-s", str(script), url], capture_output=True,
                                      text=True, check=False)
                sample["ended_at"] = now()
                (raw / "wrk.txt").write_text(done.stdout)
                result = parse_wrk_json(done.stdout)
                sample["metrics"] = result.metrics()
                sample["server_requests"] = status_count(host, port) - before - 1
                (raw / "server.json").write_text(json.dumps(
                    {"node": "local", "server_requests": sample["server_requests"]}) + "\n")
                sample["status"], sample["reason"] = judge(result, sample["server_requests"],
                                                           params)
                samples.append(sample)
                time.sleep(0.5)
    with (run_dir / "samples.ndjson").open("w") as f:
        for s in samples:
            f.write(json.dumps(s, sort_keys=True, separators=(",", ":")) + "\n")
    (run_dir / "facts" / "local.json").write_text(json.dumps(facts(), indent=2) + "\n")
    run_json = {
        "schema": 1, "run_id": RUN_ID,
        "harness": {"version": "0.1.0", "git_revision": None,
                    "python": platform.python_version()},
        "matrix": {"file": "matrices/smoke.yml", "name": "smoke", "resolved": {
            "name": "smoke", "description": "wrk -> nginx on the host, short runs",
            "defaults": {"repetitions": REPS, "warmup": 1.0, "cooldown": 0.5},
            "workloads": {k: {"tool": "wrk", **v} for k, v in WORKLOADS.items()},
            "scenarios": [{"id": s, "client": "host", "server": "host" if h else "td:td0",
                           "workloads": n} for s, h, n in SCENARIOS],
            "sweep": {}}},
        "lab": {"name": "local", "inventory": "inventory/local.yml", "hosts": ["local"]},
        "plan": {"cells": 7, "runnable_cells": 5, "repetitions": 25, "estimated_s": 90.0},
        "argv": ["cvmharness", "bench", "--matrix", "smoke"],
        "started_at": samples[0]["started_at"], "ended_at": now(), "status": "failed",
        "resumed": [],
    }
    (run_dir / "run.json").write_text(json.dumps(run_json, indent=2, sort_keys=True) + "\n")
    print(run_dir)


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
