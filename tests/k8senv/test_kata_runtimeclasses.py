"""roles/kata_runtimeclasses applied for real to the loopback kube-apiserver.

The role runs through ansible-playbook (kubernetes.core.k8s on the controller) with a
kubeconfig pointing at tests/k8senv's API server; the RuntimeClasses and node labels are
read back with the official client, and a second run must change nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .env import DEFAULT_NODES, REPO_ROOT, K8sTestEnv

kubernetes = pytest.importorskip("kubernetes", reason="pip install kubernetes")
from kubernetes import client  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

pytestmark = pytest.mark.k8senv

TDX_NODE, PLAIN_NODE = DEFAULT_NODES[0].name, DEFAULT_NODES[1].name
KATA_LABEL = "katacontainers.io/kata-runtime"
TDX_LABEL = "intel.feature.node.kubernetes.io/tdx"
VERSION_ANNOTATION = "cvmharness.io/kata-version"  # read by kube.py into pod facts
KATA_VERSION = "3.21.0"

PLAYBOOK = """\
- name: Runtime classes
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - role: kata_runtimeclasses
"""


def _ansible_playbook() -> str:
    beside = Path(sys.executable).with_name("ansible-playbook")
    found = str(beside) if beside.exists() else shutil.which("ansible-playbook")
    if found is None:
        pytest.fail("ansible-playbook is not installed (pip install -e '.[test]')")
    return found


def run_role(tmp_path: Path, kubeconfig: Path, **extra: Any) -> dict[str, Any]:
    """Run the role once; the play's stats for localhost (ok, changed, failures)."""
    playbook = tmp_path / "runtimeclasses.yml"
    playbook.write_text(PLAYBOOK, encoding="utf-8")
    extra_vars = {
        "kata_runtimeclasses_kubeconfig": str(kubeconfig),
        "kata_runtimeclasses_kata_version": KATA_VERSION,
        "kata_runtimeclasses_nodes": [
            {"name": TDX_NODE, "tdx": True},
            {"name": PLAIN_NODE, "tdx": False},
        ],
        "ansible_python_interpreter": sys.executable,
        **extra,
    }
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(REPO_ROOT / "roles"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
        "NO_COLOR": "1",
    }
    done = subprocess.run(
        [_ansible_playbook(), "-i", "localhost,", "-e", json.dumps(extra_vars), str(playbook)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    stats: dict[str, Any] = json.loads(done.stdout)["stats"]["localhost"]
    return stats


@pytest.fixture(scope="module")
def node_api(k8s_api: Any) -> client.NodeV1Api:
    return client.NodeV1Api(k8s_api)


@pytest.fixture(scope="module")
def core(k8s_api: Any) -> client.CoreV1Api:
    return client.CoreV1Api(k8s_api)


def test_role_applies_runtime_classes_and_labels(
    k8s_env: K8sTestEnv, node_api: client.NodeV1Api, core: client.CoreV1Api, tmp_path: Path
) -> None:
    first = run_role(tmp_path, k8s_env.kubeconfig)
    assert first["changed"] == 2, first  # the label task and the RuntimeClass task

    qemu = node_api.read_runtime_class("kata-qemu")
    assert qemu.handler == "kata-qemu"
    assert qemu.overhead.pod_fixed == {"cpu": "250m", "memory": "320Mi"}
    assert qemu.scheduling.node_selector == {KATA_LABEL: "true"}

    tdx = node_api.read_runtime_class("kata-qemu-tdx")
    assert tdx.handler == "kata-qemu-tdx"
    assert tdx.overhead.pod_fixed == {"cpu": "1", "memory": "2Gi"}
    assert tdx.scheduling.node_selector == {KATA_LABEL: "true", TDX_LABEL: "true"}

    tdx_labels = core.read_node(TDX_NODE).metadata.labels
    plain_labels = core.read_node(PLAIN_NODE).metadata.labels
    assert tdx_labels[KATA_LABEL] == "true" and tdx_labels[TDX_LABEL] == "true"
    assert plain_labels[KATA_LABEL] == "true" and TDX_LABEL not in plain_labels
    for node in (TDX_NODE, PLAIN_NODE):
        annotations = core.read_node(node).metadata.annotations
        assert annotations[VERSION_ANNOTATION] == KATA_VERSION

    again = run_role(tmp_path, k8s_env.kubeconfig)
    assert again["changed"] == 0, again


def test_role_absent_removes_classes_and_labels(
    k8s_env: K8sTestEnv, node_api: client.NodeV1Api, core: client.CoreV1Api, tmp_path: Path
) -> None:
    run_role(tmp_path, k8s_env.kubeconfig)
    run_role(tmp_path, k8s_env.kubeconfig, kata_runtimeclasses_state="absent")
    for name in ("kata-qemu", "kata-qemu-tdx"):
        with pytest.raises(ApiException) as err:
            node_api.read_runtime_class(name)
        assert err.value.status == 404
    for node in (TDX_NODE, PLAIN_NODE):
        labels = core.read_node(node).metadata.labels
        assert KATA_LABEL not in labels and TDX_LABEL not in labels, labels
        assert VERSION_ANNOTATION not in (core.read_node(node).metadata.annotations or {})
    assert (
        run_role(tmp_path, k8s_env.kubeconfig, kata_runtimeclasses_state="absent")["changed"] == 0
    )
