"""The Kubernetes side without a cluster: manifests against the real schemas, names,
skip reasons, preflight problems, the exec status parser."""

from __future__ import annotations

import base64
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from cvmharness.errors import InputError
from cvmharness.kube import (
    Content,
    PodDriver,
    PodError,
    client_pod_manifest,
    content_config_maps,
    exec_returncode,
    namespace_manifest,
    namespace_name,
    nginx_conf,
    placement_key,
    run_label_value,
    server_pod_manifest,
    service_manifest,
)
from cvmharness.lab import ClusterSpec, HostVars, Lab, LabHost, load_lab
from cvmharness.placement import Placement, parse_placement
from cvmharness.workloads.wrk import parse_stub_status

kubernetes_validate = pytest.importorskip("kubernetes_validate",
                                          reason="pip install kubernetes-validate")

K8S_VERSION = "1.34"  # the version tests/k8senv builds
RUN_ID = "20261123T173000Z-seed-000-ab12"

PLACEMENTS = [
    "pod:runc",
    "pod:kata-qemu",
    {"kind": "pod", "runtime_class": "kata-qemu-tdx", "node": "worker1",
     "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                   "limits": {"cpu": "60", "memory": "100Gi"}}},
    {"kind": "pod", "runtime_class": "runc", "resources": {"limits": {"cpu": "500m"}}},
]


def cluster(**extra: Any) -> ClusterSpec:
    return ClusterSpec(name="k3s", runtime_classes=["runc", "kata-qemu", "kata-qemu-tdx"],
                       wrk_image="cvmharness/wrk:4.2.0", **extra)


def make_lab(root: Path, *clusters: ClusterSpec, name: str = "unit") -> Lab:
    host = LabHost("tdx1", HostVars(ansible_connection="local",
                                    cvmharness_clusters=list(clusters)))
    client1 = LabHost("client1", HostVars(ansible_connection="ssh"))
    return Lab(name=name, inventory=Path(f"inventory/{name}.yml"),
               hosts={"tdx1": host, "client1": client1}, root=root)


@pytest.fixture(scope="module")
def content() -> Content:
    return Content.from_project(Path(__file__).resolve().parents[2])


def all_manifests(content: Content) -> list[dict[str, Any]]:
    spec = cluster()
    out = [namespace_manifest(namespace_name(RUN_ID, "k3s"), RUN_ID),
           *content_config_maps(RUN_ID, content, spec.nginx_user)]
    for raw in PLACEMENTS:
        placement = parse_placement(raw)
        key = placement_key(placement)
        out.append(server_pod_manifest(f"nginx-{key}", RUN_ID, placement, spec, content))
        out.append(client_pod_manifest(f"wrk-{key}", RUN_ID, placement, spec))
        for via in ("clusterip", "headless", "nodeport"):
            out.append(service_manifest(f"nginx-{key}-{via}", RUN_ID, f"nginx-{key}", via))
    return out


def test_every_manifest_is_valid_against_the_kubernetes_schemas_strict(
        content: Content) -> None:
    manifests = all_manifests(content)
    kinds = {m["kind"] for m in manifests}
    assert kinds == {"Namespace", "ConfigMap", "Pod", "Service"}
    for manifest in manifests:
        try:
            kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{manifest['kind']} {manifest['metadata']['name']}: {exc.message}")


def test_a_wrong_manifest_is_caught_by_strict_validation(content: Content) -> None:
    """The validator really is strict: an unknown field in a pod spec is refused."""
    pod = server_pod_manifest("nginx-x", RUN_ID, Placement(kind="pod", name="runc"),
                              cluster(), content)
    pod["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_content_is_the_nginx_bench_site(content: Content) -> None:
    assert len(content.index_html) == 615
    assert {k: len(v) for k, v in content.objects.items()} == {
        "1k.bin": 1024, "10k.bin": 10240, "100k.bin": 102400, "1m.bin": 1048576}
    assert "CVMH_WRK_JSON" in content.wrk_lua
    for cm in content_config_maps(RUN_ID, content, "nginx"):
        size = sum(len(v) for v in cm.get("data", {}).values())
        size += sum(len(base64.b64decode(v)) for v in cm.get("binaryData", {}).values())
        assert size <= 1024 * 1024, cm["metadata"]["name"]  # the API's ConfigMap limit


def test_server_pod_has_runtime_class_node_resources_and_no_http_probe(
        content: Content) -> None:
    placement = parse_placement(PLACEMENTS[2])
    pod = server_pod_manifest("nginx-a", RUN_ID, placement, cluster(), content)
    spec = pod["spec"]
    assert spec["runtimeClassName"] == "kata-qemu-tdx"
    assert spec["nodeSelector"] == {"kubernetes.io/hostname": "worker1"}
    container = spec["containers"][0]
    assert container["image"] == "nginx:1.27"
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "1Gi"},
                                      "limits": {"cpu": "60", "memory": "100Gi"}}
    # An HTTP probe would add requests to the count each repetition is judged by.
    assert "tcpSocket" in container["readinessProbe"]
    runc = server_pod_manifest("nginx-b", RUN_ID, Placement(kind="pod", name="runc"),
                               cluster(), content)
    assert "runtimeClassName" not in runc["spec"]  # runc: the cluster's default runtime


