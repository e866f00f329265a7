"""The seed matrices: their cells, their copies in full.yml, and bad pod input.

full.yml carries the cells of seed-000.yml and seed-003.yml instead of including the
files: a matrix stays one self-contained document (every error names one file and line,
run.json records one file), and this test keeps the copies identical.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from cvmharness.errors import InputError
from cvmharness.matrix import load_matrix, parse_matrix
from cvmharness.yamlsrc import load_located

SEEDS = ("seed-000", "seed-003")


def _cells(root: Path, name: str) -> dict[str, dict[str, object]]:
    matrix = load_matrix(name, root)
    return {c.cell_id: dataclasses.asdict(c) for c in matrix.cells}


@pytest.mark.parametrize("seed", SEEDS)
def test_full_matrix_carries_the_seed_cells_unchanged(root: Path, seed: str) -> None:
    seed_cells = _cells(root, seed)
    full_cells = _cells(root, "full")
    assert seed_cells
    for cell_id, cell in seed_cells.items():
        assert cell_id in full_cells, f"{cell_id} of {seed}.yml is missing in full.yml"
        assert full_cells[cell_id] == cell, f"{cell_id} differs between {seed}.yml and full.yml"


def test_seed_000_cells(root: Path) -> None:
    matrix = load_matrix("seed-000", root)
    assert [c.scenario for c in matrix.cells] == [
        "host-local", "host-to-td", "kata-to-kata-tdx", "td-local", "k3s-in-td"]
    for cell in matrix.cells:
        assert (cell.params["threads"], cell.params["connections"],
                cell.params["duration"]) == (4, 100, 30.0)
    kata = next(c for c in matrix.cells if c.scenario == "kata-to-kata-tdx")
    assert (kata.client.runtime_class, kata.server.runtime_class, kata.via) == (
        "kata-qemu", "kata-qemu-tdx", "clusterip")
    in_td = next(c for c in matrix.cells if c.scenario == "k3s-in-td")
    assert in_td.server.inside == "td:td0" and in_td.server.runtime_class == "runc"


def test_seed_003_cells(root: Path) -> None:
    matrix = load_matrix("seed-003", root)
    assert len(matrix.cells) == 8
    for cell in matrix.cells:
        assert cell.params["connections"] == 20000 and cell.params["duration"] == 180.0
        assert cell.params["threads"] in (30, 120)
        assert cell.cooldown_s == 180.0 and cell.repetitions == 3
        assert cell.client.kind == "host" and cell.client.name == "client1"
        if cell.server.kind == "pod":
            assert cell.via == "nodeport"
    limited = [c for c in matrix.cells if c.scenario.endswith("-limited")]
    assert {c.server.runtime_class for c in limited} == {"runc", "kata-qemu"}
    for cell in limited:
        assert cell.server.resources is not None
        assert cell.server.resources.to_dict() == {
            "requests": {"cpu": "1", "memory": "1Gi"},
            "limits": {"cpu": "60", "memory": "100Gi"}}


def test_seed_003_dry_run_on_local_skips_pod_cells_with_the_reason(root: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cvmharness.cli", "bench", "--matrix", "seed-003",
         "--dry-run", "--lab", "local"],
        cwd=root, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "8 cells (0 to run, 8 skipped)" in lines[-1]
    pod_whys = [lines[i + 1] for i, line in enumerate(lines)
                if line.lstrip().startswith("skip s003-") and "-> pod:" in line]
    assert len(pod_whys) == 6
    for why in pod_whys:
        assert ("server pod:" in why and "lab 'local' declares no Kubernetes cluster "
                "(cvmharness_clusters in inventory/local.yml)" in why), why


POD_MATRIX = """\
name: pods
workloads:
  http: {tool: wrk, threads: 1, connections: 1, duration: 1s}
scenarios:
  - id: a
    client: pod:kata-qemu
    server:
      kind: pod
      runtime_class: kata-qemu-tdx
      resources: {requests: {cpu: "1", memory: 1Gi}, limits: {cpu: "60", memory: 100Gi}}
    via: clusterip
"""


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("via: clusterip", "via: loadbalancer",
     "pods.yml:11: scenarios[0].via: Input should be 'pod-ip', 'clusterip', 'headless' or "
     "'nodeport'"),
    ("memory: 100Gi}", "memory: lots}",
     "pods.yml:7: scenarios[0].server: resources.limits.memory: 'lots' is not a quantity"),
    ("runtime_class: kata-qemu-tdx", "runtime_class: Kata_TDX",
     "pods.yml:7: scenarios[0].server: runtime class 'Kata_TDX' is not a valid name"),
    ("client: pod:kata-qemu", "client: pod:kata-qemu@vm0",
     "pods.yml:6: scenarios[0].client: '@vm0': a cluster can run inside 'vm:NAME' or "
     "'td:NAME'"),
    ("      runtime_class: kata-qemu-tdx\n", "      runtime_class: kata-qemu-tdx\n      gpu: 1\n",
     "pods.yml:7: scenarios[0].server: unknown key 'gpu' for a pod placement"),
])
def test_bad_pod_input_is_one_line_naming_file_line_field(old: str, new: str,
                                                          expected: str) -> None:
    text = POD_MATRIX.replace(old, new)
    assert text != POD_MATRIX
    with pytest.raises(InputError) as caught:
        parse_matrix(load_located(text, "pods.yml"))
    lines = caught.value.lines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(expected), lines[0]
    assert "\n" not in lines[0]


def test_via_on_a_host_server_is_rejected_with_its_line() -> None:
    text = POD_MATRIX.replace("""    server:
      kind: pod
      runtime_class: kata-qemu-tdx
      resources: {requests: {cpu: "1", memory: 1Gi}, limits: {cpu: "60", memory: 100Gi}}
""", "    server: host\n")
    with pytest.raises(InputError) as caught:
        parse_matrix(load_located(text, "pods.yml"))
    assert caught.value.lines() == [
        "pods.yml:5: scenarios[0]: via 'clusterip' applies only to a pod server"]
