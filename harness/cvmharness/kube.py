"""The driver of ``pod:RUNTIME_CLASS`` placements: nginx and wrk as pods of a lab cluster.

Everything goes through the official ``kubernetes`` client (never kubectl), with a client
made from the cluster's own kubeconfig (no process-wide configuration). A run gets one
namespace, labelled with its run id; in it, on first use, a server pod per distinct server
placement (nginx serving the same content as roles/nginx_bench, from ConfigMaps), a
Service per ``via`` and a client pod per distinct client placement (wrk, run through the
exec API). Closing the driver deletes the run's namespaces by label and waits until they
are gone. docs/pods.md describes the objects, the images a lab provides and the facts.

``kubernetes`` is imported only here, and only when a cluster is used, so that plans and
dry runs on labs without a cluster do not pay for it.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cvmharness.drivers import Endpoint
from cvmharness.lab import ClusterSpec, HostVars, Lab, LabHost
from cvmharness.placement import Placement
from cvmharness.store import write_json_atomic
from cvmharness.transport import Completed

DEFAULT_RUNTIME = "runc"
"""The runtime class that means "the cluster's default runtime": no runtimeClassName."""

MANAGED_BY = ("app.kubernetes.io/managed-by", "cvmharness")
RUN_LABEL = "cvmharness.io/run"
ROLE_LABEL = "cvmharness.io/role"
KEY_LABEL = "cvmharness.io/key"
RUN_ID_ANNOTATION = "cvmharness.io/run-id"
KATA_VERSION_ANNOTATION = "cvmharness.io/kata-version"
"""Node annotation the kata role writes (the installed Kata version); read for facts."""

NGINX_PORT = 8080
"""The port nginx listens on inside server pods (pod-ip, headless)."""
SERVICE_PORT = 80
"""The port of ClusterIP and NodePort Services (as in the seeds: nginx-service:80)."""
STATUS_PATH = "/__cvmh/status"
NGINX_CONF_DIR = "/etc/cvmharness-nginx"
DOCROOT = "/srv/cvmharness/www"
CONTAINER = "main"

_WAITING_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                     "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError",
                     "RunContainerError", "CrashLoopBackOff")
"""Container waiting reasons that will not resolve by waiting longer."""

T = TypeVar("T")


class PodError(OSError):
    """A pod, Service or exec did not do what a cell needs; the message says why.

    An OSError, so that the bench loop records it as the repetition's failure reason.
    """


@dataclass(frozen=True)
class Timeouts:
    pod_ready_s: float = 300.0
    """Image pulls and Kata VM boots are slow; five minutes before giving up."""
    endpoints_s: float = 60.0
    namespace_gone_s: float = 120.0
    poll_s: float = 0.5


# --------------------------------------------------------------------------- content


@dataclass(frozen=True)
class Content:
    """What every server pod serves, and the Lua script of every client pod.

    Read from the roles (one source of truth): index.html, the object list with its
    sha256 sums, the AES-CTR key and IV the objects are generated from, wrk_json.lua.
    """

    index_html: bytes
    objects: dict[str, bytes]
    wrk_lua: str

    @staticmethod
    def from_project(root: Path) -> Content:
        roles = root / "roles"
        try:
            index_html = (roles / "nginx_bench" / "files" / "index.html").read_bytes()
            wrk_lua = (roles / "wrk" / "files" / "wrk_json.lua").read_text(encoding="utf-8")
            spec = yaml.safe_load((roles / "nginx_bench" / "vars" / "main.yml").read_text())
        except OSError as exc:
            raise PodError(f"cannot read the bench content under {roles}: {exc}") from None
        return Content(index_html=index_html, objects=_objects(spec), wrk_lua=wrk_lua)


def _objects(spec: dict[str, Any]) -> dict[str, bytes]:
    """The /obj/ files: AES-128-CTR keystream of a fixed key and IV, as the role makes them."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = bytes.fromhex(str(spec["_nginx_bench_object_key"]))
    iv = bytes.fromhex(str(spec["_nginx_bench_object_iv"]))
    out: dict[str, bytes] = {}
    for obj in spec["_nginx_bench_objects"]:
        encryptor = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
        data = encryptor.update(bytes(int(obj["size"]))) + encryptor.finalize()
        if hashlib.sha256(data).hexdigest() != obj["sha256"]:
            raise PodError(f"generated {obj['name']} does not match its sha256 in "
                           "roles/nginx_bench/vars/main.yml")
        out[str(obj["name"])] = data
    return out


