from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cvmharness.durations import format_duration, parse_duration
from cvmharness.errors import InputError
from cvmharness.matrix import load_matrix, matrix_from_resolved, parse_matrix
from cvmharness.placement import parse_placement
from cvmharness.yamlsrc import load_located

GOOD = """\
name: t
defaults: {repetitions: 2, warmup: 1s, cooldown: 0s}
workloads:
  http: {tool: wrk, threads: 2, connections: 10, duration: 5s}
scenarios:
  - {id: a, client: host, server: host}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(InputError) as info:
        parse_matrix(load_located(textwrap.dedent(text), "m.yml"))
    return info.value.lines()


def test_good_matrix_expands_to_cells() -> None:
    matrix = parse_matrix(load_located(GOOD, "m.yml"))
    assert [c.cell_id for c in matrix.cells] == ["a.http"]
    cell = matrix.cells[0]
    assert cell.repetitions == 2
    assert cell.warmup_s == 1.0 and cell.cooldown_s == 0.0
    assert cell.params["duration"] == 5.0 and cell.params["timeout"] == 2.0
    assert cell.workload_seconds() == 6.0


def test_sweep_is_a_cartesian_product_over_workload_fields() -> None:
    text = GOOD + "sweep: {connections: [10, 100], threads: [1, 2]}\n"
    ids = [c.cell_id for c in parse_matrix(load_located(text, "m.yml")).cells]
    assert ids == [
        "a.http.connections-10.threads-1",
        "a.http.connections-10.threads-2",
        "a.http.connections-100.threads-1",
        "a.http.connections-100.threads-2",
    ]


def test_scenario_overrides_and_workload_selection() -> None:
    text = GOOD.replace(
        "  - {id: a, client: host, server: host}",
        "  - {id: a, client: host, server: host, repetitions: 7, cooldown: 1m}\n"
        "  - {id: b, client: host, server: td:td0, workloads: [http]}",
    )
    cells = parse_matrix(load_located(text, "m.yml")).cells
    assert cells[0].repetitions == 7 and cells[0].cooldown_s == 60.0
    assert cells[1].server.kind == "td" and cells[1].server.name == "td0"


BAD = [
    ("name: t\n", "m.yml:1: workloads: required field is missing"),
    ("- just a list\n", "m.yml:1: a matrix is a mapping"),
    ("name: [unclosed\n", "not valid YAML"),
    (GOOD + "extra: 1\n", "m.yml:7: extra: unknown field 'extra'"),
    (GOOD.replace("threads: 2", "threads: 0"), "m.yml:4: workloads.http.threads:"),
    (GOOD.replace("connections: 10", "connections: 1"),
     "m.yml:4: workloads.http: connections (1) < threads (2)"),
    (GOOD.replace("tool: wrk", "tool: wrkk"), "m.yml:4: workloads.http: unknown tool 'wrkk'"),
    (GOOD.replace("duration: 5s", "duration: 5x"), "'5x' is not a duration"),
    (GOOD.replace("duration: 5s", "duration: 1500ms"), "wrk takes whole seconds"),
    (GOOD.replace("repetitions: 2", "repetitions: 0"), "m.yml:2: defaults.repetitions:"),
    (GOOD.replace("warmup: 1s", "warmup: -1s"), "defaults.warmup: '-1s' is not a duration"),
    (GOOD.replace("threads: 2", 'threads: "2"'),
     "workloads.http.threads: Input should be a valid integer"),
    (GOOD.replace("client: host", "client: tdx:foo"),
     "m.yml:6: scenarios[0].client: unknown placement kind 'tdx'"),
    (GOOD.replace("client: host", 'client: "td:"'), "scenarios[0].client: unknown placement"),
    (GOOD.replace("client: host", "client: td:TD_0"), "guest 'TD_0' is not a valid name"),
    (GOOD.replace("client: host", "client: {kind: pod, runtime_class: kata, cpu: 2}"),
     "unknown key 'cpu' for a pod placement"),
    (GOOD.replace("client: host", "client: {kind: pod, runtime_class: kata, "
                  "resources: {limits: {cpu: lots}}}"),
     "resources.limits.cpu: 'lots' is not a quantity"),
    (GOOD.replace("server: host}", "server: host, via: clusterip}"),
     "scenarios[0]: via 'clusterip' applies only to a pod server"),
    (GOOD.replace("server: host}", "server: pod:runc, via: tunnel}"), "scenarios[0].via:"),
    (GOOD.replace("server: host}", "server: host, workloads: [htp]}"),
     "m.yml:6: scenarios[0].workloads[0]: unknown workload 'htp' (defined: http)"),
    (GOOD + "  - {id: a, client: host, server: host}\n",
     "m.yml:7: scenarios[1].id: duplicate id 'a' (first used by scenarios[0])"),
    (GOOD.replace("id: a", "id: 'a.b'"), "scenarios[0].id: 'a.b' is not a valid id"),
    (GOOD + "sweep: {nope: [1]}\n", "m.yml:7: sweep.nope: no workload has a field 'nope'"),
    (GOOD + "sweep: {connections: [100, 1]}\n",
     "m.yml:7: sweep.connections[1]: connections (1) < threads (2)"),
    (GOOD + "sweep: {connections: []}\n", "sweep.connections: a sweep needs at least one value"),
    (GOOD.replace("scenarios:\n  - {id: a, client: host, server: host}\n", "scenarios: []\n"),
     "scenarios: List should have at least 1 item"),
    (GOOD.replace("name: t", "name: t\nname: u"), "m.yml:2: name: duplicate key"),
    (GOOD.replace("path_unused", "x").replace("duration: 5s}", "duration: 5s, path: nope}"),
     "workloads.http.path: 'nope' must start with '/'"),
]


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_matrix_is_one_line_per_problem(text: str, expected: str) -> None:
    lines = problems(text)
    assert any(expected in line for line in lines), lines
    assert all("\n" not in line for line in lines)


def test_all_problems_are_reported_together() -> None:
    text = GOOD.replace("threads: 2", "threads: 0").replace(
        "server: host}", "server: host, workloads: [htp], bogus: 1}")
    lines = problems(text)
    assert len(lines) == 3, lines
    assert [ln.split(":")[1] for ln in lines] == ["4", "6", "6"]


def test_shipped_matrices_are_valid(root: Path) -> None:
    smoke = load_matrix("smoke", root)
    full = load_matrix("full", root)
    assert any(c.cell_id == "host-local.http" for c in smoke.cells)
    scenarios = {c.scenario for c in full.cells}
    for seed_scenario in ("host-local", "host-to-td", "kata-to-kata-tdx", "td-local",
                          "k3s-in-td", "s003-host", "s003-runc", "s003-runc-limited",
                          "s003-kata-limited"):
        assert seed_scenario in scenarios
    s003 = next(c for c in full.cells if c.cell_id == "s003-kata-limited.http-c20k-t120")
    assert s003.params["threads"] == 120 and s003.params["connections"] == 20000
    assert s003.params["duration"] == 180.0 and s003.cooldown_s == 180.0
    assert s003.server.resources is not None
    assert dict(s003.server.resources.limits) == {"cpu": "60", "memory": "100Gi"}


def test_resolved_matrix_round_trips(root: Path) -> None:
    full = load_matrix("full", root)
    again = matrix_from_resolved(full.resolved(), "run.json")
    assert again.cells == full.cells


def test_unknown_matrix_name_is_an_input_error(root: Path) -> None:
    with pytest.raises(InputError) as info:
        load_matrix("no-such-matrix", root)
    assert "no such matrix" in info.value.lines()[0]


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30.0), ("3m", 180.0), ("1h30m", 5400.0), ("500ms", 0.5), (5, 5.0), ("0s", 0.0),
])
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5 s", "s", "1d", "-3s", True, None, "3m30"])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 0.5, 30, 180, 3725)] == [
        "0s", "500ms", "30s", "3m", "1h2m5s"]


def test_placement_forms_agree() -> None:
    short = parse_placement("pod:kata-qemu-tdx@td:td0")
    assert (short.kind, short.runtime_class, short.inside) == ("pod", "kata-qemu-tdx", "td:td0")
    mapped = parse_placement({"kind": "pod", "runtime_class": "runc", "node": "worker1",
                              "resources": {"limits": {"cpu": 60, "memory": "100Gi"}}})
    assert mapped.node == "worker1"
    assert parse_placement(mapped.to_spec()) == mapped
    assert parse_placement("host:node3").name == "node3"
    assert parse_placement({"kind": "td", "name": "td0"}) == parse_placement("td:td0")
