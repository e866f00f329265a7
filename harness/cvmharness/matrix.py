"""The experiment matrix: typed, strictly validated, expanded into cells.

A matrix is loaded from YAML with line numbers kept, validated as a whole (every problem
reported, each as one line naming file, line, field path and what is wrong), and only then
expanded: scenarios x workloads x sweep points, each cell run ``repetitions`` times.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from cvmharness.durations import parse_duration
from cvmharness.errors import InputError, Problem
from cvmharness.placement import Placement, parse_placement
from cvmharness.yamlsrc import Located, join_path, load_located_file

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


def _duration(value: object) -> float:
    return parse_duration(value)


def _placement(value: object) -> Placement:
    return parse_placement(value)


Seconds = Annotated[float, BeforeValidator(_duration)]
PlacementField = Annotated[
    Placement, BeforeValidator(_placement), PlainSerializer(lambda p: p.to_spec())
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class WrkWorkload(_Strict):
    """wrk -> nginx over HTTP/1.1 keep-alive, the seeds' main experiment."""

    tool: Literal["wrk"]
    threads: int = Field(ge=1, le=1024)
    connections: int = Field(ge=1, le=1_000_000)
    duration: Seconds = Field(gt=0)
    path: str = "/"
    port: int | None = Field(default=None, ge=1, le=65535)
    timeout: Seconds = Field(default=2.0, gt=0)
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    """Socket errors + non-2xx/3xx per request above which a repetition is invalid."""
    count_tolerance: float = Field(default=0.01, ge=0, le=1)
    """Allowed relative gap between wrk's and nginx's request counts (plus one in-flight
    request per connection, which nginx serves but wrk stops waiting for)."""

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or any(c.isspace() for c in value):
            raise ValueError(f"{value!r} must start with '/' and contain no spaces")
        return value

    @field_validator("duration", "timeout")
    @classmethod
    def _whole_seconds(cls, value: float) -> float:
        if value < 1 or value != int(value):
            raise ValueError(f"wrk takes whole seconds (at least 1s), not {value}s")
        return value

    @model_validator(mode="after")
    def _connections(self) -> WrkWorkload:
        if self.connections < self.threads:
            raise ValueError(
                f"connections ({self.connections}) < threads ({self.threads}): "
                "wrk needs at least one connection per thread"
            )
        return self


class Iperf3Workload(_Strict):
    """iperf3 throughput between client and server (seeds 001 and 004)."""

    tool: Literal["iperf3"]
    protocol: Literal["tcp", "udp"] = "tcp"
    streams: int = Field(default=1, ge=1, le=128)
    duration: Seconds = Field(gt=0)
    bitrate: str | None = None
    length: int | None = Field(default=None, ge=1)
    mtu: int | None = Field(default=None, ge=68, le=65535)
    buffer: int | None = Field(default=None, ge=1)


class NetperfWorkload(_Strict):
    """netperf request/response or stream tests (seed 001, K-Bench dp_netperf)."""

    tool: Literal["netperf"]
    test: Literal["TCP_STREAM", "TCP_RR", "TCP_CRR", "UDP_STREAM", "UDP_RR"]
    duration: Seconds = Field(gt=0)


class FioWorkload(_Strict):
    """fio on the placement's storage (seed 001: four asynchronous access patterns)."""

    tool: Literal["fio"]
    rw: Literal["read", "write", "randread", "randwrite", "rw", "randrw"]
    rwmixread: int | None = Field(default=None, ge=0, le=100)
    block_size: str = "4k"
    iodepth: int = Field(default=32, ge=1, le=4096)
    size: str = "1G"
    duration: Seconds = Field(gt=0)


class KubeApiWorkload(_Strict):
    """Kubernetes API latency of create/update/delete/scale (seed 001, K-Bench default)."""

    tool: Literal["kube-api"]
    objects: list[Literal["pods", "services", "deployments"]] = Field(min_length=1)
    operations: list[Literal["create", "update", "delete", "scale", "list"]] = Field(
        min_length=1
    )
    count: int = Field(default=10, ge=1, le=10_000)


class BootWorkload(_Strict):
    """Time from start request to a ready workload (seed 002: Kata's one edge over VMs)."""

    tool: Literal["boot"]
    count: int = Field(default=5, ge=1, le=1000)


