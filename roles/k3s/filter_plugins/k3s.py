"""Filters of the k3s role: the installed version, and the kubeconfig the controller uses."""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml

_VERSION = re.compile(r"^k3s version (v\S+)", re.MULTILINE)


def k3s_installed_version(stdout: str) -> str:
    """The version `k3s --version` prints (`k3s version v1.33.5+k3s1 (sha)`), or ''."""
    match = _VERSION.search(stdout or "")
    return match.group(1) if match else ""


def k3s_api_url(address: str, port: int | str) -> str:
    host = f"[{address}]" if ":" in address and not address.startswith("[") else address
    return f"https://{host}:{int(port)}"


def k3s_controller_kubeconfig(text: str, server_url: str) -> str:
    """k3s's admin kubeconfig with every cluster's server pointed at server_url.

    k3s writes https://127.0.0.1:6443, which only works on the node itself; the
    controller reaches the API on the node's lab address (in tls-san).
    """
    config: dict[str, Any] = yaml.safe_load(text) or {}
    out = copy.deepcopy(config)
    clusters = out.get("clusters") or []
    if not clusters:
        raise ValueError("the k3s kubeconfig has no clusters")
    for entry in clusters:
        entry.setdefault("cluster", {})["server"] = server_url
    return yaml.safe_dump(out, default_flow_style=False, sort_keys=False)


def k3s_checksums(text: str | None) -> dict[str, str]:
    """A release's sha256sum-ARCH.txt (`HASH  NAME` lines) as {name: hash}."""
    sums = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def k3s_name_checksum(pair: list[str]) -> dict[str, str]:
    """(path, checksum) -> {name, checksum}: the shape the air-gap check loops over."""
    path, checksum = pair
    return {"name": path.rsplit("/", 1)[-1], "checksum": checksum}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "k3s_installed_version": k3s_installed_version,
            "k3s_api_url": k3s_api_url,
            "k3s_controller_kubeconfig": k3s_controller_kubeconfig,
            "k3s_name_checksum": k3s_name_checksum,
            "k3s_checksums": k3s_checksums,
        }