def test_client_pod_mounts_the_lua_script_where_wrk_prefix_says(content: Content) -> None:
    spec = cluster(wrk_prefix="/usr")
    pod = client_pod_manifest("wrk-a", RUN_ID, Placement(kind="pod", name="kata-qemu"), spec)
    mount = pod["spec"]["containers"][0]["volumeMounts"][0]
    assert mount["mountPath"] == "/usr/share/cvmharness"
    assert pod["spec"]["containers"][0]["image"] == "cvmharness/wrk:4.2.0"
    with pytest.raises(PodError, match="sets no wrk_image"):
        client_pod_manifest("wrk-a", RUN_ID, Placement(kind="pod", name="runc"),
                            ClusterSpec(name="k3s"))


@pytest.mark.parametrize("run_id", [RUN_ID, "x" * 200, "UPPER_case.run"])
def test_names_and_label_values_fit_kubernetes_limits(run_id: str) -> None:
    ns = namespace_name(run_id, "k3s")
    assert len(ns) <= 63 and ns == ns.lower() and ns[0].isalpha()
    value = run_label_value(run_id)
    assert len(value) <= 63
    assert namespace_name(run_id, "k3s") != namespace_name(run_id, "other")


def test_placement_keys_differ_by_resources_and_node() -> None:
    keys = {placement_key(parse_placement(p)) for p in PLACEMENTS}
    assert len(keys) == len(PLACEMENTS)
    assert placement_key(parse_placement("pod:runc")) == placement_key(
        parse_placement({"kind": "pod", "runtime_class": "runc"}))


def test_skip_reasons_are_precise(root: Path) -> None:
    none = PodDriver(make_lab(root))
    assert none.availability(parse_placement("pod:runc")) == (
        "lab 'unit' declares no Kubernetes cluster (cvmharness_clusters in "
        "inventory/unit.yml)")
    driver = PodDriver(make_lab(root, ClusterSpec(name="k3s", runtime_classes=["runc"])))
    assert driver.availability(parse_placement("pod:runc")) is None
    assert driver.availability(parse_placement("pod:kata-qemu-tdx")) == (
        "no cluster of lab 'unit' declares runtime class 'kata-qemu-tdx' (cluster 'k3s': "
        "runtime_classes in inventory/unit.yml)")
    assert driver.availability(parse_placement("pod:runc@td:td0")) == (
        "lab 'unit' declares no cluster inside td:td0 (cvmharness_clusters in "
        "inventory/unit.yml)")
    assert driver.availability(parse_placement(
        {"kind": "pod", "runtime_class": "runc", "cluster": "other"})) == (
        "lab 'unit' declares no cluster 'other' (cvmharness_clusters in inventory/unit.yml)")
    two = PodDriver(make_lab(root, ClusterSpec(name="a"), ClusterSpec(name="b")))
    assert "name one with 'cluster:'" in (two.availability(parse_placement("pod:runc")) or "")
    assert two.availability(parse_placement(
        {"kind": "pod", "runtime_class": "runc", "cluster": "b"})) is None


def test_kubeconfig_path_default_and_explicit(root: Path, tmp_path: Path) -> None:
    driver = PodDriver(make_lab(tmp_path))
    assert driver.kubeconfig(ClusterSpec(name="k3s")) == tmp_path / "state/kubeconfig/k3s.yaml"
    assert driver.kubeconfig(ClusterSpec(name="k3s", kubeconfig="kc/x.yaml")) == (
        tmp_path / "kc/x.yaml")
    assert driver.kubeconfig(ClusterSpec(name="k3s", kubeconfig="/etc/k.yaml")) == (
        Path("/etc/k.yaml"))


