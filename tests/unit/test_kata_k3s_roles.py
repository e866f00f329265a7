"""The k3s, kata and kata_runtimeclasses roles' templates and filters, rendered for real.

The containerd template is the role's own Jinja file with the role's defaults; k3s's
`{{ template "base" . }}` is then replaced by what k3s's base renders (tests/data/k3s) and
the result parsed as TOML, as containerd does. RuntimeClass manifests are validated
against the Kubernetes schema in strict mode.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import jinja2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
BASE = '{{ template "base" . }}'
KUBERNETES_VERSION = "1.34.0"  # the version tests/k8senv builds


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem + "_filters", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


KATA = _load(ROOT / "roles" / "kata" / "filter_plugins" / "kata.py")
K3S = _load(ROOT / "roles" / "k3s" / "filter_plugins" / "k3s.py")


def _env(role: str) -> jinja2.Environment:
    # Ansible's template settings: trim_blocks on, undefined variables are errors.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ROOT / "roles" / role / "templates"),
        trim_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["to_json"] = __import__("json").dumps
    return env


def _defaults(role: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(
        (ROOT / "roles" / role / "defaults" / "main.yml").read_text()
    )
    return data


def kata_vars(config_version: int, **overrides: Any) -> dict[str, Any]:
    """The kata role's variables as its tasks compute them (defaults, vars, set_fact)."""
    values = {**_defaults("kata"), **overrides}
    internal: dict[str, Any] = yaml.safe_load(
        (ROOT / "roles" / "kata" / "vars" / "main.yml").read_text()
    )
    values.update(
        ansible_managed="Ansible managed",
        _kata_prefix=internal["_kata_prefix"],
        _kata_shim_binary=f"{internal['_kata_prefix']}/bin/containerd-shim-kata-v2",
        _kata_template_marker=internal["_kata_template_marker"],
        _kata_handlers=[f"kata-{s}" for s in values["kata_shims"]],
        _kata_expected_runtimes=KATA.kata_expected_runtimes(
            values["kata_shims"], values["kata_config_dir"]
        ),
        _kata_config_version=config_version,
    )
    return values


def render_containerd_template(config_version: int, **overrides: Any) -> str:
    return (
        _env("kata")
        .get_template("containerd-kata.toml.tmpl.j2")
        .render(kata_vars(config_version, **overrides))
    )


def k3s_render(template: str, config_version: int) -> str:
    """What k3s writes to config.toml: the template with its base substituted."""
    assert template.count(BASE) == 1, "the template must include k3s's base exactly once"
    base = (DATA / "k3s" / f"base-v{config_version}.toml").read_text()
    return template.replace(BASE, base)


@pytest.mark.parametrize(
    ("config_version", "plugin"),
    [(3, "io.containerd.cri.v1.runtime"), (2, "io.containerd.grpc.v1.cri")],
)
def test_containerd_template_registers_both_shims(config_version: int, plugin: str) -> None:
    template = render_containerd_template(config_version)
    assert template.startswith("# cvmharness kata: runtime handlers for Kata Containers 3.21.0")
    config = tomllib.loads(k3s_render(template, config_version))
    assert config["version"] == config_version
    runtimes = config["plugins"][plugin]["containerd"]["runtimes"]
    assert runtimes["runc"]["runtime_type"] == "io.containerd.runc.v2"  # the base survives
    for shim in ("qemu", "qemu-tdx"):
        entry = runtimes[f"kata-{shim}"]
        assert entry["runtime_type"] == f"io.containerd.kata-{shim}.v2"
        assert entry["runtime_path"] == "/opt/kata/bin/containerd-shim-kata-v2"
        assert entry["privileged_without_host_devices"] is True
        assert entry["pod_annotations"] == ["io.katacontainers.*"]
        assert entry["options"]["ConfigPath"] == (
            f"/etc/kata-containers/cvmharness/configuration-{shim}.toml"
        )
        assert "snapshotter" not in entry


def test_block_device_rootfs_sets_the_block_snapshotter() -> None:
    template = render_containerd_template(3, kata_container_rootfs="block-device")
    runtimes = tomllib.loads(k3s_render(template, 3))["plugins"]["io.containerd.cri.v1.runtime"][
        "containerd"
    ]["runtimes"]
    assert runtimes["kata-qemu"]["snapshotter"] == "devmapper"
    assert runtimes["kata-qemu-tdx"]["snapshotter"] == "devmapper"


