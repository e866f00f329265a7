"""The lab: an Ansible inventory of hosts, the guests and clusters they declare.

The inventory is resolved by Ansible itself (``ansible-inventory --list`` through the
runner adapter), so group_vars, host_vars and any inventory format work; the harness
then validates the variables it reads and says which file and field is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cvmharness.errors import InputError, Problem
from cvmharness.runner import AnsibleRunner
from cvmharness.yamlsrc import Located, load_located_file

HOSTS_GROUP = "cvmharness_hosts"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class GuestSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    flavor: Literal["vm", "td"]
    vcpus: int = Field(default=2, ge=1, le=512)
    memory_mib: int = Field(default=2048, ge=256)


class ClusterSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    runtime_classes: list[str] = Field(default_factory=lambda: ["runc"])
    inside: str | None = None
    kubeconfig: str | None = None
    """Default: <project root>/state/kubeconfig/<name>.yaml (where the k3s role fetches it);
    a relative path is taken from the project root."""
    nginx_image: str = Field(default="nginx:1.27", min_length=1)
    """Server pods' image: an nginx with ``nginx`` on PATH and a user ``nginx_user``."""
    nginx_user: str = Field(default="nginx", min_length=1)
    wrk_image: str | None = None
    """Client pods' image: wrk at <wrk_prefix>/bin/wrk, curl and /bin/sh (docs/pods.md)."""
    wrk_prefix: str = Field(default="/usr/local", pattern=r"^/")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"


class HostVars(BaseModel):
    """The lab variables the harness itself reads; roles validate their own."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    cvmharness_primary: bool = False
    cvmharness_bench_address: str | None = None
    nginx_bench_ports: list[int] = Field(default_factory=lambda: [8080], min_length=1)
    wrk_prefix: str = "/usr/local"
    cvmharness_guests: list[GuestSpec] = Field(default_factory=list)
    cvmharness_clusters: list[ClusterSpec] = Field(default_factory=list)
    ansible_connection: str = "ssh"
    ansible_host: str | None = None
    ansible_user: str | None = None
    ansible_port: int | None = None
    ansible_ssh_private_key_file: str | None = None
    ansible_ssh_common_args: str | None = None


@dataclass(frozen=True)
class LabHost:
    name: str
    vars: HostVars
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.vars.ansible_connection == "local"

    @property
    def bench_address(self) -> str:
        if self.vars.cvmharness_bench_address:
            return self.vars.cvmharness_bench_address
        if self.is_local:
            return "127.0.0.1"
        return self.vars.ansible_host or self.name

    @property
    def wrk_binary(self) -> str:
        return f"{self.vars.wrk_prefix}/bin/wrk"

    @property
    def wrk_script(self) -> str:
        return f"{self.vars.wrk_prefix}/share/cvmharness/wrk_json.lua"


@dataclass(frozen=True)
class Lab:
    name: str
    inventory: Path
    hosts: dict[str, LabHost]
    root: Path | None = None
    """The project root (state/ lives there); None for labs built in code."""

    @property
    def primary(self) -> LabHost:
        for host in self.hosts.values():
            if host.vars.cvmharness_primary:
                return host
        return next(iter(self.hosts.values()))

    def host(self, name: str | None) -> LabHost | None:
        return self.primary if name is None else self.hosts.get(name)

    def guest(self, name: str) -> tuple[LabHost, GuestSpec] | None:
        for host in self.hosts.values():
            for guest in host.vars.cvmharness_guests:
                if guest.name == name:
                    return host, guest
        return None

    def clusters(self) -> list[tuple[LabHost, ClusterSpec]]:
        return [(h, c) for h in self.hosts.values() for c in h.vars.cvmharness_clusters]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "inventory": str(self.inventory),
            "hosts": {
                name: {
                    "local": h.is_local,
                    "bench_address": h.bench_address,
                    "nginx_ports": h.vars.nginx_bench_ports,
                    "guests": [g.model_dump() for g in h.vars.cvmharness_guests],
                    "clusters": [c.model_dump() for c in h.vars.cvmharness_clusters],
                }
                for name, h in self.hosts.items()
            },
        }


def _shown(path: Path) -> Path:
    """Paths as a user would type them: relative to the working directory when inside it."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def resolve_inventory(lab: str, root: Path) -> Path:
    """A lab is a path, or a name under ``inventory/`` (with or without .yml)."""
    candidate = Path(lab)
    if candidate.exists():
        return _shown(candidate)
    for suffix in (".yml", ".yaml", ""):
        named = root / "inventory" / f"{lab}{suffix}"
        if named.exists():
            return _shown(named)
    raise InputError([Problem(lab, "", f"no such lab (not a path, nor an inventory under "
                                       f"{root / 'inventory'})")])


