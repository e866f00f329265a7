"""Where a client or server runs: the host, a libvirt guest, or a Kubernetes pod.

A placement is written in a matrix either as a shorthand string (``td:td0``,
``pod:kata-qemu``, ``pod:runc@td:td0``) or as a mapping with the same fields spelled
out. Both become one frozen :class:`Placement`, so the rest of the harness never parses
strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

PlacementKind = Literal["host", "vm", "td", "pod"]
KINDS: tuple[str, ...] = ("host", "vm", "td", "pod")
VIAS: tuple[str, ...] = ("pod-ip", "clusterip", "headless", "nodeport")

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")
_RESOURCE_KEYS = ("cpu", "memory")


@dataclass(frozen=True)
class Resources:
    """Kubernetes requests and limits, as the seeds set them (e.g. 1C2G / 60C100Gi)."""

    requests: tuple[tuple[str, str], ...] = ()
    limits: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {"requests": dict(self.requests), "limits": dict(self.limits)}


@dataclass(frozen=True)
class Placement:
    kind: PlacementKind
    name: str | None = None
    """Guest name for vm/td, runtime class for pods, lab host for ``host`` (None: primary)."""
    node: str | None = None
    cluster: str | None = None
    inside: str | None = None
    """For pods of a cluster that runs inside a guest: that guest (``td:td0``)."""
    resources: Resources | None = field(default=None)

    @property
    def runtime_class(self) -> str | None:
        return self.name if self.kind == "pod" else None

    def label(self) -> str:
        """The shorthand a user would write, for plans and progress lines."""
        if self.kind == "host":
            return "host" if self.name is None else f"host:{self.name}"
        text = f"{self.kind}:{self.name}"
        if self.node:
            text += f"/{self.node}"
        if self.inside:
            text += f"@{self.inside}"
        if self.resources and self.resources.limits:
            text += "[" + ",".join(f"{k}={v}" for k, v in self.resources.limits) + "]"
        return text

    def to_spec(self) -> str | dict[str, Any]:
        """The form a matrix accepts back: shorthand when it says everything."""
        if self.kind == "pod" and (self.node or self.cluster or self.resources):
            spec: dict[str, Any] = {"kind": "pod", "runtime_class": self.name}
            if self.node:
                spec["node"] = self.node
            if self.cluster:
                spec["cluster"] = self.cluster
            if self.inside:
                spec["inside"] = self.inside
            if self.resources is not None:
                spec["resources"] = self.resources.to_dict()
            return spec
        return self.label() if self.kind != "pod" else (
            f"pod:{self.name}" + (f"@{self.inside}" if self.inside else ""))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "name": self.name}
        if self.node is not None:
            out["node"] = self.node
        if self.kind == "pod":
            out["runtime_class"] = self.name
            out["cluster"] = self.cluster
            if self.inside:
                out["inside"] = self.inside
            if self.resources is not None:
                out["resources"] = self.resources.to_dict()
        return out


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"{what} {value!r} is not a valid name (lowercase letters, digits, '-')"
        )
    return value


def _check_guest_ref(text: str) -> str:
    kind, _, name = text.partition(":")
    if kind not in ("vm", "td") or not name:
        raise ValueError(f"'@{text}': a cluster can run inside 'vm:NAME' or 'td:NAME'")
    _check_name(name, "guest")
    return text


def parse_shorthand(text: str) -> Placement:
    text = text.strip()
    if text == "host":
        return Placement(kind="host")
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise ValueError(
            f"unknown placement {text!r}: expected host, host:NODE, vm:NAME, td:NAME, "
            "pod:RUNTIME_CLASS or pod:RUNTIME_CLASS@td:NAME"
        )
    if kind == "host":
        if not _HOSTNAME.match(rest):
            raise ValueError(f"host {rest!r} is not a valid inventory host name")
        return Placement(kind="host", name=rest)
    if kind in ("vm", "td"):
        return Placement(kind=kind, name=_check_name(rest, "guest"))  # type: ignore[arg-type]
    if kind == "pod":
        runtime, _, inside = rest.partition("@")
        return Placement(
            kind="pod",
            name=_check_name(runtime, "runtime class"),
            inside=_check_guest_ref(inside) if inside else None,
        )
    raise ValueError(f"unknown placement kind {kind!r}: expected one of {', '.join(KINDS)}")


def _parse_resources(value: object) -> Resources:
    if not isinstance(value, dict):
        raise ValueError("resources must be a mapping with requests and/or limits")
    unknown = set(value) - {"requests", "limits"}
    if unknown:
        raise ValueError(f"resources: unknown key {sorted(unknown)[0]!r}")
    parts: dict[str, tuple[tuple[str, str], ...]] = {}
    for part in ("requests", "limits"):
        spec = value.get(part, {})
        if not isinstance(spec, dict):
            raise ValueError(f"resources.{part} must be a mapping of cpu/memory")
        items: list[tuple[str, str]] = []
        for key, qty in spec.items():
            if key not in _RESOURCE_KEYS:
                raise ValueError(f"resources.{part}: unknown resource {key!r} (cpu, memory)")
            is_number = isinstance(qty, int | float) and not isinstance(qty, bool)
            qty_text = str(qty) if is_number else qty
            if not isinstance(qty_text, str) or not _QUANTITY.match(qty_text):
                raise ValueError(f"resources.{part}.{key}: {qty!r} is not a quantity")
            items.append((key, qty_text))
        parts[part] = tuple(items)
    return Resources(requests=parts["requests"], limits=parts["limits"])


_MAPPING_KEYS = {
    "host": {"kind", "node"},
    "vm": {"kind", "name"},
    "td": {"kind", "name"},
    "pod": {"kind", "runtime_class", "cluster", "node", "resources", "inside"},
}


def parse_placement(value: object) -> Placement:
    """Turn a shorthand or mapping into a Placement; ValueError says what is wrong."""
    if isinstance(value, Placement):
        return value
    if isinstance(value, str):
        return parse_shorthand(value)
    if not isinstance(value, dict):
        raise ValueError("a placement is a string like 'td:td0' or a mapping with 'kind'")
    kind = value.get("kind")
    if kind not in _MAPPING_KEYS:
        raise ValueError(f"placement kind must be one of {', '.join(KINDS)}, not {kind!r}")
    unknown = set(value) - _MAPPING_KEYS[kind]
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r} for a {kind} placement")
    if kind == "host":
        node = value.get("node")
        if node is not None and (not isinstance(node, str) or not _HOSTNAME.match(node)):
            raise ValueError(f"host node {node!r} is not a valid inventory host name")
        return Placement(kind="host", name=node)
    if kind in ("vm", "td"):
        if "name" not in value:
            raise ValueError(f"a {kind} placement needs a guest 'name'")
        return Placement(kind=kind, name=_check_name(value["name"], "guest"))
    if "runtime_class" not in value:
        raise ValueError("a pod placement needs 'runtime_class'")
    inside = value.get("inside")
    if inside is not None and not isinstance(inside, str):
        raise ValueError("inside must be a string like 'td:td0'")
    node = value.get("node")
    if node is not None and (not isinstance(node, str) or not _HOSTNAME.match(node)):
        raise ValueError(f"node {node!r} is not a valid node name")
    cluster = value.get("cluster")
    return Placement(
        kind="pod",
        name=_check_name(value["runtime_class"], "runtime class"),
        node=node,
        cluster=None if cluster is None else _check_name(cluster, "cluster"),
        inside=None if inside is None else _check_guest_ref(inside),
        resources=None if "resources" not in value else _parse_resources(value["resources"]),
    )