def test_check_names_what_the_rendered_config_lacks() -> None:
    expected = KATA.kata_expected_runtimes(["qemu", "qemu-tdx"], "/etc/kata-containers/cvmharness")
    rendered = k3s_render(render_containerd_template(3), 3)
    assert KATA.kata_containerd_missing(rendered, expected) == []
    base_only = (DATA / "k3s" / "base-v3.toml").read_text()
    assert KATA.kata_containerd_missing(base_only, expected) == [
        "no runtime 'kata-qemu'",
        "no runtime 'kata-qemu-tdx'",
    ]
    # A v3 template that k3s rendered as v2 (wrong file name for its containerd).
    v2_only = k3s_render(render_containerd_template(2), 2)
    assert KATA.kata_containerd_missing(v2_only, expected) == []
    wrong_path = rendered.replace("configuration-qemu.toml", "configuration.toml")
    assert KATA.kata_containerd_missing(wrong_path, expected) == [
        "runtime 'kata-qemu' has config_path '/etc/kata-containers/cvmharness/configuration.toml', "
        "not '/etc/kata-containers/cvmharness/configuration-qemu.toml'"
    ]
    assert KATA.kata_containerd_missing("version = 3\n[broken", expected)[0].startswith(
        "the containerd config is not valid TOML"
    )


@pytest.mark.parametrize(
    ("k3s_version", "config_version"),
    [
        ("v1.30.9+k3s1", 2),
        ("v1.31.5+k3s1", 2),
        ("v1.31.6+k3s1", 3),
        ("v1.32.0+k3s1", 2),
        ("v1.32.1+k3s1", 2),
        ("v1.32.2+k3s1", 3),
        ("v1.33.5+k3s1", 3),
    ],
)
def test_template_file_follows_the_k3s_containerd(k3s_version: str, config_version: int) -> None:
    assert KATA.kata_containerd_config_version(k3s_version) == config_version


@pytest.mark.parametrize("rootfs", ["shared-fs", "block-device"])
def test_shim_configurations(rootfs: str) -> None:
    values = kata_vars(3, kata_container_rootfs=rootfs, kata_tdx_default_memory_mib=4096)
    template = _env("kata").get_template("configuration.toml.j2")
    qemu = tomllib.loads(template.render({**values, "_kata_shim": "qemu"}))["hypervisor"]["qemu"]
    tdx = tomllib.loads(template.render({**values, "_kata_shim": "qemu-tdx"}))["hypervisor"]["qemu"]
    assert qemu["confidential_guest"] is False and qemu["firmware"] == ""
    assert tdx["confidential_guest"] is True
    assert tdx["firmware"] == "/opt/kata/share/ovmf/OVMF.inteltdx.fd"
    assert tdx["kernel"].endswith("vmlinuz-confidential.container")
    assert (qemu["default_memory"], tdx["default_memory"]) == (2048, 4096)
    assert qemu["default_vcpus"] == tdx["default_vcpus"] == 1
    assert qemu["disable_block_device_use"] is (rootfs == "shared-fs")
    assert qemu["shared_fs"] == "virtio-fs"


def _virt(case: str, libvirt: bool = True) -> dict[str, Any]:
    """What roles/libvirt_host's probe module reports, from tests/data/tdx signals."""
    directory = DATA / "tdx" / case

    def read(name: str) -> str | None:
        path = directory / name
        return path.read_text().strip() if path.exists() else None

    dmesg = read("dmesg")
    flags = (read("cpuinfo_flags") or "").split()
    return {
        "kvm": {"dev_kvm": True, "vendor_modules": ["kvm_intel"]},
        "tdx": {
            "kvm_intel_tdx_param": read("kvm_intel_tdx"),
            "cpuinfo_tdx_host_platform": "tdx_host_platform" in flags,
            "dmesg_lines": [line for line in (dmesg or "").splitlines() if "tdx" in line.lower()],
            "domcapabilities_kvm": read("domcapabilities.xml") if libvirt else None,
        },
        "libvirt_version": "libvirtd (libvirt) 10.0.0" if libvirt else None,
    }


def test_tdx_refusal_reuses_the_harness_reading() -> None:
    assert KATA.kata_tdx_reasons(_virt("host_ready")) == []
    # Kata starts QEMU itself: without libvirt its domain capabilities do not count.
    assert KATA.kata_tdx_reasons(_virt("host_ready", libvirt=False)) == []
    absent = KATA.kata_tdx_reasons(_virt("host_absent_pvm", libvirt=False))
    assert any("kvm_intel" in r for r in absent), absent
    assert any("tdx_host_platform" in r for r in absent), absent
    failed = KATA.kata_tdx_reasons(_virt("host_module_failed"))
    assert any("TDX module failed" in r for r in failed), failed


def runtime_classes(**overrides: Any) -> list[dict[str, Any]]:
    values = {**_defaults("kata_runtimeclasses"), **overrides}
    template = _env("kata_runtimeclasses").get_template("runtimeclass.yml.j2")
    return [
        yaml.safe_load(template.render({**values, "_kata_rc_shim": shim}))
        for shim in values["kata_runtimeclasses_shims"]
    ]