def nginx_conf(user: str, port: int = NGINX_PORT, docroot: str = DOCROOT,
               run_dir: str = "/tmp") -> str:
    """The server pod's nginx.conf: the bench site of roles/nginx_bench on ``port``.

    IPv4 only (k3s clusters are single-stack by default, and a pod whose network has no
    IPv6 would refuse a [::] listener); pid and temp paths in ``run_dir``, one level
    each (nginx creates only the last component).
    """
    return f"""# cvmharness server pod (same site as roles/nginx_bench)
user {user};
worker_processes auto;
worker_rlimit_nofile 131072;
pid {run_dir}/cvmharness-nginx.pid;
error_log stderr warn;
daemon off;

events {{
    worker_connections 65536;
}}

http {{
    types {{
        text/html html;
        application/octet-stream bin;
    }}
    default_type application/octet-stream;
    client_body_temp_path {run_dir}/cvmharness-nginx-body;
    proxy_temp_path {run_dir}/cvmharness-nginx-proxy;
    fastcgi_temp_path {run_dir}/cvmharness-nginx-fastcgi;
    uwsgi_temp_path {run_dir}/cvmharness-nginx-uwsgi;
    scgi_temp_path {run_dir}/cvmharness-nginx-scgi;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    server_tokens off;
    open_file_cache max=64 inactive=60s;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    reset_timedout_connection on;
    access_log off;

    server {{
        listen {port} backlog=65535;
        server_name _;
        root {docroot};
        index index.html;

        # stub_status counts the request that reads it (after - before - 1).
        location = {STATUS_PATH} {{
            stub_status;
            access_log off;
        }}
    }}
}}
"""


# --------------------------------------------------------------------------- manifests


def _name_part(text: str, limit: int) -> str:
    cleaned = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return cleaned[:limit].strip("-") or "x"


def run_label_value(run_id: str) -> str:
    """A run id as a label value (at most 63 characters; a hash keeps long ones unique)."""
    value = re.sub(r"[^A-Za-z0-9_.-]", "-", run_id)
    if len(value) > 63:
        value = value[:54].rstrip("-_.") + "-" + hashlib.sha256(run_id.encode()).hexdigest()[:8]
    return value


def namespace_name(run_id: str, cluster: str) -> str:
    digest = hashlib.sha256(f"{run_id}/{cluster}".encode()).hexdigest()[:8]
    return f"cvmh-{_name_part(run_id, 40)}-{digest}"


def placement_key(placement: Placement) -> str:
    """A short stable name for a placement's pod: runtime class, node and resources."""
    text = json.dumps(placement.to_dict(), sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:6]
    return f"{_name_part(placement.name or 'pod', 30)}-{digest}"


def labels(run_id: str, **extra: str) -> dict[str, str]:
    return {MANAGED_BY[0]: MANAGED_BY[1], RUN_LABEL: run_label_value(run_id), **extra}


def namespace_manifest(name: str, run_id: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels(run_id),
                         "annotations": {RUN_ID_ANNOTATION: run_id}}}


def config_map_manifest(name: str, run_id: str, data: dict[str, str] | None = None,
                        binary: dict[str, bytes] | None = None) -> dict[str, Any]:
    manifest: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": name, "labels": labels(run_id)}}
    if data:
        manifest["data"] = dict(data)
    if binary:
        manifest["binaryData"] = {k: base64.b64encode(v).decode() for k, v in binary.items()}
    return manifest


def content_config_maps(run_id: str, content: Content, nginx_user: str
                        ) -> list[dict[str, Any]]:
    """nginx.conf, the site (index and small objects) and each object of 512 KiB or more in
    a ConfigMap of its own (a ConfigMap holds at most 1 MiB)."""
    small = {k: v for k, v in content.objects.items() if len(v) < 512 * 1024}
    large = {k: v for k, v in content.objects.items() if len(v) >= 512 * 1024}
    maps = [
        config_map_manifest("cvmh-nginx-conf", run_id, {"nginx.conf": nginx_conf(nginx_user)}),
        config_map_manifest("cvmh-www", run_id, binary={"index.html": content.index_html,
                                                        **small}),
    ]
    maps += [config_map_manifest(_object_map_name(k), run_id, binary={k: v})
             for k, v in sorted(large.items())]
    maps.append(config_map_manifest("cvmh-wrk-lua", run_id, {"wrk_json.lua": content.wrk_lua}))
    return maps


def _object_map_name(obj: str) -> str:
    return f"cvmh-obj-{_name_part(obj, 40)}"


def _www_sources(content: Content) -> list[dict[str, Any]]:
    small = [k for k, v in sorted(content.objects.items()) if len(v) < 512 * 1024]
    large = [k for k, v in sorted(content.objects.items()) if len(v) >= 512 * 1024]
    sources: list[dict[str, Any]] = [{"configMap": {
        "name": "cvmh-www",
        "items": [{"key": "index.html", "path": "index.html"}]
        + [{"key": k, "path": f"obj/{k}"} for k in small]}}]
    sources += [{"configMap": {"name": _object_map_name(k),
                               "items": [{"key": k, "path": f"obj/{k}"}]}} for k in large]
    return sources


def _pod_spec_common(placement: Placement) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 5,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
    }
    if placement.name and placement.name != DEFAULT_RUNTIME:
        spec["runtimeClassName"] = placement.name
    if placement.node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": placement.node}
    return spec


def _resources(placement: Placement) -> dict[str, dict[str, str]]:
    if placement.resources is None:
        return {}
    return {k: v for k, v in placement.resources.to_dict().items() if v}


