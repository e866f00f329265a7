"""Which lab node runs which k3s cluster, from the lab's `cvmharness_clusters`.

A host that declares a cluster serves it (the k3s server); a cluster declared with
`inside: GUEST` is served by that guest (an inventory host once the guests play added
it). Hosts with `k3s_node_role: agent` and `k3s_cluster_name` join that cluster. The
Kata shims of a node follow the cluster's runtime classes (kata-qemu -> qemu,
kata-qemu-tdx -> qemu-tdx; runc needs nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

SHIMS = {"kata-qemu": "qemu", "kata-qemu-tdx": "qemu-tdx"}
NO_SHIM = {"runc"}


def cluster_plan(hostvars: Mapping[str, Any], hosts: list[str]) -> dict[str, dict[str, Any]]:
    """{host: {cluster, role, shims}} for every host of `hosts` that runs a cluster."""
    plan: dict[str, dict[str, Any]] = {}
    specs: dict[str, dict[str, Any]] = {}
    for host in hosts:
        for spec in hostvars[host].get("cvmharness_clusters") or []:
            name = spec["name"]
            if name in specs:
                raise AnsibleFilterError(f"cluster {name!r} is declared twice (second on {host})")
            classes = list(spec.get("runtime_classes") or ["runc"])
            unknown = [c for c in classes if c not in SHIMS and c not in NO_SHIM]
            if unknown:
                raise AnsibleFilterError(
                    f"{host}: cluster {name!r} has unknown runtime classes {unknown}; "
                    f"known: {sorted(NO_SHIM | set(SHIMS))}"
                )
            server = spec.get("inside") or host
            specs[name] = spec
            entry = {
                "cluster": name,
                "role": "server",
                "shims": [SHIMS[c] for c in classes if c in SHIMS],
            }
            if server in plan:
                raise AnsibleFilterError(
                    f"{server} would serve clusters {plan[server]['cluster']!r} and {name!r}; "
                    "one k3s per node"
                )
            plan[server] = entry
    for host in hosts:
        variables = hostvars[host]
        if variables.get("k3s_node_role") != "agent" or host in plan:
            continue
        name = variables.get("k3s_cluster_name")
        if name not in specs:
            raise AnsibleFilterError(
                f"{host} is a k3s agent of cluster {name!r}, "
                "which no host declares in cvmharness_clusters"
            )
        classes = specs[name].get("runtime_classes") or ["runc"]
        plan[host] = {
            "cluster": name,
            "role": "agent",
            "shims": [SHIMS[c] for c in classes if c in SHIMS],
        }
    return plan


def cluster_nodes(
    plan: Mapping[str, Mapping[str, Any]], cluster: str, hostvars: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The Kubernetes nodes of a cluster: [{name, tdx}], tdx where the node has qemu-tdx.

    The node name is k3s's: its node-name option, else the host's hostname.
    """
    nodes = []
    for host, entry in sorted(plan.items()):
        if entry["cluster"] != cluster:
            continue
        variables = hostvars[host]
        config = variables.get("k3s_config") or {}
        facts = variables.get("ansible_facts") or {}
        name = config.get("node-name") or facts.get("hostname") or host
        nodes.append({"name": name, "tdx": "qemu-tdx" in entry["shims"]})
    return nodes


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "cvmharness_cluster_plan": cluster_plan,
            "cvmharness_cluster_nodes": cluster_nodes,
        }