def test_runtime_classes_are_valid_kubernetes_objects() -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate"
    )
    qemu, tdx = runtime_classes()
    for manifest in (qemu, tdx):
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    assert (qemu["metadata"]["name"], qemu["handler"]) == ("kata-qemu", "kata-qemu")
    assert (tdx["metadata"]["name"], tdx["handler"]) == ("kata-qemu-tdx", "kata-qemu-tdx")
    assert qemu["overhead"]["podFixed"] == {"cpu": "250m", "memory": "320Mi"}
    assert tdx["overhead"]["podFixed"] == {"cpu": "1", "memory": "2048Mi"}
    assert qemu["scheduling"]["nodeSelector"] == {"katacontainers.io/kata-runtime": "true"}
    assert tdx["scheduling"]["nodeSelector"] == {
        "katacontainers.io/kata-runtime": "true",
        "intel.feature.node.kubernetes.io/tdx": "true",
    }


def test_strict_validation_rejects_a_misspelt_field() -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate"
    )
    manifest = runtime_classes()[0]
    manifest["overhead"]["podfixed"] = manifest["overhead"].pop("podFixed")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_k3s_version_and_kubeconfig_filters() -> None:
    assert K3S.k3s_installed_version(
        "k3s version v1.33.5+k3s1 (6f1eb4c5)\ngo version go1.24\n"
    ) == ("v1.33.5+k3s1")
    assert K3S.k3s_installed_version("") == ""
    sums = "abc123  k3s\nDEF456  k3s-airgap-images-amd64.tar.zst\n\n"
    assert K3S.k3s_checksums(sums) == {"k3s": "abc123", "k3s-airgap-images-amd64.tar.zst": "def456"}
    assert K3S.k3s_checksums(None) == {}
    assert K3S.k3s_api_url("10.0.0.5", 6443) == "https://10.0.0.5:6443"
    assert K3S.k3s_api_url("fd00::5", "6443") == "https://[fd00::5]:6443"
    admin = (
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n"
        "    certificate-authority-data: Q0E=\n"
        "    server: https://127.0.0.1:6443\n  name: default\n"
        "contexts:\n- context: {cluster: default, user: default}\n  name: default\n"
        "current-context: default\nusers:\n- name: default\n  user: {client-key-data: S0VZ}\n"
    )
    out = yaml.safe_load(K3S.k3s_controller_kubeconfig(admin, "https://10.0.0.5:6443"))
    assert out["clusters"][0]["cluster"] == {
        "certificate-authority-data": "Q0E=",
        "server": "https://10.0.0.5:6443",
    }
    assert out["users"] == yaml.safe_load(admin)["users"]
    assert re.match(r"^apiVersion: v1\n", K3S.k3s_controller_kubeconfig(admin, "https://h:1"))


CLUSTERS = _load(ROOT / "playbooks" / "filter_plugins" / "cvmharness_clusters.py")


def test_cluster_plan_follows_the_lab() -> None:
    hostvars = {
        "tdx1": {
            "cvmharness_clusters": [
                {"name": "k3s", "runtime_classes": ["runc", "kata-qemu", "kata-qemu-tdx"]},
                {"name": "intd", "runtime_classes": ["runc"], "inside": "td0"},
            ],
            "ansible_facts": {"hostname": "tdx1-node"},
        },
        "client1": {
            "cvmharness_clusters": [],
            "k3s_node_role": "agent",
            "k3s_cluster_name": "k3s",
            "k3s_config": {"node-name": "worker1"},
        },
        "local": {"cvmharness_clusters": []},
        "td0": {},
    }
    plan = CLUSTERS.cluster_plan(hostvars, list(hostvars))
    assert plan == {
        "tdx1": {"cluster": "k3s", "role": "server", "shims": ["qemu", "qemu-tdx"]},
        "td0": {"cluster": "intd", "role": "server", "shims": []},
        "client1": {"cluster": "k3s", "role": "agent", "shims": ["qemu", "qemu-tdx"]},
    }
    assert CLUSTERS.cluster_nodes(plan, "k3s", hostvars) == [
        {"name": "worker1", "tdx": True},
        {"name": "tdx1-node", "tdx": True},
    ]
    assert CLUSTERS.cluster_plan({"local": {"cvmharness_clusters": []}}, ["local"]) == {}


def test_cluster_plan_refuses_two_clusters_on_one_node() -> None:
    from ansible.errors import AnsibleFilterError

    hostvars = {"h": {"cvmharness_clusters": [{"name": "a"}, {"name": "b"}]}}
    with pytest.raises(AnsibleFilterError, match="one k3s per node"):
        CLUSTERS.cluster_plan(hostvars, ["h"])
    with pytest.raises(AnsibleFilterError, match="unknown runtime classes"):
        CLUSTERS.cluster_plan(
            {"h": {"cvmharness_clusters": [{"name": "a", "runtime_classes": ["gvisor"]}]}}, ["h"]
        )
