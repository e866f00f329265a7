"""Proves the loopback control plane works with the official `kubernetes` Python client.

Nothing here sends traffic anywhere but 127.0.0.1: pod IPs and ClusterIPs are only read.
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from .env import DEFAULT_NODES, SERVICE_CIDR, K8sTestEnv

kubernetes = pytest.importorskip("kubernetes", reason="pip install kubernetes")
from kubernetes import client, watch  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

pytestmark = pytest.mark.k8senv

POD_CIDR = ipaddress.ip_network("10.244.0.0/16")
T = TypeVar("T")


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.25)


def make_pod(name: str, labels: dict[str, str], **spec: Any) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="web",
                    image="nginx:stable",
                    ports=[client.V1ContainerPort(container_port=80, name="http")],
                )
            ],
            node_selector={"type": "kwok"},
            **spec,
        ),
    )


@pytest.fixture(scope="module")
def core(k8s_api: Any) -> client.CoreV1Api:
    return client.CoreV1Api(k8s_api)


@pytest.fixture(scope="module")
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    name = f"k8senv-{uuid.uuid4().hex[:8]}"
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"cvmh-test": "k8senv"}))
    )
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as e:
        if e.status != 404:
            raise


def test_server_version_and_fake_nodes(k8s_env: K8sTestEnv, k8s_api: Any) -> None:
    version = client.VersionApi(k8s_api).get_code()
    assert version.git_version.startswith("v1.")
    assert k8s_env.server.startswith("https://127.0.0.1:")

    nodes = {n.metadata.name: n for n in client.CoreV1Api(k8s_api).list_node().items}
    assert set(nodes) == {n.name for n in DEFAULT_NODES}
    for fake in DEFAULT_NODES:
        node = nodes[fake.name]
        assert node.metadata.labels["kubernetes.io/hostname"] == fake.name
        assert node.metadata.labels["kubernetes.io/os"] == "linux"
        ready = [c for c in node.status.conditions if c.type == "Ready"]
        assert ready and ready[0].status == "True"
        assert {"type": "InternalIP", "address": fake.internal_ip} in [
            {"type": a.type, "address": a.address} for a in node.status.addresses
        ]
        assert not node.spec.taints


def test_namespace_has_label(core: client.CoreV1Api, namespace: str) -> None:
    ns = core.read_namespace(namespace)
    assert ns.metadata.labels["cvmh-test"] == "k8senv"
    assert ns.status.phase == "Active"
    found = core.list_namespace(label_selector="cvmh-test=k8senv").items
    assert namespace in [n.metadata.name for n in found]


def test_pod_is_scheduled_and_runs(core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_pod(namespace, make_pod("web-0", {"app": "web"}))
    # Watch the pod until kwok reports it Running with an IP.
    w = watch.Watch()
    pod = None
    for event in w.stream(
        core.list_namespaced_pod,
        namespace,
        field_selector="metadata.name=web-0",
        timeout_seconds=60,
    ):
        obj = event["object"]
        if obj.status.phase == "Running" and obj.status.pod_ip:
            pod = obj
            w.stop()
    assert pod is not None, "pod web-0 never reached Running"
    assert pod.spec.node_name in {n.name for n in DEFAULT_NODES}
    assert ipaddress.ip_address(pod.status.pod_ip) in POD_CIDR
    assert pod.status.host_ip in {n.internal_ip for n in DEFAULT_NODES}
    assert pod.status.container_statuses[0].ready is True
    # The ServiceAccount admission plugin mounted a projected token (serviceaccount controller).
    assert pod.spec.service_account_name == "default"


def _service(name: str, **spec: Any) -> client.V1Service:
    return client.V1Service(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1ServiceSpec(
            selector={"app": "web"},
            ports=[client.V1ServicePort(name="http", port=80, target_port="http")],
            **spec,
        ),
    )


def test_services_and_endpoints(core: client.CoreV1Api, namespace: str, k8s_api: Any) -> None:
    pod_ip = wait_for(
        "web-0 pod IP",
        lambda: core.read_namespaced_pod("web-0", namespace).status.pod_ip,
    )
    cluster_ip = core.create_namespaced_service(namespace, _service("web"))
    headless = core.create_namespaced_service(
        namespace, _service("web-headless", cluster_ip="None")
    )
    node_port = core.create_namespaced_service(namespace, _service("web-np", type="NodePort"))

    assert ipaddress.ip_address(cluster_ip.spec.cluster_ip) in ipaddress.ip_network(SERVICE_CIDR)
    assert headless.spec.cluster_ip == "None"
    assert 30000 <= node_port.spec.ports[0].node_port <= 32767

    discovery = client.DiscoveryV1Api(k8s_api)
    for svc in ("web", "web-headless", "web-np"):

        def endpoint_ips(svc: str = svc) -> list[str] | None:
            try:
                ep = core.read_namespaced_endpoints(svc, namespace)
            except ApiException as e:
                if e.status == 404:
                    return None
                raise
            return [a.ip for s in ep.subsets or [] for a in s.addresses or []] or None

        assert wait_for(f"Endpoints {svc}", endpoint_ips) == [pod_ip]

        def slice_ips(svc: str = svc) -> list[str] | None:
            slices = discovery.list_namespaced_endpoint_slice(
                namespace, label_selector=f"kubernetes.io/service-name={svc}"
            ).items
            return [
                addr
                for s in slices
                for e in s.endpoints or []
                if e.conditions and e.conditions.ready
                for addr in e.addresses
            ] or None

        assert wait_for(f"EndpointSlice {svc}", slice_ips) == [pod_ip]


def test_watch_replays_events(core: client.CoreV1Api, namespace: str) -> None:
    rv = core.list_namespaced_config_map(namespace).metadata.resource_version
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cm"), data={"a": "1"})
    )
    core.patch_namespaced_config_map("cm", namespace, {"data": {"a": "2"}})
    core.delete_namespaced_config_map("cm", namespace)

    seen: list[tuple[str, str | None]] = []
    w = watch.Watch()
    for event in w.stream(
        core.list_namespaced_config_map,
        namespace,
        field_selector="metadata.name=cm",
        resource_version=rv,
        timeout_seconds=20,
    ):
        seen.append((event["type"], (event["object"].data or {}).get("a")))
        if event["type"] == "DELETED":
            w.stop()
    assert seen == [("ADDED", "1"), ("MODIFIED", "2"), ("DELETED", "2")]


def test_job_completes(k8s_api: Any, namespace: str) -> None:
    batch = client.BatchV1Api(k8s_api)
    job = client.V1Job(
        metadata=client.V1ObjectMeta(name="once"),
        spec=client.V1JobSpec(
            backoff_limit=0,
            template=client.V1PodTemplateSpec(
                spec=client.V1PodSpec(
                    restart_policy="Never",
                    node_selector={"type": "kwok"},
                    containers=[client.V1Container(name="c", image="busybox", command=["true"])],
                )
            ),
        ),
    )
    batch.create_namespaced_job(namespace, job)
    wait_for(
        "job once succeeded",
        lambda: batch.read_namespaced_job_status("once", namespace).status.succeeded,
    )


def test_runtime_class_pod(core: client.CoreV1Api, k8s_api: Any, namespace: str) -> None:
    node_api = client.NodeV1Api(k8s_api)
    node_api.create_runtime_class(
        client.V1RuntimeClass(metadata=client.V1ObjectMeta(name="kata-k8senv"), handler="kata")
    )
    try:
        core.create_namespaced_pod(
            namespace, make_pod("kata-0", {"app": "kata"}, runtime_class_name="kata-k8senv")
        )
        pod = wait_for(
            "kata-0 Running",
            lambda: (
                (p := core.read_namespaced_pod("kata-0", namespace)).status.phase == "Running" and p
            ),
        )
        assert pod.spec.runtime_class_name == "kata-k8senv"
    finally:
        node_api.delete_runtime_class("kata-k8senv")


def test_pod_logs_are_not_available(core: client.CoreV1Api, namespace: str) -> None:
    """Documented limit: no kubelet behind the fake nodes, so logs/exec cannot work."""
    with pytest.raises(ApiException):
        core.read_namespaced_pod_log("web-0", namespace, _request_timeout=10)


def test_delete_namespaces_by_label(core: client.CoreV1Api) -> None:
    batch = f"b{uuid.uuid4().hex[:8]}"
    names = [f"k8senv-{batch}-{i}" for i in range(2)]
    for name in names:
        core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"batch": batch}))
        )
        core.create_namespaced_pod(name, make_pod("p", {"app": "p"}))
        core.create_namespaced_config_map(
            name, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cm"))
        )
    wait_for(
        "pods Running",
        lambda: all(core.read_namespaced_pod("p", n).status.phase == "Running" for n in names),
    )

    selector = f"batch={batch}"
    for ns in core.list_namespace(label_selector=selector).items:
        core.delete_namespace(ns.metadata.name)
    # The namespace controller empties each namespace, then the namespaces disappear.
    wait_for(
        "namespaces gone",
        lambda: not core.list_namespace(label_selector=selector).items,
        timeout=90,
    )
    for name in names:
        with pytest.raises(ApiException) as excinfo:
            core.read_namespace(name)
        assert excinfo.value.status == 404