def server_pod_manifest(name: str, run_id: str, placement: Placement, cluster: ClusterSpec,
                        content: Content) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": cluster.nginx_image,
        "imagePullPolicy": cluster.image_pull_policy,
        "command": ["nginx", "-c", f"{NGINX_CONF_DIR}/nginx.conf"],
        "ports": [{"name": "http", "containerPort": NGINX_PORT, "protocol": "TCP"}],
        # A TCP probe: an HTTP one would add requests to the count a run is judged by.
        "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 2},
        "resources": _resources(placement),
        "volumeMounts": [
            {"name": "conf", "mountPath": NGINX_CONF_DIR, "readOnly": True},
            {"name": "www", "mountPath": DOCROOT, "readOnly": True},
        ],
    }
    spec = _pod_spec_common(placement)
    spec["containers"] = [container]
    spec["volumes"] = [
        {"name": "conf", "configMap": {"name": "cvmh-nginx-conf"}},
        {"name": "www", "projected": {"sources": _www_sources(content)}},
    ]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name,
                         "labels": labels(run_id, **{ROLE_LABEL: "server", KEY_LABEL: name})},
            "spec": spec}


def client_pod_manifest(name: str, run_id: str, placement: Placement, cluster: ClusterSpec
                        ) -> dict[str, Any]:
    if cluster.wrk_image is None:
        raise PodError(f"cluster {cluster.name!r} sets no wrk_image for client pods")
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": cluster.wrk_image,
        "imagePullPolicy": cluster.image_pull_policy,
        # Idle until the harness execs wrk; exits at once on SIGTERM.
        "command": ["/bin/sh", "-c",
                    "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"],
        "resources": _resources(placement),
        "volumeMounts": [{"name": "lua", "readOnly": True,
                          "mountPath": f"{cluster.wrk_prefix}/share/cvmharness"}],
    }
    spec = _pod_spec_common(placement)
    spec["containers"] = [container]
    spec["volumes"] = [{"name": "lua", "configMap": {"name": "cvmh-wrk-lua"}}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name,
                         "labels": labels(run_id, **{ROLE_LABEL: "client", KEY_LABEL: name})},
            "spec": spec}


def service_manifest(name: str, run_id: str, server_pod: str, via: str) -> dict[str, Any]:
    """The Service a ``via`` needs (none for pod-ip)."""
    spec: dict[str, Any] = {"selector": {RUN_LABEL: run_label_value(run_id),
                                         KEY_LABEL: server_pod}}
    if via == "headless":
        spec.update(clusterIP="None", ports=[{"name": "http", "port": NGINX_PORT,
                                              "targetPort": "http", "protocol": "TCP"}])
    else:
        spec.update(type="NodePort" if via == "nodeport" else "ClusterIP",
                    ports=[{"name": "http", "port": SERVICE_PORT, "targetPort": "http",
                            "protocol": "TCP"}])
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "labels": labels(run_id, **{ROLE_LABEL: via})},
            "spec": spec}


# --------------------------------------------------------------------------- exec transport


@dataclass
class PodExecTransport:
    """Runs a command in a pod's container through the API server's exec endpoint."""

    api: Any
    """kubernetes.client.ApiClient"""
    namespace: str
    pod: str
    container: str = CONTAINER

    @property
    def node(self) -> str:
        return f"pod/{self.namespace}/{self.pod}"

    def run(self, argv: list[str], timeout_s: float) -> Completed:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException
        from kubernetes.stream import stream
        from websocket import WebSocketException

        started = time.monotonic()
        try:
            ws = stream(client.CoreV1Api(self.api).connect_get_namespaced_pod_exec,
                        self.pod, self.namespace, container=self.container, command=argv,
                        stderr=True, stdin=False, stdout=True, tty=False,
                        _preload_content=False)
        except (ApiException, WebSocketException, OSError, ValueError) as exc:
            return Completed(tuple(argv), 126, "", f"exec in {self.node}: {_one_line(exc)}",
                             time.monotonic() - started)
        out: list[str] = []
        err: list[str] = []
        timed_out = False
        status = ""
        try:
            while ws.is_open():
                ws.update(timeout=1)
                if ws.peek_stdout():
                    out.append(ws.read_stdout())
                if ws.peek_stderr():
                    err.append(ws.read_stderr())
                if time.monotonic() - started > timeout_s:
                    timed_out = True
                    break
            out.append(ws.read_stdout() if ws.peek_stdout() else "")
            err.append(ws.read_stderr() if ws.peek_stderr() else "")
            status = ws.read_channel(3)
        except (WebSocketException, OSError) as exc:
            err.append(f"\nexec stream from {self.node} lost: {_one_line(exc)}")
        finally:
            ws.close()
        rc = -9 if timed_out else exec_returncode(status)
        if rc == 255 and status:
            err.append(f"\n{self.node}: {status.strip()}")
        return Completed(tuple(argv), rc, "".join(out), "".join(err),
                         time.monotonic() - started, timed_out)

    def close(self) -> None:
        return None


