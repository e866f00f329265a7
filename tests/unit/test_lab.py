from __future__ import annotations

from pathlib import Path

import pytest

from cvmharness.errors import InputError
from cvmharness.lab import load_lab

BAD_INVENTORY = """\
all:
  children:
    cvmharness_hosts:
      hosts:
        h1:
          ansible_connection: local
          nginx_bench_ports: [8080, 8080]
          cvmharness_guests:
            - {name: td0, flavor: tdx}
"""


def test_local_lab_is_this_machine(root: Path) -> None:
    lab = load_lab("local", root)
    assert lab.name == "local"
    assert list(lab.hosts) == ["localhost"]
    host = lab.primary
    assert host.is_local and host.bench_address == "127.0.0.1"
    assert host.vars.nginx_bench_ports == [8080, 8081]
    assert host.wrk_script.endswith("/share/cvmharness/wrk_json.lua")


def test_example_real_lab_declares_guests_and_clusters(root: Path) -> None:
    lab = load_lab("tdx-lab.example", root)
    assert lab.primary.name == "tdx1" and not lab.primary.is_local
    found = lab.guest("td0")
    assert found is not None and found[1].flavor == "td"
    assert [c.name for _, c in lab.clusters()] == ["k3s"]


def test_bad_inventory_names_file_line_and_field(tmp_path: Path, root: Path) -> None:
    inv = tmp_path / "bad.yml"
    inv.write_text(BAD_INVENTORY)
    with pytest.raises(InputError) as info:
        load_lab(str(inv), root)
    lines = info.value.lines()
    assert any(":9: hosts.h1.cvmharness_guests[0].flavor: Input should be 'vm' or 'td'" in ln
               for ln in lines), lines


def test_duplicate_ports_are_refused(tmp_path: Path, root: Path) -> None:
    inv = tmp_path / "bad.yml"
    inv.write_text(BAD_INVENTORY.replace("flavor: tdx", "flavor: td"))
    with pytest.raises(InputError) as info:
        load_lab(str(inv), root)
    assert any(":7: hosts.h1.nginx_bench_ports: ports must be unique" in ln
               for ln in info.value.lines())


def test_inventory_without_lab_hosts(tmp_path: Path, root: Path) -> None:
    inv = tmp_path / "empty.yml"
    inv.write_text("all:\n  hosts:\n    h1: {}\n")
    with pytest.raises(InputError) as info:
        load_lab(str(inv), root)
    assert "cvmharness_hosts: the lab declares no host in this group" in info.value.lines()[0]


def test_unknown_lab(root: Path) -> None:
    with pytest.raises(InputError) as info:
        load_lab("nowhere", root)
    assert "no such lab" in info.value.lines()[0]
