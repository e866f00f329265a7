"""The driver of ``vm:NAME`` and ``td:NAME`` placements: libvirt guests of a lab host.

A guest is declared on its host (``cvmharness_guests``) and brought up by the guest role
(``cvmharness provision``). Clients in a guest run over SSH as root with the lab key; the
guest's host key is pinned in the harness's known_hosts under ``cvmharness-<name>``, so
nothing is ever trusted on first use. On QEMU user networking (the ``local`` lab) the
guest's sshd and nginx are reachable only through loopback forwards on its host;
guests on a libvirt network are reached through their host (ProxyJump).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvmharness.drivers import Endpoint
from cvmharness.lab import GuestSpec, HostVars, Lab, LabHost
from cvmharness.libvirt import (
    HostSignals,
    domain_state,
    guest_lease_address,
    read_host_signals,
    tdx_host_state,
)
from cvmharness.placement import Placement
from cvmharness.transport import SshTransport, Transport

HOST_KEY_ALIAS_PREFIX = "cvmharness-"
SLIRP_HOST = "10.0.2.2"
"""The host as seen from a guest on QEMU user networking (its loopback forwards)."""


def default_ssh_dir() -> Path:
    return Path(os.environ.get("HOME", "/root")) / ".local/state/cvmharness/ssh"


def _extra(guest: GuestSpec) -> dict[str, Any]:
    return dict(guest.model_extra or {})


def guest_network(guest: GuestSpec) -> str:
    return str(_extra(guest).get("network", "user"))


def guest_nginx_ports(guest: GuestSpec) -> list[int]:
    return [int(p) for p in _extra(guest).get("nginx_ports", [8080])]


def guest_forwards(guest: GuestSpec) -> dict[int, int]:
    return {int(k): int(v) for k, v in (_extra(guest).get("http_forwards") or {}).items()}


@dataclass
class GuestDriver:
    """Availability, client transport and endpoints of guests, for one lab."""

    lab: Lab
    host_transport: Callable[[LabHost], Transport]
    """The transport of a lab host (the host driver's), for virsh and signal reads."""
    _signals: dict[str, HostSignals] = field(default_factory=dict)
    _states: dict[str, str | None] = field(default_factory=dict)
    _transports: dict[str, Transport] = field(default_factory=dict)

    def _find(self, placement: Placement) -> tuple[LabHost, GuestSpec] | str:
        found = self.lab.guest(placement.name or "")
        if found is None:
            return (f"lab '{self.lab.name}' declares no {placement.kind} guest "
                    f"{placement.name!r} (cvmharness_guests in {self.lab.inventory})")
        host, guest = found
        if guest.flavor != placement.kind:
            return (f"guest {guest.name!r} on {host.name} is flavor {guest.flavor!r}, "
                    f"not {placement.kind!r}")
        return host, guest

    def _require(self, placement: Placement) -> tuple[LabHost, GuestSpec]:
        found = self._find(placement)
        assert not isinstance(found, str), "availability() is checked before use"
        return found

    def ssh_dir(self, host: LabHost) -> Path:
        configured = host.raw.get("cvmharness_ssh_dir")
        return Path(str(configured)) if configured else default_ssh_dir()

    def host_signals(self, host: LabHost) -> HostSignals:
        if host.name not in self._signals:
            self._signals[host.name] = read_host_signals(self.host_transport(host))
        return self._signals[host.name]

    def _state(self, host: LabHost, guest: GuestSpec) -> str | None:
        if guest.name not in self._states:
            self._states[guest.name] = domain_state(self.host_transport(host), guest.name)
        return self._states[guest.name]

    def availability(self, placement: Placement) -> str | None:
        found = self._find(placement)
        if isinstance(found, str):
            return found
        host, guest = found
        if guest_network(guest) == "user" and "ssh_port" not in _extra(guest):
            return (f"guest {guest.name!r} on QEMU user networking needs ssh_port "
                    f"(cvmharness_guests in {self.lab.inventory})")
        if guest.flavor == "td":
            tdx = tdx_host_state(self.host_signals(host))
            if not tdx.ready:
                return f"host {host.name} cannot launch TDX guests: " + "; ".join(tdx.reasons)
        state = self._state(host, guest)
        if state is None:
            return (f"guest {guest.name!r} is not defined on {host.name} "
                    f"(run: cvmharness provision)")
        if state != "running":
            return f"guest {guest.name!r} on {host.name} is {state} (run: cvmharness provision)"
        return None

    def nodes(self, placement: Placement) -> list[str]:
        """Inventory nodes a cell with this placement uses: the guest and its host."""
        host, guest = self._require(placement)
        return [host.name, guest.name]

    def client_node(self, placement: Placement) -> LabHost:
        host, guest = self._require(placement)
        ssh_dir = self.ssh_dir(host)
        common = [f"-o HostKeyAlias={HOST_KEY_ALIAS_PREFIX}{guest.name}",
                  "-o StrictHostKeyChecking=yes", "-o IdentitiesOnly=yes"]
        if guest_network(guest) == "user":
            address, port = "127.0.0.1", int(_extra(guest)["ssh_port"])
            if not host.is_local:
                common.append(f"-o ProxyJump={_jump(host)}")
        else:
            address = guest_lease_address(self.host_transport(host), guest.name) or guest.name
            port = 22
            if not host.is_local:
                common.append(f"-o ProxyJump={_jump(host)}")
        return LabHost(name=guest.name, vars=HostVars(
            ansible_connection="ssh", ansible_host=address, ansible_port=port,
            ansible_user="root", ansible_ssh_private_key_file=str(ssh_dir / "id_ed25519"),
            ansible_ssh_common_args=" ".join(common),
            nginx_bench_ports=guest_nginx_ports(guest),
        ), raw={"cvmharness_guest_of": host.name, "cvmharness_guest_flavor": guest.flavor})

    def client_transport(self, placement: Placement) -> Transport:
        host, guest = self._require(placement)
        if guest.name not in self._transports:
            self._transports[guest.name] = SshTransport(
                host=self.client_node(placement),
                known_hosts=self.ssh_dir(host) / "known_hosts")
        return self._transports[guest.name]

    def endpoint(self, server: Placement, client: Placement, port: int | None,
                 via: str | None) -> Endpoint:
        host, guest = self._require(server)
        guest_port = port or guest_nginx_ports(guest)[0]
        if client.kind in ("vm", "td") and client.name == guest.name:
            return Endpoint("127.0.0.1", guest_port, guest.name)
        if guest_network(guest) != "user":
            address = guest_lease_address(self.host_transport(host), guest.name)
            if address is None:
                raise OSError(f"guest {guest.name!r} has no DHCP lease on {host.name}")
            return Endpoint(address, guest_port, guest.name)
        forwards = guest_forwards(guest)
        if guest_port not in forwards:
            raise OSError(f"guest {guest.name!r} forwards no loopback port to its port "
                          f"{guest_port} (http_forwards in {self.lab.inventory})")
        if client.kind == "host":
            client_host = self.lab.host(client.name)
            if client_host is None or client_host.name != host.name:
                raise OSError(f"guest {guest.name!r} is on QEMU user networking: only its "
                              f"host {host.name} and its other guests reach it")
            return Endpoint("127.0.0.1", forwards[guest_port], guest.name)
        other = self.lab.guest(client.name or "")
        if other is not None and other[0].name == host.name:
            return Endpoint(SLIRP_HOST, forwards[guest_port], guest.name)
        raise OSError(f"{client.label()} cannot reach guest {guest.name!r} on QEMU user "
                      "networking")

    def close(self) -> None:
        for transport in self._transports.values():
            transport.close()


def _jump(host: LabHost) -> str:
    v = host.vars
    target = v.ansible_host or host.name
    if v.ansible_port:
        target = f"{target}:{v.ansible_port}"
    return f"{v.ansible_user}@{target}" if v.ansible_user else target