def exec_returncode(status: str) -> int:
    """The exit code from the exec error channel: a Status object, Success or
    NonZeroExitCode with the code as a cause; 255 for anything else."""
    if not status.strip():
        return 255
    try:
        data = json.loads(status)
    except json.JSONDecodeError:
        try:
            data = yaml.safe_load(status)
        except yaml.YAMLError:
            return 255
    if not isinstance(data, dict):
        return 255
    if data.get("status") == "Success":
        return 0
    if data.get("reason") == "NonZeroExitCode":
        for cause in (data.get("details") or {}).get("causes") or []:
            if cause.get("reason") == "ExitCode":
                try:
                    return int(cause.get("message"))
                except (TypeError, ValueError):
                    return 255
    return 255


def _one_line(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None)
    if status is not None:
        message = reason or ""
        if isinstance(body, str | bytes):
            with contextlib.suppress(ValueError, AttributeError):
                message = json.loads(body).get("message", message)
        return f"HTTP {status}: {message}"
    return " ".join(str(exc).split())[:300]


# --------------------------------------------------------------------------- the cluster side


@dataclass
class _Deployed:
    pod: str
    node: str
    pod_ip: str
    host_ip: str


@dataclass
class ClusterSession:
    """One cluster during one run: its API client, namespace and the pods made so far."""

    cluster: ClusterSpec
    api: Any
    """kubernetes.client.ApiClient"""
    run_id: str
    content: Content
    timeouts: Timeouts = field(default_factory=Timeouts)
    facts_dir: Path | None = None
    namespace: str = ""
    _pods: dict[str, _Deployed] = field(default_factory=dict)
    _services: dict[str, str] = field(default_factory=dict)
    _ready: bool = False

    def __post_init__(self) -> None:
        self.namespace = namespace_name(self.run_id, self.cluster.name)

    @property
    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api)

    # -- namespace ---------------------------------------------------------------

    def manifests(self) -> list[dict[str, Any]]:
        """The namespace and content ConfigMaps every session starts with."""
        return [namespace_manifest(self.namespace, self.run_id),
                *content_config_maps(self.run_id, self.content, self.cluster.nginx_user)]

    def prepare(self) -> None:
        """The run's namespace and content; a namespace left by an earlier attempt of the
        same run (a resumed run) is deleted first, with whatever still runs in it."""
        if self._ready:
            return
        from kubernetes.client.exceptions import ApiException

        core = self.core
        try:
            core.read_namespace(self.namespace)
            self._delete_namespaces([self.namespace])
        except ApiException as exc:
            if exc.status != 404:
                raise PodError(f"cluster {self.cluster.name}: {_one_line(exc)}") from None
        first, *maps = self.manifests()
        self._create(lambda: core.create_namespace(first), "namespace", self.namespace)
        for cm in maps:
            self._create(functools.partial(core.create_namespaced_config_map,
                                           self.namespace, cm),
                         "ConfigMap", cm["metadata"]["name"])
        self._ready = True

    def _create(self, call: Callable[[], Any], kind: str, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            call()
        except ApiException as exc:
            raise PodError(f"cluster {self.cluster.name}: creating {kind} {name}: "
                           f"{_one_line(exc)}") from None

    # -- pods ----------------------------------------------------------------------

    def server(self, placement: Placement) -> _Deployed:
        name = f"nginx-{placement_key(placement)}"
        if name not in self._pods:
            self.prepare()
            manifest = server_pod_manifest(name, self.run_id, placement, self.cluster,
                                           self.content)
            self._pods[name] = self._start_pod(manifest, placement)
        return self._pods[name]

    def client(self, placement: Placement) -> _Deployed:
        name = f"wrk-{placement_key(placement)}"
        if name not in self._pods:
            self.prepare()
            manifest = client_pod_manifest(name, self.run_id, placement, self.cluster)
            self._pods[name] = self._start_pod(manifest, placement)
        return self._pods[name]

    def _start_pod(self, manifest: dict[str, Any], placement: Placement) -> _Deployed:
        name = manifest["metadata"]["name"]
        core = self.core
        self._create(lambda: core.create_namespaced_pod(self.namespace, manifest), "pod", name)
        pod = self.wait_pod_ready(name)
        deployed = _Deployed(pod=name, node=pod.spec.node_name or "",
                             pod_ip=pod.status.pod_ip or "", host_ip=pod.status.host_ip or "")
        self.write_facts(pod, placement)
        return deployed

    def wait_pod_ready(self, name: str) -> Any:
        """The pod once Running and Ready; PodError with its state and events when it fails
        for good (image pull, config, crash loop) or is not ready within the timeout."""
        core = self.core
        deadline = time.monotonic() + self.timeouts.pod_ready_s
        while True:
            pod = core.read_namespaced_pod(name, self.namespace)
            if _pod_ready(pod):
                return pod
            failure = _pod_failure(pod)
            if failure is not None:
                raise PodError(f"pod {self.namespace}/{name}: {failure}"
                               f"{self._events_text(name)}")
            if time.monotonic() > deadline:
                raise PodError(f"pod {self.namespace}/{name} not ready after "
                               f"{self.timeouts.pod_ready_s:.0f}s: {_pod_state(pod)}"
                               f"{self._events_text(name)}")
            time.sleep(self.timeouts.poll_s)

    def events(self, kind: str, name: str) -> list[str]:
        """The object's events, oldest first, as "Reason: message" (repeats counted)."""
        items = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.kind={kind},"
                                           f"involvedObject.name={name}").items
        items.sort(key=lambda e: _event_time(e))
        out = []
        for event in items:
            count = f" (x{event.count})" if (event.count or 1) > 1 else ""
            out.append(f"{event.reason}: {' '.join((event.message or '').split())}{count}")
        return out

    def _events_text(self, name: str) -> str:
        try:
            events = self.events("Pod", name)
        except Exception as exc:  # events only add detail to an error
            return f"; events unavailable: {_one_line(exc)}"
        return "; events: " + " | ".join(events[-8:]) if events else "; no events"

    # -- services --------------------------------------------------------------------

    def endpoint(self, server: Placement, via: str, client_pod: bool) -> Endpoint:
        deployed = self.server(server)
        node_label = f"pod/{self.namespace}/{deployed.pod}"
        if via == "pod-ip":
            return Endpoint(deployed.pod_ip, NGINX_PORT, node_label)
        if via == "headless" and not client_pod:
            raise PodError("via headless needs a client pod: a headless Service's name "
                           "resolves only in the cluster's DNS")
        service = self.service(deployed.pod, via)
        core = self.core
        svc = core.read_namespaced_service(service, self.namespace)
        if via == "headless":
            return Endpoint(f"{service}.{self.namespace}.svc", NGINX_PORT, node_label)
        if via == "clusterip":
            return Endpoint(svc.spec.cluster_ip, SERVICE_PORT, node_label)
        node_port = svc.spec.ports[0].node_port
        return Endpoint(self.node_address(deployed.node), int(node_port), node_label)

    def service(self, server_pod: str, via: str) -> str:
        key = f"{server_pod}/{via}"
        if key not in self._services:
            name = f"{server_pod}-{via}"[:63].rstrip("-")
            core = self.core
            manifest = service_manifest(name, self.run_id, server_pod, via)
            self._create(lambda: core.create_namespaced_service(self.namespace, manifest),
                         "Service", name)
            ip = self._pods[server_pod].pod_ip
            self.wait_endpoints(name, ip)
            self._services[key] = name
        return self._services[key]

    def wait_endpoints(self, service: str, pod_ip: str) -> None:
        """Until the Service's EndpointSlices list the server pod as ready."""
        from kubernetes import client

        discovery = client.DiscoveryV1Api(self.api)
        deadline = time.monotonic() + self.timeouts.endpoints_s
        while True:
            slices = discovery.list_namespaced_endpoint_slice(
                self.namespace, label_selector=f"kubernetes.io/service-name={service}").items
            ready = [a for s in slices for e in (s.endpoints or [])
                     if e.conditions is None or e.conditions.ready is not False
                     for a in e.addresses]
            if pod_ip in ready:
                return
            if time.monotonic() > deadline:
                svc = self.core.read_namespaced_service(service, self.namespace)
                selector = ",".join(f"{k}={v}" for k, v in (svc.spec.selector or {}).items())
                pods = self.core.list_namespaced_pod(self.namespace,
                                                     label_selector=selector).items
                matching = ", ".join(f"{p.metadata.name} ({_pod_state(p)})"
                                     for p in pods) or "none"
                raise PodError(
                    f"Service {self.namespace}/{service} has no ready endpoint for the server "
                    f"pod ({pod_ip or 'no pod IP'}) after {self.timeouts.endpoints_s:.0f}s: "
                    f"ready addresses {sorted(ready) or 'none'}; pods matching its selector "
                    f"{selector}: {matching}")
            time.sleep(self.timeouts.poll_s)

    def node_address(self, node: str) -> str:
        """The node's InternalIP (ExternalIP when it has none), for NodePort clients."""
        addresses = self.core.read_node(node).status.addresses or []
        for kind in ("InternalIP", "ExternalIP"):
            for address in addresses:
                if address.type == kind:
                    return str(address.address)
        raise PodError(f"node {node} reports no InternalIP or ExternalIP")

    # -- facts -------------------------------------------------------------------------

    def pod_facts(self, pod: Any, placement: Placement) -> dict[str, Any]:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        runtime_class = pod.spec.runtime_class_name
        handler = None
        overhead = None
        if runtime_class:
            try:
                rc = client.NodeV1Api(self.api).read_runtime_class(runtime_class)
                handler = rc.handler
                overhead = rc.overhead.pod_fixed if rc.overhead else None
            except ApiException:
                handler = None
        node_facts: dict[str, Any] = {"name": pod.spec.node_name}
        try:
            node = self.core.read_node(pod.spec.node_name)
            info = node.status.node_info
            node_facts.update(
                kernel=info.kernel_version, os_image=info.os_image,
                container_runtime=info.container_runtime_version,
                kubelet=info.kubelet_version, architecture=info.architecture,
                capacity=dict(node.status.capacity or {}),
                labels={k: v for k, v in (node.metadata.labels or {}).items()
                        if "kata" in k or "tdx" in k or k.startswith("node.kubernetes.io/")},
                kata_annotations={k: v for k, v in (node.metadata.annotations or {}).items()
                                  if "kata" in k},
            )
            kata_version = (node.metadata.annotations or {}).get(KATA_VERSION_ANNOTATION)
        except ApiException:
            kata_version = None
        statuses = pod.status.container_statuses or []
        is_kata = bool(handler and handler.startswith("kata"))
        return {
            "node": f"pod/{pod.metadata.namespace}/{pod.metadata.name}",
            "kind": "pod",
            "gathered_at": datetime.now(UTC).isoformat(timespec="seconds").replace(
                "+00:00", "Z"),
            "cluster": self.cluster.name,
            "namespace": pod.metadata.namespace,
            "pod": pod.metadata.name,
            "placement": placement.to_dict(),
            "runtime_class": runtime_class or DEFAULT_RUNTIME,
            "runtime_handler": handler,
            "runtime_class_overhead": overhead,
            "resources": _resources(placement),
            "qos_class": pod.status.qos_class,
            "pod_ip": pod.status.pod_ip,
            "host_ip": pod.status.host_ip,
            "image": pod.spec.containers[0].image,
            "image_id": statuses[0].image_id if statuses else None,
            "kata": {
                "version": kata_version if is_kata else None,
                # kata-deploy names handlers kata-<hypervisor config>: kata-qemu-tdx.
                "hypervisor": handler.removeprefix("kata-") if is_kata and handler else None,
            },
            "k8s_node": node_facts,
        }

    def write_facts(self, pod: Any, placement: Placement) -> None:
        if self.facts_dir is None:
            return
        facts = self.pod_facts(pod, placement)
        write_json_atomic(self.facts_dir / f"pod-{self.cluster.name}-{pod.metadata.name}.json",
                          facts)

    # -- teardown ----------------------------------------------------------------------

    def teardown(self) -> list[str]:
        """Delete every namespace of this run (by label) and wait until they are gone."""
        selector = f"{RUN_LABEL}={run_label_value(self.run_id)}"
        names = [ns.metadata.name for ns in self.core.list_namespace(
            label_selector=selector).items]
        self._delete_namespaces(names)
        self._pods.clear()
        self._services.clear()
        self._ready = False
        return names

    def _delete_namespaces(self, names: Iterable[str]) -> None:
        from kubernetes.client.exceptions import ApiException

        names = list(names)
        core = self.core
        for name in names:
            try:
                core.delete_namespace(name, grace_period_seconds=0,
                                      propagation_policy="Foreground")
            except ApiException as exc:
                if exc.status != 404:
                    raise PodError(f"deleting namespace {name}: {_one_line(exc)}") from None
        deadline = time.monotonic() + self.timeouts.namespace_gone_s
        while names:
            names = [n for n in names if _exists(functools.partial(core.read_namespace, n))]
            if not names:
                return
            if time.monotonic() > deadline:
                raise PodError(f"namespaces {', '.join(names)} still terminating after "
                               f"{self.timeouts.namespace_gone_s:.0f}s")
            time.sleep(self.timeouts.poll_s)