def test_preflight_says_what_is_not_provisioned(tmp_path: Path) -> None:
    lab = make_lab(tmp_path, ClusterSpec(name="k3s", runtime_classes=["runc", "kata-qemu"]))
    driver = PodDriver(lab)
    pairs = [("client", parse_placement("pod:kata-qemu")), ("server", parse_placement("pod:runc")),
             ("server", parse_placement("pod:kata-qemu-tdx"))]  # undeclared: a skipped cell
    assert driver.preflight(pairs) == [
        f"cluster 'k3s': no kubeconfig at {tmp_path}/state/kubeconfig/k3s.yaml "
        "(run: cvmharness provision)"]
    assert driver.preflight([("client", parse_placement("host"))]) == []
    # With a kubeconfig but no wrk image, client pods cannot run (checked before any
    # API call; the API server of this kubeconfig does not exist).
    kubeconfig = tmp_path / "state/kubeconfig/k3s.yaml"
    kubeconfig.parent.mkdir(parents=True)
    kubeconfig.write_text("not a kubeconfig")
    problems = driver.preflight(pairs)
    assert problems[0] == (
        "cluster 'k3s': client pods need a wrk image: set wrk_image in cvmharness_clusters "
        "(inventory/unit.yml); see docs/pods.md")
    assert problems[1].startswith(f"cluster 'k3s': kubeconfig {kubeconfig}: ")


def test_host_client_not_on_the_cluster_reaches_pods_only_via_nodeport(root: Path) -> None:
    driver = PodDriver(make_lab(root, cluster()))
    server = parse_placement("pod:runc")
    with pytest.raises(PodError, match="is not a node of cluster 'k3s': it reaches pod:runc "
                                       "only via nodeport, not clusterip"):
        driver.endpoint(server, parse_placement("host:client1"), None, "clusterip")


def test_missing_kubeconfig_is_a_pod_error_naming_the_path(tmp_path: Path) -> None:
    driver = PodDriver(make_lab(tmp_path, cluster()))
    with pytest.raises(PodError, match=r"no kubeconfig at .*state/kubeconfig/k3s.yaml"):
        driver.client_transport(parse_placement("pod:kata-qemu"))


@pytest.mark.parametrize(("status", "rc"), [
    ('{"metadata":{},"status":"Success"}', 0),
    (json.dumps({"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                 "message": "command terminated with non-zero exit code: exit status 2",
                 "details": {"causes": [{"reason": "ExitCode", "message": "2"}]}}), 2),
    (json.dumps({"status": "Failure", "reason": "InternalError",
                 "message": "exec: \"wrk\": executable file not found in $PATH"}), 255),
    ("", 255),
    ("not json: [", 255),
])
def test_exec_status_channel_gives_the_exit_code(status: str, rc: int) -> None:
    assert exec_returncode(status) == rc


BAD_CLUSTER_INVENTORY = """\
all:
  children:
    cvmharness_hosts:
      hosts:
        h1:
          ansible_connection: local
          cvmharness_clusters:
            - name: k3s
              image_pull_policy: Sometimes
"""


def test_bad_cluster_field_in_the_lab_is_one_line(root: Path, tmp_path: Path) -> None:
    inventory = tmp_path / "lab.yml"
    inventory.write_text(BAD_CLUSTER_INVENTORY)
    with pytest.raises(InputError) as caught:
        load_lab(str(inventory), root)
    lines = caught.value.lines()
    assert len(lines) == 1, lines
    assert lines[0] == (f"{inventory}:9: hosts.h1.cvmharness_clusters[0].image_pull_policy: "
                        "Input should be 'Always', 'IfNotPresent' or 'Never'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_pod_nginx_conf_serves_the_bench_site(content: Content, tmp_path: Path) -> None:
    """The pod's nginx.conf run by a real nginx on loopback, with the files laid out as
    the projected volume lays them out: the same bytes and status page as the role."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.skip("no nginx binary on this machine (the nginx_bench role installs one)")
    docroot = tmp_path / "www"
    (docroot / "obj").mkdir(parents=True)
    (docroot / "index.html").write_bytes(content.index_html)
    for name, data in content.objects.items():
        (docroot / "obj" / name).write_bytes(data)
    port = _free_port()
    user = f"{pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name}"
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_conf(user, port=port, docroot=str(docroot), run_dir=str(tmp_path)))
    proc = subprocess.Popen([nginx, "-e", "stderr", "-p", str(tmp_path), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(path: str) -> bytes:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return bytes(response.read())

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status = get("/__cvmh/status").decode()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail(f"nginx did not start: {proc.communicate()[1].decode()}")
                time.sleep(0.2)
        assert get("/") == content.index_html and len(content.index_html) == 615
        for name, data in content.objects.items():
            assert get(f"/obj/{name}") == data
        before = parse_stub_status(status)
        after = parse_stub_status(get("/__cvmh/status").decode())
        assert after - before - 1 == 1 + len(content.objects)  # what was fetched between
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
