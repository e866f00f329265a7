"""cvmharness.kube against a real kube-apiserver (v1.34, with controller-manager, scheduler
and kwok; see env.py): namespaces, pods, Services, EndpointSlices, events, facts, teardown.

kwok makes bound pods Running with a pod IP, but nothing runs behind them: pod IPs,
ClusterIPs and NodePorts are only read here, never connected to.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cvmharness.kube import (
    KATA_VERSION_ANNOTATION,
    MANAGED_BY,
    RUN_ID_ANNOTATION,
    RUN_LABEL,
    ClusterSession,
    Content,
    PodDriver,
    PodError,
    Timeouts,
    namespace_name,
    run_label_value,
    service_manifest,
    teardown_lab,
)
from cvmharness.lab import ClusterSpec, HostVars, Lab, LabHost
from cvmharness.placement import parse_placement

from .env import REPO_ROOT, SERVICE_CIDR, K8sTestEnv

kubernetes = pytest.importorskip("kubernetes", reason="pip install kubernetes")
from kubernetes import client  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402

pytestmark = pytest.mark.k8senv

CLUSTER = "testenv"
TDX_LABEL = "intel.feature.node.kubernetes.io/tdx"  # as roles/kata_runtimeclasses
TDX_NODE = "kwok-node-1"
KATA_VERSION = "3.21.0"
POD_CIDR = ipaddress.ip_network("10.244.0.0/16")
LIMITED = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "60", "memory": "100Gi"}}


@pytest.fixture(scope="module")
def core(k8s_api: Any) -> client.CoreV1Api:
    return client.CoreV1Api(k8s_api)


@pytest.fixture(scope="module")
def runtime_classes(k8s_api: Any, core: client.CoreV1Api) -> Iterator[None]:
    """kata-qemu and kata-qemu-tdx as the runtime-classes role makes them: handlers named
    as kata-deploy does, pod overhead, TDX-capable nodes only for kata-qemu-tdx; one kwok
    node labelled TDX-capable and annotated with a Kata version (as the kata role does)."""
    node_api = client.NodeV1Api(k8s_api)
    for name in ("kata-qemu", "kata-qemu-tdx"):  # left by another test that failed
        with contextlib.suppress(ApiException):
            node_api.delete_runtime_class(name)
    overhead = client.V1Overhead(pod_fixed={"cpu": "250m", "memory": "160Mi"})
    node_api.create_runtime_class(client.V1RuntimeClass(
        metadata=client.V1ObjectMeta(name="kata-qemu"), handler="kata-qemu", overhead=overhead))
    node_api.create_runtime_class(client.V1RuntimeClass(
        metadata=client.V1ObjectMeta(name="kata-qemu-tdx"), handler="kata-qemu-tdx",
        overhead=overhead,
        scheduling=client.V1Scheduling(node_selector={TDX_LABEL: "true"})))
    core.patch_node(TDX_NODE, {"metadata": {"labels": {TDX_LABEL: "true"},
                                            "annotations": {KATA_VERSION_ANNOTATION:
                                                            KATA_VERSION}}})
    try:
        yield
    finally:
        core.patch_node(TDX_NODE, {"metadata": {"labels": {TDX_LABEL: None},
                                                "annotations": {KATA_VERSION_ANNOTATION: None}}})
        for name in ("kata-qemu", "kata-qemu-tdx"):
            node_api.delete_runtime_class(name)


def make_lab(k8s_env: K8sTestEnv, **cluster: Any) -> Lab:
    spec = ClusterSpec(name=CLUSTER, runtime_classes=["runc", "kata-qemu", "kata-qemu-tdx"],
                       kubeconfig=str(k8s_env.kubeconfig), wrk_image="cvmharness/wrk:4.2.0",
                       **cluster)
    host = LabHost("localhost", HostVars(ansible_connection="local",
                                         cvmharness_clusters=[spec]))
    return Lab(name="k8senv", inventory=Path("inventory/k8senv.yml"),
               hosts={"localhost": host}, root=REPO_ROOT)


def new_run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-k8senv-{uuid.uuid4().hex[:4]}"
    (run_dir / "facts").mkdir(parents=True)
    return run_dir


def run_objects(core: client.CoreV1Api, run_id: str) -> dict[str, list[str]]:
    """Everything labelled with this run, cluster-wide."""
    selector = f"{RUN_LABEL}={run_label_value(run_id)}"
    return {
        "namespaces": [n.metadata.name for n in core.list_namespace(
            label_selector=selector).items],
        "pods": [p.metadata.name for p in core.list_pod_for_all_namespaces(
            label_selector=selector).items],
        "services": [s.metadata.name for s in core.list_service_for_all_namespaces(
            label_selector=selector).items],
        "configmaps": [c.metadata.name for c in core.list_config_map_for_all_namespaces(
            label_selector=selector).items],
    }


def test_pods_services_facts_and_teardown(k8s_env: K8sTestEnv, k8s_api: Any,
                                          core: client.CoreV1Api, runtime_classes: None,
                                          tmp_path: Path) -> None:
    run_dir = new_run_dir(tmp_path)
    run_id = run_dir.name
    driver = PodDriver(make_lab(k8s_env), run_dir=run_dir, timeouts=Timeouts(pod_ready_s=90))
    server = parse_placement({"kind": "pod", "runtime_class": "kata-qemu-tdx",
                              "resources": LIMITED})
    client_placement = parse_placement("pod:kata-qemu")
    ns = namespace_name(run_id, CLUSTER)
    try:
        endpoints = {via: driver.endpoint(server, client_placement, None, via)
                     for via in ("pod-ip", "clusterip", "headless", "nodeport")}
        node = driver.client_node(client_placement)
        transport = driver.client_transport(client_placement)

        namespace = core.read_namespace(ns)
        assert namespace.metadata.labels[RUN_LABEL] == run_label_value(run_id)
        assert namespace.metadata.labels[MANAGED_BY[0]] == MANAGED_BY[1]
        assert namespace.metadata.annotations[RUN_ID_ANNOTATION] == run_id

        pods = {p.metadata.labels["cvmharness.io/role"]: p
                for p in core.list_namespaced_pod(ns).items}
        assert set(pods) == {"server", "client"}
        nginx, wrk = pods["server"], pods["client"]
        for pod in (nginx, wrk):
            assert pod.status.phase == "Running"
            assert pod.metadata.labels[RUN_LABEL] == run_label_value(run_id)
        assert nginx.spec.runtime_class_name == "kata-qemu-tdx"
        # The RuntimeClass's scheduling constraint put it on the TDX-capable node, and
        # its overhead was added by admission.
        assert nginx.spec.node_name == TDX_NODE
        assert nginx.spec.overhead == {"cpu": "250m", "memory": "160Mi"}
        resources = nginx.spec.containers[0].resources
        assert (resources.requests, resources.limits) == (LIMITED["requests"],
                                                          LIMITED["limits"])
        assert nginx.spec.containers[0].image == "nginx:1.27"
        assert wrk.spec.runtime_class_name == "kata-qemu"
        assert wrk.spec.containers[0].image == "cvmharness/wrk:4.2.0"

        # Endpoints: read from the API only, never connected to.
        assert ipaddress.ip_address(endpoints["pod-ip"].address) in POD_CIDR
        assert endpoints["pod-ip"].address == nginx.status.pod_ip
        assert endpoints["pod-ip"].port == 8080
        assert ipaddress.ip_address(endpoints["clusterip"].address) in ipaddress.ip_network(
            SERVICE_CIDR)
        assert endpoints["clusterip"].port == 80
        services = {s.metadata.labels["cvmharness.io/role"]: s
                    for s in core.list_namespaced_service(ns).items}
        assert set(services) == {"clusterip", "headless", "nodeport"}
        assert services["headless"].spec.cluster_ip == "None"
        assert endpoints["headless"].address == f"{services['headless'].metadata.name}.{ns}.svc"
        assert services["nodeport"].spec.type == "NodePort"
        node_port = services["nodeport"].spec.ports[0].node_port
        assert endpoints["nodeport"].port == node_port and 30000 <= node_port <= 32767
        assert endpoints["nodeport"].address == "127.0.100.2"  # kwok-node-1's InternalIP
        assert {e.server_node for e in endpoints.values()} == {
            f"pod/{ns}/{nginx.metadata.name}"}
        discovery = client.DiscoveryV1Api(k8s_api)
        for service in services.values():
            slices = discovery.list_namespaced_endpoint_slice(
                ns, label_selector=f"kubernetes.io/service-name={service.metadata.name}").items
            addresses = {a for s in slices for e in s.endpoints or [] for a in e.addresses}
            assert addresses == {nginx.status.pod_ip}, service.metadata.name

        # The content the server pod serves, from ConfigMaps.
        www = core.read_namespaced_config_map("cvmh-www", ns)
        assert set(www.binary_data) == {"index.html", "1k.bin", "10k.bin", "100k.bin"}
        assert "1m.bin" in core.read_namespaced_config_map("cvmh-obj-1m-bin", ns).binary_data
        conf = core.read_namespaced_config_map("cvmh-nginx-conf", ns).data["nginx.conf"]
        assert "location = /__cvmh/status" in conf and "stub_status;" in conf

        # The client: wrk and its Lua script where the bench loop looks for them.
        assert node.wrk_binary == "/usr/local/bin/wrk"
        assert node.wrk_script == "/usr/local/share/cvmharness/wrk_json.lua"
        mount = wrk.spec.containers[0].volume_mounts[0]
        assert mount.mount_path == "/usr/local/share/cvmharness"
        assert transport.node == f"pod/{ns}/{wrk.metadata.name}"

        facts = json.loads((run_dir / "facts" / f"pod-{CLUSTER}-{nginx.metadata.name}.json")
                           .read_text())
        assert facts["runtime_class"] == "kata-qemu-tdx"
        assert facts["runtime_handler"] == "kata-qemu-tdx"
        assert facts["runtime_class_overhead"] == {"cpu": "250m", "memory": "160Mi"}
        assert facts["kata"] == {"version": KATA_VERSION, "hypervisor": "qemu-tdx"}
        assert facts["resources"] == LIMITED
        assert facts["k8s_node"]["name"] == TDX_NODE
        assert facts["k8s_node"]["labels"][TDX_LABEL] == "true"
        assert facts["qos_class"] == "Burstable"
        client_facts = json.loads(
            (run_dir / "facts" / f"pod-{CLUSTER}-{wrk.metadata.name}.json").read_text())
        assert client_facts["kata"]["hypervisor"] == "qemu"
        assert client_facts["kata"]["version"] is None  # its node has no annotation
    finally:
        driver.close()
    assert driver.teardown_errors == []
    assert run_objects(core, run_id) == {"namespaces": [], "pods": [], "services": [],
                                         "configmaps": []}
    with pytest.raises(ApiException) as gone:
        core.read_namespace(ns)
    assert gone.value.status == 404


def test_exec_into_a_kwok_pod_fails_with_the_reason(k8s_env: K8sTestEnv,
                                                    core: client.CoreV1Api,
                                                    tmp_path: Path) -> None:
    """The real API server cannot exec into a kwok pod (no kubelet): the transport says so
    in a Completed result (the repetition fails with it) instead of raising."""
    driver = PodDriver(make_lab(k8s_env), run_dir=new_run_dir(tmp_path))
    try:
        transport = driver.client_transport(parse_placement("pod:runc"))
        done = transport.run(["wrk", "-v"], 30)
    finally:
        driver.close()
    assert done.rc != 0 and not done.timed_out
    assert transport.node in done.stderr


def test_node_placement_pins_the_pod(k8s_env: K8sTestEnv, core: client.CoreV1Api,
                                     tmp_path: Path) -> None:
    run_dir = new_run_dir(tmp_path)
    driver = PodDriver(make_lab(k8s_env), run_dir=run_dir)
    try:
        endpoint = driver.endpoint(
            parse_placement({"kind": "pod", "runtime_class": "runc", "node": "kwok-node-0"}),
            parse_placement("pod:runc"), None, "pod-ip")
        ns = namespace_name(run_dir.name, CLUSTER)
        server = core.list_namespaced_pod(ns, label_selector="cvmharness.io/role=server")
        assert [p.spec.node_name for p in server.items] == ["kwok-node-0"]
        assert server.items[0].spec.runtime_class_name is None  # runc: the default runtime
        assert endpoint.address == server.items[0].status.pod_ip
    finally:
        driver.close()


def test_pod_that_never_becomes_ready_reports_its_events(k8s_env: K8sTestEnv,
                                                         core: client.CoreV1Api,
                                                         tmp_path: Path) -> None:
    run_dir = new_run_dir(tmp_path)
    driver = PodDriver(make_lab(k8s_env), run_dir=run_dir, timeouts=Timeouts(pod_ready_s=20))
    server = parse_placement({"kind": "pod", "runtime_class": "runc", "node": "no-such-node"})
    try:
        with pytest.raises(PodError) as caught:
            driver.endpoint(server, parse_placement("pod:runc"), None, "clusterip")
    finally:
        driver.close()
    message = str(caught.value)
    assert "not ready after 20s" in message
    assert "PodScheduled=False (Unschedulable" in message
    assert "FailedScheduling: 0/" in message and "node affinity/selector" in message
    assert run_objects(core, run_dir.name)["namespaces"] == []


def test_service_without_endpoints_is_reported(k8s_env: K8sTestEnv, core: client.CoreV1Api,
                                               k8s_api: Any, tmp_path: Path) -> None:
    run_id = new_run_dir(tmp_path).name
    lab = make_lab(k8s_env)
    session = ClusterSession(cluster=lab.clusters()[0][1], api=k8s_api, run_id=run_id,
                             content=Content.from_project(REPO_ROOT),
                             timeouts=Timeouts(endpoints_s=5))
    session.prepare()
    try:
        manifest = service_manifest("nginx-gone-clusterip", run_id, "nginx-gone", "clusterip")
        core.create_namespaced_service(session.namespace, manifest)
        with pytest.raises(PodError) as caught:
            session.wait_endpoints("nginx-gone-clusterip", "10.244.200.1")
    finally:
        session.teardown()
    message = str(caught.value)
    assert f"Service {session.namespace}/nginx-gone-clusterip has no ready endpoint" in message
    assert "ready addresses none" in message
    assert message.endswith(": none")  # no pod matches its selector


def test_teardown_of_the_lab_removes_runs_killed_before_their_own(
        k8s_env: K8sTestEnv, core: client.CoreV1Api, tmp_path: Path) -> None:
    run_dir = new_run_dir(tmp_path)
    lab = make_lab(k8s_env)
    killed = PodDriver(lab, run_dir=run_dir)
    killed.endpoint(parse_placement("pod:runc"), parse_placement("pod:runc"), None, "pod-ip")
    # The run dies here: no close(). `cvmharness teardown` finds its namespace by label.
    assert run_objects(core, run_dir.name)["pods"]
    deleted = teardown_lab(lab)
    assert namespace_name(run_dir.name, CLUSTER) in deleted
    assert run_objects(core, run_dir.name) == {"namespaces": [], "pods": [], "services": [],
                                               "configmaps": []}


def test_resumed_run_starts_from_a_fresh_namespace(k8s_env: K8sTestEnv,
                                                   core: client.CoreV1Api,
                                                   tmp_path: Path) -> None:
    """A resumed run reuses its run id: what the killed attempt left (a wrk possibly still
    sending) is deleted before the new pods start."""
    run_dir = new_run_dir(tmp_path)
    lab = make_lab(k8s_env)
    ns = namespace_name(run_dir.name, CLUSTER)
    first = PodDriver(lab, run_dir=run_dir)
    first.endpoint(parse_placement("pod:runc"), parse_placement("pod:runc"), None, "pod-ip")
    old_uid = core.read_namespace(ns).metadata.uid
    second = PodDriver(lab, run_dir=run_dir)
    try:
        second.endpoint(parse_placement("pod:runc"), parse_placement("pod:runc"), None,
                        "pod-ip")
        assert core.read_namespace(ns).metadata.uid != old_uid
        assert len(core.list_namespaced_pod(ns).items) == 1
    finally:
        second.close()
    assert run_objects(core, run_dir.name)["namespaces"] == []


# ----------------------------------------------------------------------------- image pull


MANUAL_NODE = "manual-node-0"
PULL_MESSAGE = ('failed to pull and unpack image "cvmharness.invalid/missing:0": '
                "failed to resolve reference: not found")


def _ready_conditions() -> list[dict[str, str]]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return [{"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "kubelet is posting ready status", "lastHeartbeatTime": now,
             "lastTransitionTime": now}]


class FakeKubelet:
    """Plays the kubelet of one Node that kwok does not manage: keeps the node Ready and
    reports an image pull failure for every pod bound to it, through the status
    subresource and an Event, as a kubelet whose pull failed would."""

    def __init__(self, core: client.CoreV1Api) -> None:
        self.core = core
        self.stop = threading.Event()
        self.reported: set[str] = set()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> FakeKubelet:
        self.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(
            name=MANUAL_NODE, labels={"kubernetes.io/hostname": MANUAL_NODE})))
        self._heartbeat()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.core.delete_node(MANUAL_NODE)

    def _heartbeat(self) -> None:
        self.core.patch_node_status(MANUAL_NODE, {"status": {
            "conditions": _ready_conditions(),
            "addresses": [{"type": "InternalIP", "address": "127.0.100.9"}],
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "110"},
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"}}})

    def _loop(self) -> None:
        while not self.stop.wait(1.0):
            self._heartbeat()
            pods = self.core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={MANUAL_NODE}").items
            for pod in pods:
                if pod.metadata.deletion_timestamp is not None:
                    # A kubelet confirms the deletion once the containers are gone.
                    with contextlib.suppress(ApiException):
                        self.core.delete_namespaced_pod(pod.metadata.name,
                                                        pod.metadata.namespace,
                                                        grace_period_seconds=0)
                    continue
                if pod.metadata.uid in self.reported:
                    continue
                self._report_pull_failure(pod)
                self.reported.add(pod.metadata.uid)

    def _report_pull_failure(self, pod: Any) -> None:
        name, ns = pod.metadata.name, pod.metadata.namespace
        container = pod.spec.containers[0]
        self.core.patch_namespaced_pod_status(name, ns, {"status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"},
                           {"type": "Ready", "status": "False",
                            "reason": "ContainersNotReady"}],
            "containerStatuses": [{
                "name": container.name, "image": container.image, "imageID": "",
                "ready": False, "restartCount": 0,
                "state": {"waiting": {"reason": "ErrImagePull", "message": PULL_MESSAGE}}}]}})
        now = datetime.now(UTC)
        self.core.create_namespaced_event(ns, client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=f"{name}.{uuid.uuid4().hex[:8]}"),
            involved_object=client.V1ObjectReference(kind="Pod", name=name, namespace=ns,
                                                     uid=pod.metadata.uid),
            reason="Failed", type="Warning", count=1,
            message=f'Failed to pull image "{container.image}": {PULL_MESSAGE}',
            first_timestamp=now, last_timestamp=now,
            source=client.V1EventSource(component="kubelet", host=MANUAL_NODE)))


def test_image_pull_error_is_reported_from_the_pod_status(k8s_env: K8sTestEnv,
                                                          core: client.CoreV1Api,
                                                          tmp_path: Path) -> None:
    """The status comes from the test acting as the node's kubelet (kwok leaves pods of
    nodes it does not manage alone); the driver stops waiting at once and says why."""
    run_dir = new_run_dir(tmp_path)
    driver = PodDriver(make_lab(k8s_env, nginx_image="cvmharness.invalid/missing:0"),
                       run_dir=run_dir, timeouts=Timeouts(pod_ready_s=120))
    server = parse_placement({"kind": "pod", "runtime_class": "runc", "node": MANUAL_NODE})
    with FakeKubelet(core) as kubelet:
        try:
            with pytest.raises(PodError) as caught:
                driver.endpoint(server, parse_placement("pod:runc"), None, "pod-ip")
        finally:
            driver.close()
    message = str(caught.value)
    assert kubelet.reported
    assert f"container main: ErrImagePull: {PULL_MESSAGE}" in message
    assert "Failed: Failed to pull image \"cvmharness.invalid/missing:0\"" in message
    assert "not ready after" not in message  # a pull error ends the wait at once
    assert run_objects(core, run_dir.name)["namespaces"] == []


def test_preflight_against_the_api(k8s_env: K8sTestEnv, runtime_classes: None) -> None:
    """What `cvmharness bench` checks before a run (exit 3 when anything is listed)."""
    spec = ClusterSpec(name=CLUSTER, runtime_classes=["runc", "kata-qemu", "kata-clh"],
                       kubeconfig=str(k8s_env.kubeconfig), wrk_image="cvmharness/wrk:4.2.0")
    lab = Lab(name="k8senv", inventory=Path("inventory/k8senv.yml"), root=REPO_ROOT,
              hosts={"localhost": LabHost("localhost", HostVars(
                  ansible_connection="local", cvmharness_clusters=[spec]))})
    driver = PodDriver(lab)
    pinned = parse_placement({"kind": "pod", "runtime_class": "runc", "node": "no-such-node"})
    assert driver.preflight([("client", parse_placement("pod:kata-clh")),
                             ("server", pinned)]) == [
        f"cluster '{CLUSTER}': RuntimeClass 'kata-clh' does not exist "
        "(run: cvmharness provision)",
        f"cluster '{CLUSTER}': no node 'no-such-node'"]
    assert driver.preflight([
        ("client", parse_placement("pod:kata-qemu")),
        ("server", parse_placement({"kind": "pod", "runtime_class": "runc",
                                    "node": "kwok-node-0"}))]) == []