def _exists(read: Callable[[], Any]) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def _event_time(event: Any) -> float:
    for attr in ("last_timestamp", "event_time", "first_timestamp"):
        value = getattr(event, attr, None)
        if value is not None:
            return float(value.timestamp())
    meta = event.metadata.creation_timestamp
    return float(meta.timestamp()) if meta is not None else 0.0


def _pod_ready(pod: Any) -> bool:
    if pod.status is None or pod.status.phase != "Running":
        return False
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _pod_failure(pod: Any) -> str | None:
    status = pod.status
    if status is None:
        return None
    if status.phase in ("Failed", "Succeeded"):
        return f"phase {status.phase}: {status.reason or ''} {status.message or ''}".strip()
    for cs in status.container_statuses or []:
        waiting = cs.state.waiting if cs.state else None
        if waiting is not None and waiting.reason in _WAITING_FAILURES:
            message = " ".join((waiting.message or "").split())
            return f"container {cs.name}: {waiting.reason}" + (f": {message}" if message else "")
    return None


def _pod_state(pod: Any) -> str:
    status = pod.status
    if status is None:
        return "no status"
    parts = [f"phase {status.phase}"]
    for cond in status.conditions or []:
        if cond.status != "True":
            parts.append(f"{cond.type}={cond.status}"
                         + (f" ({cond.reason}: {' '.join((cond.message or '').split())})"
                            if cond.reason else ""))
    for cs in status.container_statuses or []:
        waiting = cs.state.waiting if cs.state else None
        if waiting is not None:
            parts.append(f"container {cs.name} waiting: {waiting.reason}")
    return ", ".join(parts)