def _locator(path: Path, display: str) -> Located | None:
    if path.is_file() and path.suffix in (".yml", ".yaml"):
        try:
            return load_located_file(path, display)
        except InputError:
            return None
    return None


def _line_for(doc: Located | None, host: str, var_path: str) -> int | None:
    if doc is None:
        return None
    suffixes = (f"hosts.{host}.{var_path}", f"vars.{var_path}")
    for suffix in suffixes:
        for path, line in doc.lines.items():
            if path.endswith(suffix):
                return line
    head = var_path.split(".")[0].split("[")[0]
    for path, line in doc.lines.items():
        if path.endswith(f"hosts.{host}.{head}") or path.endswith(f"vars.{head}"):
            return line
    return None


def load_lab(lab: str, root: Path) -> Lab:
    path = resolve_inventory(lab, root)
    display = str(path)
    name = path.stem if path.is_file() else path.name
    runner = AnsibleRunner(project_dir=root, inventory=path)
    try:
        listing = runner.inventory_list()
    except ValueError as exc:
        first = str(exc).splitlines()[-1] if str(exc) else "cannot be parsed"
        problem = Problem(display, "", f"not a valid Ansible inventory: {first}")
        raise InputError([problem]) from None
    hostnames = listing.get(HOSTS_GROUP, {}).get("hosts", [])
    if not hostnames:
        raise InputError([Problem(display, HOSTS_GROUP,
                                  "the lab declares no host in this group")])
    hostvars = listing.get("_meta", {}).get("hostvars", {})
    doc = _locator(path, display)
    problems: list[Problem] = []
    hosts: dict[str, LabHost] = {}
    for host in hostnames:
        raw = hostvars.get(host, {})
        try:
            hosts[host] = LabHost(name=host, vars=HostVars.model_validate(raw), raw=raw)
        except ValidationError as exc:
            for error in exc.errors():
                var_path = ".".join(
                    f"[{p}]" if isinstance(p, int) else str(p) for p in error["loc"]
                ).replace(".[", "[")
                message = str(error["msg"]).removeprefix("Value error, ")
                problems.append(Problem(display, f"hosts.{host}.{var_path}", message,
                                        _line_for(doc, host, var_path)))
    names: dict[str, str] = {}
    for host in hosts.values():
        for guest in host.vars.cvmharness_guests:
            if guest.name in names:
                problems.append(Problem(
                    display, f"hosts.{host.name}.cvmharness_guests",
                    f"guest {guest.name!r} is also declared on {names[guest.name]}",
                    _line_for(doc, host.name, "cvmharness_guests"),
                ))
            names[guest.name] = host.name
        ports = host.vars.nginx_bench_ports
        bad = [p for p in ports if not 1 <= p <= 65535]
        if bad or len(set(ports)) != len(ports):
            problems.append(Problem(
                display, f"hosts.{host.name}.nginx_bench_ports",
                "ports must be unique integers in 1-65535",
                _line_for(doc, host.name, "nginx_bench_ports"),
            ))
    if problems:
        raise InputError(problems)
    return Lab(name=name, inventory=path, hosts=hosts, root=root)
