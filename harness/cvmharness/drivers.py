"""Placement drivers: whether a placement can run here, and how to reach it.

Each placement kind has a driver. The host driver is complete; guests (libvirt) and
pods (Kubernetes) plug in here with the same three answers: a skip reason or none, a
transport for clients, an endpoint for servers.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from cvmharness.lab import Lab, LabHost
from cvmharness.placement import Placement
from cvmharness.transport import LocalTransport, Transport, transport_for

if TYPE_CHECKING:
    from pathlib import Path

    from cvmharness.guests import GuestDriver
    from cvmharness.kube import PodDriver

RUNNABLE_TOOLS = ("wrk",)


@dataclass(frozen=True)
class Endpoint:
    """Where a client sends requests, and which node's nginx counts them."""

    address: str
    port: int
    server_node: str

    def url(self, path: str) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}{path}"


class Driver(Protocol):
    def availability(self, placement: Placement) -> str | None: ...

    def nodes(self, placement: Placement) -> list[str]: ...

    def client_transport(self, placement: Placement) -> Transport: ...

    def client_node(self, placement: Placement) -> LabHost: ...

    def endpoint(self, server: Placement, client: Placement, port: int | None,
                 via: str | None) -> Endpoint: ...


@dataclass
class HostDriver:
    lab: Lab
    _transports: dict[str, Transport] = field(default_factory=dict)

    def availability(self, placement: Placement) -> str | None:
        if self.lab.host(placement.name) is None:
            return (f"lab '{self.lab.name}' has no host {placement.name!r} "
                    f"in group cvmharness_hosts ({self.lab.inventory})")
        return None

    def client_node(self, placement: Placement) -> LabHost:
        host = self.lab.host(placement.name)
        assert host is not None, "availability() is checked before use"
        return host

    def nodes(self, placement: Placement) -> list[str]:
        return [self.client_node(placement).name]

    def client_transport(self, placement: Placement) -> Transport:
        host = self.client_node(placement)
        if host.name not in self._transports:
            self._transports[host.name] = transport_for(host)
        return self._transports[host.name]

    def endpoint(self, server: Placement, client: Placement, port: int | None,
                 via: str | None) -> Endpoint:
        server_host = self.client_node(server)
        port = port or server_host.vars.nginx_bench_ports[0]
        same_node = client.kind == "host" and self.client_node(client).name == server_host.name
        address = "127.0.0.1" if same_node else server_host.bench_address
        return Endpoint(address=address, port=port, server_node=server_host.name)

    def close(self) -> None:
        for transport in self._transports.values():
            transport.close()


@dataclass
class Drivers:
    """The driver of each placement kind for one lab."""

    lab: Lab
    run_dir: Path | None = None
    """The run's directory, for drivers that write per-run state (pod facts)."""
    host: HostDriver = field(init=False)
    guests: GuestDriver = field(init=False)
    pods: PodDriver = field(init=False)

    def __post_init__(self) -> None:
        from cvmharness.guests import GuestDriver  # guests imports Endpoint from here

        self.host = HostDriver(self.lab)
        self.guests = GuestDriver(self.lab, host_transport=self._host_transport)
        from cvmharness.kube import PodDriver  # kube imports Endpoint from here

        self.pods = PodDriver(self.lab, run_dir=self.run_dir)

    def _host_transport(self, host: LabHost) -> Transport:
        return self.host.client_transport(Placement(kind="host", name=host.name))

    def for_placement(self, placement: Placement) -> Driver:
        if placement.kind == "host":
            return self.host
        if placement.kind in ("vm", "td"):
            return self.guests
        return self.pods

    def skip_reason(self, client: Placement, server: Placement, tool: str) -> str | None:
        reasons: dict[str, list[str]] = {}  # reason -> "client X", "server Y"
        for role, placement in (("client", client), ("server", server)):
            reason = self.for_placement(placement).availability(placement)
            if reason is not None:
                reasons.setdefault(reason, []).append(f"{role} {placement.label()}")
        if reasons:
            # Both roles are checked, so a plan names everything a cell lacks, once.
            return "; ".join(
                f"{' and '.join(who)}: {reason}" if len(who) == 1 or client != server
                else f"client and server {client.label()}: {reason}"
                for reason, who in reasons.items())
        if tool not in RUNNABLE_TOOLS:
            return f"workload tool {tool!r} has no runner in this version of cvmharness"
        return None

    def close(self) -> None:
        self.pods.close()
        self.guests.close()
        self.host.close()


def fetch_status(transport: Transport, url: str, timeout_s: float = 5.0) -> str:
    """The nginx status page, fetched from where the client runs (same network path)."""
    if isinstance(transport, LocalTransport):
        # No proxy: benchmark-side requests must go straight to the lab's own address.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(url, timeout=timeout_s) as response:
                return str(response.read().decode("utf-8", "replace"))
        except (urllib.error.URLError, OSError) as exc:
            raise OSError(f"GET {url}: {exc}") from None
    done = transport.run(["curl", "-fsS", "--noproxy", "*", "--max-time", str(int(timeout_s)), url],
                         timeout_s + 5)
    if done.rc != 0:
        raise OSError(f"GET {url} on {transport.node}: {done.stderr.strip() or done.rc}")
    return done.stdout