Workload = Annotated[
    WrkWorkload | Iperf3Workload | NetperfWorkload | FioWorkload | KubeApiWorkload
    | BootWorkload,
    Field(discriminator="tool"),
]
WORKLOAD_TYPES: dict[str, type[BaseModel]] = {
    "wrk": WrkWorkload,
    "iperf3": Iperf3Workload,
    "netperf": NetperfWorkload,
    "fio": FioWorkload,
    "kube-api": KubeApiWorkload,
    "boot": BootWorkload,
}


class Defaults(_Strict):
    repetitions: int = Field(default=5, ge=1, le=1000)
    warmup: Seconds = Field(default=5.0, ge=0)
    cooldown: Seconds = Field(default=10.0, ge=0)


class Scenario(_Strict):
    id: str
    description: str = ""
    client: PlacementField
    server: PlacementField
    via: Literal["pod-ip", "clusterip", "headless", "nodeport"] | None = None
    workloads: list[str] | None = Field(default=None, min_length=1)
    repetitions: int | None = Field(default=None, ge=1, le=1000)
    warmup: Seconds | None = Field(default=None, ge=0)
    cooldown: Seconds | None = Field(default=None, ge=0)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(f"{value!r} is not a valid id (letters, digits, '-', '_')")
        return value

    @model_validator(mode="after")
    def _via(self) -> Scenario:
        if self.via is not None and self.server.kind != "pod":
            raise ValueError(f"via {self.via!r} applies only to a pod server")
        return self


class MatrixModel(_Strict):
    name: str
    description: str = ""
    defaults: Defaults = Defaults()
    workloads: dict[str, Workload] = Field(min_length=1)
    scenarios: list[Scenario] = Field(min_length=1)
    sweep: dict[str, list[Any]] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(f"{value!r} is not a valid name (letters, digits, '-', '_')")
        return value


@dataclass(frozen=True)
class Cell:
    """One scenario x workload x sweep point: the unit that is repeated and compared."""

    cell_id: str
    scenario: str
    client: Placement
    server: Placement
    via: str | None
    workload: str
    tool: str
    params: dict[str, Any]
    repetitions: int
    warmup_s: float
    cooldown_s: float

    def workload_seconds(self) -> float:
        """Seconds one repetition spends in the workload itself (warm-up, run, cool-down)."""
        run = float(self.params.get("duration", 0.0))
        return self.warmup_s + run + self.cooldown_s


@dataclass(frozen=True)
class Matrix:
    model: MatrixModel
    source: str
    cells: tuple[Cell, ...]

    @property
    def name(self) -> str:
        return self.model.name

    def resolved(self) -> dict[str, Any]:
        """The matrix after defaults and validation, as recorded in run.json."""
        return self.model.model_dump(mode="json")


