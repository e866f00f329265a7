"""Filters for the nginx_bench port preflight.

`ss -ltnpH` is the one tool that names the process behind a listening socket on every
Linux the role supports; these filters turn its text into data so the role can say
*which* process holds a bench port instead of letting nginx fail with EADDRINUSE.
"""

from __future__ import annotations

import re
from typing import Any

_PROCESS_RE = re.compile(r'\("((?:[^"\\]|\\.)*)",pid=(\d+)')


def nginx_bench_listeners(ss_output: str) -> list[dict[str, Any]]:
    """Parse `ss -ltnpH` output into [{address, port, processes: [{name, pid}]}]."""
    listeners: list[dict[str, Any]] = []
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        address, _, port = fields[3].rpartition(":")
        if not port.isdigit():
            continue
        processes = [{"name": name, "pid": int(pid)} for name, pid in _PROCESS_RE.findall(line)]
        listeners.append({"address": address, "port": int(port), "processes": processes})
    return listeners


def nginx_bench_port_conflicts(
    listeners: list[dict[str, Any]], ports: list[int], own_pid: int | str | None
) -> list[dict[str, Any]]:
    """Listeners on `ports` that the instance whose master is `own_pid` does not hold.

    The master process holds every listening socket of its instance, so a socket whose
    holders include the master belongs to the instance. A socket without visible holders
    (ss run without privileges) counts as foreign: the owner cannot be proven.
    """
    wanted = {int(p) for p in ports}
    own = int(own_pid) if own_pid not in (None, "") else None
    conflicts = []
    for listener in listeners:
        if listener["port"] not in wanted:
            continue
        pids = {p["pid"] for p in listener["processes"]}
        if own is not None and own in pids:
            continue
        holders = (
            ", ".join(f"{p['name']}(pid={p['pid']})" for p in listener["processes"])
            or "an unknown process (run with become: true to see which)"
        )
        conflicts.append({**listener, "holders": holders})
    return conflicts


def nginx_bench_own_ports(listeners: list[dict[str, Any]], own_pid: int | str | None) -> list[int]:
    """Ports the instance whose master is `own_pid` listens on (sorted, unique)."""
    if own_pid in (None, ""):
        return []
    own = int(own_pid)
    return sorted(
        {
            listener["port"]
            for listener in listeners
            if own in {p["pid"] for p in listener["processes"]}
        }
    )


class FilterModule:
    """nginx_bench filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "nginx_bench_listeners": nginx_bench_listeners,
            "nginx_bench_port_conflicts": nginx_bench_port_conflicts,
            "nginx_bench_own_ports": nginx_bench_own_ports,
        }