# --------------------------------------------------------------------------- the driver


def new_api_client(kubeconfig: Path) -> Any:
    """A client for one kubeconfig, leaving the process-wide configuration alone."""
    from kubernetes import config

    return config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]


@dataclass
class PodDriver:
    """Availability, transports and endpoints of pod placements, for one lab and run."""

    lab: Lab
    run_dir: Path | None = None
    """The run directory: its name is the run id, facts go to its facts/."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    api_factory: Callable[[Path], Any] = new_api_client
    _sessions: dict[str, ClusterSession] = field(default_factory=dict)
    _run_id: str = ""
    _content: Content | None = None
    teardown_errors: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        if not self._run_id:
            self._run_id = (self.run_dir.name if self.run_dir is not None
                            else f"adhoc-{secrets.token_hex(4)}")
        return self._run_id

    def _root(self) -> Path:
        if self.lab.root is not None:
            return self.lab.root
        return Path(__file__).resolve().parents[2]

    # -- which cluster ------------------------------------------------------------------

    def find_cluster(self, placement: Placement) -> tuple[LabHost, ClusterSpec] | str:
        clusters = self.lab.clusters()
        where = f"cvmharness_clusters in {self.lab.inventory}"
        if not clusters:
            return f"lab '{self.lab.name}' declares no Kubernetes cluster ({where})"
        candidates = [(h, c) for h, c in clusters
                      if (placement.cluster is None or c.name == placement.cluster)
                      and c.inside == placement.inside]
        if not candidates:
            if placement.cluster is not None:
                return (f"lab '{self.lab.name}' declares no cluster {placement.cluster!r}"
                        + (f" inside {placement.inside}" if placement.inside else "")
                        + f" ({where})")
            inside = f"inside {placement.inside}" if placement.inside else "on a host"
            return f"lab '{self.lab.name}' declares no cluster {inside} ({where})"
        matching = [(h, c) for h, c in candidates if placement.name in c.runtime_classes]
        if not matching:
            names = ", ".join(repr(c.name) for _, c in candidates)
            return (f"no cluster of lab '{self.lab.name}' declares runtime class "
                    f"{placement.name!r} (cluster {names}: runtime_classes in "
                    f"{self.lab.inventory})")
        if len(matching) > 1:
            names = ", ".join(c.name for _, c in matching)
            return (f"runtime class {placement.name!r} is declared by clusters {names}: "
                    "name one with 'cluster:' in the placement")
        return matching[0]

    def _require(self, placement: Placement) -> tuple[LabHost, ClusterSpec]:
        found = self.find_cluster(placement)
        assert not isinstance(found, str), "availability() is checked before use"
        return found

    def kubeconfig(self, cluster: ClusterSpec) -> Path:
        if cluster.kubeconfig:
            path = Path(cluster.kubeconfig).expanduser()
            return path if path.is_absolute() else self._root() / path
        return self._root() / "state" / "kubeconfig" / f"{cluster.name}.yaml"

    # -- Driver protocol ------------------------------------------------------------------

    def availability(self, placement: Placement) -> str | None:
        found = self.find_cluster(placement)
        return found if isinstance(found, str) else None

    def nodes(self, placement: Placement) -> list[str]:
        """Inventory nodes whose facts and preflight matter: the cluster's host (and the
        guest the cluster runs in)."""
        host, cluster = self._require(placement)
        if cluster.inside:
            return [host.name, cluster.inside.partition(":")[2]]
        return [host.name]

    def session(self, cluster: ClusterSpec) -> ClusterSession:
        if cluster.name not in self._sessions:
            path = self.kubeconfig(cluster)
            if not path.is_file():
                raise PodError(f"cluster {cluster.name!r}: no kubeconfig at {path} "
                               "(run: cvmharness provision)")
            if self._content is None:
                self._content = Content.from_project(self._root())
            self._sessions[cluster.name] = ClusterSession(
                cluster=cluster, api=self.api_factory(path), run_id=self.run_id,
                content=self._content, timeouts=self.timeouts,
                facts_dir=None if self.run_dir is None else self.run_dir / "facts")
        return self._sessions[cluster.name]

    def client_node(self, placement: Placement) -> LabHost:
        _, cluster = self._require(placement)
        session = self.session(cluster)
        deployed = session.client(placement)
        return LabHost(name=f"pod/{session.namespace}/{deployed.pod}",
                       vars=HostVars(ansible_connection="kubernetes-exec",
                                     wrk_prefix=cluster.wrk_prefix),
                       raw={"cvmharness_pod_node": deployed.node})

    def client_transport(self, placement: Placement) -> PodExecTransport:
        _, cluster = self._require(placement)
        session = self.session(cluster)
        deployed = session.client(placement)
        return PodExecTransport(session.api, session.namespace, deployed.pod)

    def endpoint(self, server: Placement, client: Placement, port: int | None,
                 via: str | None) -> Endpoint:
        host, cluster = self._require(server)
        client_pod = client.kind == "pod"
        if client_pod:
            found = self.find_cluster(client)
            if isinstance(found, str) or found[1].name != cluster.name:
                raise PodError(f"{client.label()} and {server.label()} are not pods of the "
                               "same cluster")
        chosen = via or ("clusterip" if client_pod else "nodeport")
        if not client_pod and chosen != "nodeport" and (
                cluster.inside or client.kind != "host"
                or self.lab.host(client.name) is None
                or self.lab.host(client.name) != host):
            raise PodError(f"{client.label()} is not a node of cluster {cluster.name!r}: it "
                           f"reaches {server.label()} only via nodeport, not {chosen}")
        return self.session(cluster).endpoint(server, chosen, client_pod)

    # -- preflight and teardown -------------------------------------------------------------

    def preflight(self, placements: Iterable[tuple[str, Placement]]) -> list[str]:
        """Read-only: what keeps the lab from running these (role, placement) pairs.

        Each problem is one line; an empty list means ready.
        """
        problems: list[str] = []
        needed: dict[str, tuple[ClusterSpec, set[str], bool, set[str]]] = {}
        for role, placement in placements:
            if placement.kind != "pod":
                continue
            found = self.find_cluster(placement)
            if isinstance(found, str):
                continue  # a skipped cell
            _, cluster = found
            entry = needed.setdefault(cluster.name, (cluster, set(), False, set()))
            if placement.name and placement.name != DEFAULT_RUNTIME:
                entry[1].add(placement.name)
            if placement.node:
                entry[3].add(placement.node)
            if role == "client":
                needed[cluster.name] = (entry[0], entry[1], True, entry[3])
        if not needed:
            return problems
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        for name, (cluster, classes, has_client, nodes) in sorted(needed.items()):
            path = self.kubeconfig(cluster)
            if not path.is_file():
                problems.append(f"cluster {name!r}: no kubeconfig at {path} "
                                "(run: cvmharness provision)")
                continue
            if has_client and cluster.wrk_image is None:
                problems.append(f"cluster {name!r}: client pods need a wrk image: set "
                                f"wrk_image in cvmharness_clusters ({self.lab.inventory}); "
                                "see docs/pods.md")
            try:
                api = self.api_factory(path)
            except Exception as exc:  # any kubeconfig problem is reported
                problems.append(f"cluster {name!r}: kubeconfig {path}: {_one_line(exc)}")
                continue
            try:
                client.VersionApi(api).get_code(_request_timeout=15)
                node_api = client.NodeV1Api(api)
                for rc in sorted(classes):
                    if not _exists(functools.partial(node_api.read_runtime_class, rc,
                                                     _request_timeout=15)):
                        problems.append(f"cluster {name!r}: RuntimeClass {rc!r} does not "
                                        "exist (run: cvmharness provision)")
                core = client.CoreV1Api(api)
                for node in sorted(nodes):
                    if not _exists(functools.partial(core.read_node, node,
                                                     _request_timeout=15)):
                        problems.append(f"cluster {name!r}: no node {node!r}")
            except (ApiException, HTTPError, OSError) as exc:
                problems.append(f"cluster {name!r}: API server of {path} unreachable or "
                                f"refusing: {_one_line(exc)}")
            finally:
                api.close()
        return problems

    def close(self) -> None:
        """Delete what this run created in every cluster it used; wait until it is gone.

        Never raises (it runs while a run ends, whatever ended it): what could not be
        deleted is kept in ``teardown_errors`` and said on stderr, with the command that
        removes it later.
        """
        for session in self._sessions.values():
            try:
                session.teardown()
            except Exception as exc:  # every cluster gets its teardown
                self.teardown_errors.append(f"cluster {session.cluster.name}: "
                                            f"{_one_line(exc)}")
            finally:
                session.api.close()
        self._sessions.clear()
        for error in self.teardown_errors:
            print(f"warning: pod teardown: {error} (run: cvmharness teardown)",
                  file=sys.stderr)


def teardown_lab(lab: Lab, api_factory: Callable[[Path], Any] = new_api_client) -> list[str]:
    """Every namespace cvmharness created in the lab's clusters (runs killed before their
    own teardown included), deleted; returns their names."""
    driver = PodDriver(lab, api_factory=api_factory)
    deleted: list[str] = []
    problems: list[str] = []
    for _, cluster in lab.clusters():
        path = driver.kubeconfig(cluster)
        if not path.is_file():
            continue  # never provisioned, or already torn down
        try:
            api = api_factory(path)
        except Exception as exc:  # any kubeconfig problem is reported
            problems.append(f"cluster {cluster.name}: kubeconfig {path}: {_one_line(exc)}")
            continue
        try:
            session = ClusterSession(cluster=cluster, api=api, run_id="teardown",
                                     content=Content(b"", {}, ""))
            core = session.core
            names = [ns.metadata.name for ns in core.list_namespace(
                label_selector=f"{MANAGED_BY[0]}={MANAGED_BY[1]}").items]
            session._delete_namespaces(names)
            deleted += names
        except Exception as exc:  # the other clusters still get their teardown
            problems.append(f"cluster {cluster.name}: {_one_line(exc)}")
        finally:
            api.close()
    if problems:
        raise PodError("pod teardown: " + "; ".join(problems))
    return deleted