def _loc_to_path(loc: Iterable[int | str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, str) and part in WORKLOAD_TYPES:
            continue  # discriminator tag pydantic inserts for tagged unions
        path = join_path(path, part)
    return path


def _message(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "union_tag_invalid":
        tag = error.get("input", {}).get("tool") if isinstance(error.get("input"), dict) else None
        return f"unknown tool {tag!r}: expected one of {', '.join(WORKLOAD_TYPES)}"
    if kind == "union_tag_not_found":
        return f"'tool' is required (one of {', '.join(WORKLOAD_TYPES)})"
    msg = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg


def _problems_from(exc: ValidationError, doc: Located) -> list[Problem]:
    problems = []
    for error in exc.errors():
        path = _loc_to_path(error["loc"])
        if error["type"] == "extra_forbidden":
            path_msg = f"unknown field '{error['loc'][-1]}'"
            problems.append(doc.problem(path, path_msg))
            continue
        problems.append(doc.problem(path, _message(error)))
    return problems


def _cross_checks(model: MatrixModel, doc: Located) -> list[Problem]:
    problems: list[Problem] = []
    for name in model.workloads:
        if not _ID.match(name):
            problems.append(doc.problem(f"workloads.{name}", "not a valid workload name"))
    for field_name, values in model.sweep.items():
        path = f"sweep.{field_name}"
        if not values:
            problems.append(doc.problem(path, "a sweep needs at least one value"))
            continue
        users = [w for w in model.workloads.values() if field_name in type(w).model_fields]
        if field_name == "tool" or not users:
            problems.append(doc.problem(path, f"no workload has a field {field_name!r} to sweep"))
            continue
        for k, value in enumerate(values):
            for workload in users:
                data = workload.model_dump()
                data[field_name] = value
                try:
                    type(workload).model_validate(data)
                except ValidationError as exc:
                    problems.append(doc.problem(f"{path}[{k}]", _message(exc.errors()[0])))
                    break
    return problems


def _sweep_points(model: MatrixModel, workload: BaseModel) -> list[dict[str, Any]]:
    fields = [f for f in model.sweep if f in type(workload).model_fields]
    if not fields:
        return [{}]
    return [dict(zip(fields, combo, strict=True))
            for combo in itertools.product(*(model.sweep[f] for f in fields))]


def _point_suffix(point: dict[str, Any]) -> str:
    return "".join(f".{k}-{v}" for k, v in point.items())


def expand(model: MatrixModel, source: str) -> Matrix:
    cells: list[Cell] = []
    for scenario in model.scenarios:
        names = scenario.workloads or list(model.workloads)
        for name in names:
            workload = model.workloads[name]
            for point in _sweep_points(model, workload):
                params_model = type(workload).model_validate({**workload.model_dump(), **point})
                params = params_model.model_dump(mode="json", exclude={"tool"})
                cells.append(Cell(
                    cell_id=f"{scenario.id}.{name}{_point_suffix(point)}",
                    scenario=scenario.id,
                    client=scenario.client,
                    server=scenario.server,
                    via=scenario.via,
                    workload=name,
                    tool=workload.tool,
                    params=params,
                    repetitions=scenario.repetitions or model.defaults.repetitions,
                    warmup_s=(scenario.warmup if scenario.warmup is not None
                              else model.defaults.warmup),
                    cooldown_s=(scenario.cooldown if scenario.cooldown is not None
                                else model.defaults.cooldown),
                ))
    return Matrix(model=model, source=source, cells=tuple(cells))


def matrix_from_resolved(resolved: dict[str, Any], source: str) -> Matrix:
    """Rebuild a matrix from run.json (``--resume``), validated again."""
    return parse_matrix(Located(data=resolved, file=source))


def parse_matrix(doc: Located) -> Matrix:
    """Validate a loaded matrix document; every problem found is in the InputError."""
    if not isinstance(doc.data, dict):
        raise InputError([doc.problem("", "a matrix is a mapping with name, workloads, scenarios")])
    problems = _raw_cross_checks(doc)
    try:
        model = MatrixModel.model_validate(doc.data)
    except ValidationError as exc:
        problems = _problems_from(exc, doc) + problems
        raise InputError(sorted(set(problems), key=_order)) from None
    problems += _cross_checks(model, doc)
    if problems:
        raise InputError(sorted(set(problems), key=_order))
    return expand(model, doc.file)


def _order(problem: Problem) -> tuple[int, str]:
    return (problem.line or 0, problem.path)


def _raw_cross_checks(doc: Located) -> list[Problem]:
    """Checks across fields, on the raw document, so they are reported together with
    type errors instead of one round later."""
    problems: list[Problem] = []
    data: dict[str, Any] = doc.data
    workloads = data.get("workloads")
    names = set(workloads) if isinstance(workloads, dict) else None
    scenarios = data.get("scenarios")
    if not isinstance(scenarios, list):
        return problems
    seen: dict[str, int] = {}
    for i, scenario in enumerate(scenarios):
        if not isinstance(scenario, dict):
            continue
        sid = scenario.get("id")
        if isinstance(sid, str):
            if sid in seen:
                problems.append(doc.problem(
                    f"scenarios[{i}].id",
                    f"duplicate id {sid!r} (first used by scenarios[{seen[sid]}])",
                ))
            else:
                seen[sid] = i
        refs = scenario.get("workloads")
        if names is not None and isinstance(refs, list):
            for j, name in enumerate(refs):
                if name not in names:
                    known = ", ".join(sorted(str(n) for n in names))
                    problems.append(doc.problem(
                        f"scenarios[{i}].workloads[{j}]",
                        f"unknown workload {name!r} (defined: {known})",
                    ))
    return problems


def resolve_matrix_path(name_or_path: str, root: Path) -> Path:
    """A matrix argument is a path, or a name under ``matrices/`` (with or without .yml)."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yml", ".yaml") or "/" in name_or_path:
        return candidate
    for suffix in (".yml", ".yaml"):
        named = root / "matrices" / f"{name_or_path}{suffix}"
        if named.exists():
            return named
    return candidate


def load_matrix(name_or_path: str, root: Path) -> Matrix:
    path = resolve_matrix_path(name_or_path, root)
    if not path.exists():
        raise InputError([Problem(
            name_or_path, "", f"no such matrix (not a file, nor a name under {root / 'matrices'})"
        )])
    return parse_matrix(load_located_file(path, display=_display(path)))


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
