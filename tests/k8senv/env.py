"""A real Kubernetes control plane on loopback, for tests.

`K8sTestEnv` runs, each as a child process bound to 127.0.0.1 only:

* kine                    -- the etcd v3 API on a SQLite file in work_dir
* kube-apiserver          -- the real one, TLS with a throwaway CA, RBAC
* kube-controller-manager -- optional (default on): namespaces, service accounts, endpoints,
                             endpointslices, garbage collection, workloads, node lifecycle
* kube-scheduler          -- optional (default on): pods without spec.nodeName get scheduled
* kwok                    -- fakes the kubelets: annotated Nodes become Ready, bound Pods get
                             a pod IP and reach Running (no container ever runs)

The binaries come from tools/k8s-testenv/build.sh (cache dir, see `default_cache_dir`).

Nothing behind the fake nodes exists: pod IPs (10.244.N.x), ClusterIPs (10.96.x.x) are
just data in the API.  Never send traffic to them.  The fake nodes' InternalIPs are loopback
addresses (127.0.100.N) so that a stray connection to a node/NodePort stays on this machine.

    with K8sTestEnv(cache_dir, work_dir) as env:
        kubernetes.config.load_kube_config(str(env.kubeconfig))

Run it by hand with tools/k8s-testenv/start.sh / stop.sh, or:
    python3 tests/k8senv/env.py serve --work-dir /tmp/k8s
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tools" / "k8s-testenv" / "build.sh"

BINARIES = ("kine", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
KWOK_STAGES = Path("share") / "kwok-stages.yaml"

#: kwok manages only Nodes carrying this annotation (so it never touches a real node).
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_ANNOTATION_VALUE = "fake"

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
FRONT_PROXY_CN = "front-proxy-client"

#: Controllers kube-controller-manager runs (its names as of v1.34).  Pass ("*",) for all.
DEFAULT_CONTROLLERS: tuple[str, ...] = (
    "namespace-controller",
    "serviceaccount-controller",
    "garbage-collector-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "replicaset-controller",
    "deployment-controller",
    "statefulset-controller",
    "daemonset-controller",
    "job-controller",
    "cronjob-controller",
    "ttl-after-finished-controller",
    "disruption-controller",
    "resourcequota-controller",
    "node-lifecycle-controller",
    "pod-garbage-collector-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "service-cidr-controller",
)


class K8sEnvError(RuntimeError):
    """The test environment could not be built, started or reached."""


def default_cache_dir() -> Path:
    """Where build.sh puts the binaries: $CVMH_K8S_CACHE, else the XDG cache dir."""
    explicit = os.environ.get("CVMH_K8S_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "cvmharness" / "k8s-testenv"


def missing_binaries(cache_dir: Path | str | None = None) -> list[str]:
    """Names of the build outputs that are not in cache_dir (empty when all are built)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    missing = [b for b in BINARIES if not os.access(cache / "bin" / b, os.X_OK)]
    if not (cache / KWOK_STAGES).is_file():
        missing.append(str(KWOK_STAGES))
    return missing


def build(cache_dir: Path | str | None = None, *, force: bool = False) -> None:
    """Run tools/k8s-testenv/build.sh (a no-op when the stamp says it is up to date)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    env = dict(os.environ, CVMH_K8S_CACHE=str(cache))
    cmd = ["bash", str(BUILD_SCRIPT), *(["--force"] if force else [])]
    result = subprocess.run(cmd, env=env, check=False)
    if result.returncode != 0:
        raise K8sEnvError(f"{' '.join(cmd)} failed with exit code {result.returncode}")


@dataclass(frozen=True)
class FakeNode:
    """A Node object that kwok keeps Ready.  Labels are merged over the usual kubelet ones."""

    name: str
    internal_ip: str
    pod_cidr: str
    labels: Mapping[str, str] = field(default_factory=dict)
    cpu: str = "16"
    memory: str = "64Gi"
    pods: str = "110"

    def manifest(self) -> dict[str, Any]:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": "kwok",
            "type": "kwok",
            **self.labels,
        }
        resources = {"cpu": self.cpu, "memory": self.memory, "pods": self.pods}
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": labels,
                "annotations": {
                    KWOK_NODE_ANNOTATION: KWOK_NODE_ANNOTATION_VALUE,
                    "node.alpha.kubernetes.io/ttl": "0",
                },
            },
            "spec": {"podCIDR": self.pod_cidr, "podCIDRs": [self.pod_cidr]},
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "addresses": [
                    {"type": "InternalIP", "address": self.internal_ip},
                    {"type": "Hostname", "address": self.name},
                ],
                "nodeInfo": {
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "osImage": "kwok fake node",
                    "kernelVersion": "kwok",
                    "containerRuntimeVersion": "kwok",
                    "kubeletVersion": "kwok",
                    "kubeProxyVersion": "kwok",
                    "bootID": "",
                    "machineID": "",
                    "systemUUID": "",
                },
            },
        }


DEFAULT_NODES: tuple[FakeNode, ...] = (
    FakeNode("kwok-node-0", "127.0.100.1", "10.244.0.0/24"),
    FakeNode("kwok-node-1", "127.0.100.2", "10.244.1.0/24"),
)


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM the child when the thread that started it dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class _Pki:
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    proxy_cert: Path
    proxy_key: Path
    sa_key: Path
    sa_pub: Path


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _make_pki(directory: Path) -> _Pki:
    """A throwaway CA, a serving cert for 127.0.0.1 and an admin (system:masters) client cert."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(hours=1)
    not_after = now + datetime.timedelta(days=30)

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def cert_pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cvmharness-k8s-testenv-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        subject: x509.Name, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    first_service_ip = next(ipaddress.IPv4Network(SERVICE_CIDR).hosts())
    serving, serving_key = leaf(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
            x509.IPAddress(first_service_ip),
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
            x509.DNSName("kubernetes.default.svc.cluster.local"),
        ],
    )
    admin, admin_key = leaf(
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                x509.NameAttribute(NameOID.COMMON_NAME, "cvmharness-admin"),
            ]
        ),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        [],
    )
    # The aggregation layer's client cert (front proxy); the CA doubles as requestheader CA.
    proxy, proxy_key = leaf(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, FRONT_PROXY_CN)]),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        [],
    )
    sa_key = ec.generate_private_key(ec.SECP256R1())

    pki = _Pki(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        admin_cert=directory / "admin.crt",
        admin_key=directory / "admin.key",
        proxy_cert=directory / "front-proxy-client.crt",
        proxy_key=directory / "front-proxy-client.key",
        sa_key=directory / "sa.key",
        sa_pub=directory / "sa.pub",
    )
    pki.ca_cert.write_bytes(cert_pem(ca_cert))
    _write_private(pki.ca_key, key_pem(ca_key))
    pki.serving_cert.write_bytes(cert_pem(serving))
    _write_private(pki.serving_key, key_pem(serving_key))
    pki.admin_cert.write_bytes(cert_pem(admin))
    _write_private(pki.admin_key, key_pem(admin_key))
    pki.proxy_cert.write_bytes(cert_pem(proxy))
    _write_private(pki.proxy_key, key_pem(proxy_key))
    _write_private(pki.sa_key, key_pem(sa_key))
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki


def _kubeconfig_text(server: str, pki: _Pki) -> str:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "k8s-testenv",
                "cluster": {"server": server, "certificate-authority-data": b64(pki.ca_cert)},
            }
        ],
        "users": [
            {
                "name": "cvmharness-admin",
                "user": {
                    "client-certificate-data": b64(pki.admin_cert),
                    "client-key-data": b64(pki.admin_key),
                },
            }
        ],
        "contexts": [
            {
                "name": "k8s-testenv",
                "context": {"cluster": "k8s-testenv", "user": "cvmharness-admin"},
            }
        ],
        "current-context": "k8s-testenv",
    }
    return json.dumps(config, indent=2) + "\n"  # JSON is YAML


# --------------------------------------------------------------------------- the environment


class K8sTestEnv:
    """Context manager: a loopback control plane with fake (kwok) nodes.

    cache_dir: where build.sh put bin/ and share/ (default: `default_cache_dir()`).
    work_dir:  created by start() (must not exist, or be empty) and removed by stop().
               Default: a fresh temporary directory.

    After start(): `kubeconfig`, `server`, `port`, `ca_file`, `client_cert_file`,
    `client_key_file`, `pids`, `logs_dir` are set.
    """

    def __init__(
        self,
        cache_dir: Path | str | None = None,
        work_dir: Path | str | None = None,
        *,
        controller_manager: bool = True,
        scheduler: bool = True,
        nodes: Sequence[FakeNode] = DEFAULT_NODES,
        controllers: Sequence[str] = DEFAULT_CONTROLLERS,
        extra_apiserver_args: Sequence[str] = (),
        keep_work_dir: bool = False,
        startup_timeout: float = 120.0,
    ) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._work_dir_arg = Path(work_dir) if work_dir is not None else None
        self.controller_manager = controller_manager
        self.scheduler = scheduler
        self.nodes = tuple(nodes)
        self.controllers = tuple(controllers)
        self.extra_apiserver_args = tuple(extra_apiserver_args)
        self.keep_work_dir = keep_work_dir
        self.startup_timeout = startup_timeout

        self._procs: list[_Process] = []
        self._ssl: ssl.SSLContext | None = None
        self._started = False
        self.work_dir: Path | None = None
        self.port = 0
        self.server = ""
        self.kubeconfig = Path()
        self.ca_file = Path()
        self.client_cert_file = Path()
        self.client_key_file = Path()
        self.logs_dir = Path()

    # -- context manager ----------------------------------------------------------------

    def __enter__(self) -> K8sTestEnv:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pids(self) -> dict[str, int]:
        return {p.name: p.popen.pid for p in self._procs}

    # -- start / stop ---------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            raise K8sEnvError("already started")
        missing = missing_binaries(self.cache_dir)
        if missing:
            raise K8sEnvError(
                f"not built in {self.cache_dir}: {', '.join(missing)} "
                f"(run {BUILD_SCRIPT.relative_to(REPO_ROOT)})"
            )
        self.work_dir = self._make_work_dir()
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every child by PID (SIGTERM, then SIGKILL) in reverse order; remove work_dir."""
        for proc in reversed(self._procs):
            self._terminate(proc)
        self._procs.clear()
        if self.work_dir is not None and not self.keep_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        self._started = False

    def _make_work_dir(self) -> Path:
        if self._work_dir_arg is None:
            return Path(tempfile.mkdtemp(prefix="cvmh-k8senv-"))
        wd = self._work_dir_arg.resolve()
        if wd.exists() and any(wd.iterdir()):
            # stop() removes work_dir: refuse to adopt a directory that holds anything.
            raise K8sEnvError(f"work_dir {wd} exists and is not empty")
        wd.mkdir(parents=True, exist_ok=True)
        return wd

    def _start(self) -> None:
        assert self.work_dir is not None
        wd = self.work_dir
        bin_dir = self.cache_dir / "bin"
        self.logs_dir = wd / "logs"
        self.logs_dir.mkdir()
        (wd / "data").mkdir()
        pki = _make_pki(wd / "pki")
        self.ca_file, self.client_cert_file, self.client_key_file = (
            pki.ca_cert,
            pki.admin_cert,
            pki.admin_key,
        )
        deadline = time.monotonic() + self.startup_timeout

        # kine: etcd v3 API over SQLite, loopback only, no metrics listener.
        kine_port = _free_port()
        kine = self._spawn(
            "kine",
            [
                str(bin_dir / "kine"),
                f"--endpoint=sqlite://{wd / 'data' / 'state.db'}",
                f"--listen-address=127.0.0.1:{kine_port}",
                "--metrics-bind-address=0",
            ],
        )
        self._wait(deadline, f"kine on 127.0.0.1:{kine_port}", lambda: _port_open(kine_port), kine)

        # kube-apiserver
        self.port = _free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        args = [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{kine_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--cert-dir={wd / 'pki'}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--requestheader-client-ca-file={pki.ca_cert}",
            f"--requestheader-allowed-names={FRONT_PROXY_CN}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.proxy_cert}",
            f"--proxy-client-key-file={pki.proxy_key}",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            # Nothing serves 127.0.0.1 for the in-cluster `kubernetes` Service, and Endpoints
            # may not hold loopback addresses: leave that Service without endpoints.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            # Pod logs/exec/port-forward dial the "kubelet" at the node's InternalIP (a
            # loopback address here, where nothing listens) -- never a hostname lookup.
            "--kubelet-preferred-address-types=InternalIP",
        ]
        if not self.controller_manager:
            # No serviceaccount controller creates `default` ServiceAccounts: pods would be
            # rejected by the ServiceAccount admission plugin.
            args.append("--disable-admission-plugins=ServiceAccount")
        args.extend(self.extra_apiserver_args)
        apiserver = self._spawn("kube-apiserver", args)
        self._ssl = ssl.create_default_context(cafile=str(pki.ca_cert))
        self._ssl.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        self._wait(deadline, f"{self.server}/readyz", self._readyz, apiserver)

        self.kubeconfig = wd / "kubeconfig"
        self.kubeconfig.write_text(_kubeconfig_text(self.server, pki))
        self.kubeconfig.chmod(0o600)
        kc = str(self.kubeconfig)

        if self.controller_manager:
            self._spawn(
                "kube-controller-manager",
                [
                    str(bin_dir / "kube-controller-manager"),
                    f"--kubeconfig={kc}",
                    f"--authentication-kubeconfig={kc}",
                    f"--authorization-kubeconfig={kc}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={_free_port()}",
                    f"--cert-dir={wd / 'pki' / 'kcm'}",
                    "--leader-elect=false",
                    f"--controllers={','.join(self.controllers)}",
                    f"--root-ca-file={pki.ca_cert}",
                    f"--service-account-private-key-file={pki.sa_key}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--node-monitor-period=5s",
                    "--kube-api-qps=100",
                    "--kube-api-burst=200",
                ],
            )
        if self.scheduler:
            self._spawn(
                "kube-scheduler",
                [
                    str(bin_dir / "kube-scheduler"),
                    f"--kubeconfig={kc}",
                    f"--authentication-kubeconfig={kc}",
                    f"--authorization-kubeconfig={kc}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={_free_port()}",
                    f"--cert-dir={wd / 'pki' / 'scheduler'}",
                    "--leader-elect=false",
                    "--kube-api-qps=100",
                    "--kube-api-burst=200",
                ],
            )
        self._spawn(
            "kwok",
            [
                str(bin_dir / "kwok"),
                f"--kubeconfig={kc}",
                f"--config={self.cache_dir / KWOK_STAGES}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector="
                f"{KWOK_NODE_ANNOTATION}={KWOK_NODE_ANNOTATION_VALUE}",
                "--cidr=10.244.0.0/16",
                "--node-ip=127.0.100.254",
            ],
        )

        for node in self.nodes:
            self.request("POST", "/api/v1/nodes", node.manifest())
        names = [node.name for node in self.nodes]
        self._wait(deadline, f"nodes {names} Ready", lambda: all(map(self._node_ready, names)))
        if self.controller_manager:
            self._wait(
                deadline,
                "ServiceAccount default/default",
                lambda: self._exists("/api/v1/namespaces/default/serviceaccounts/default"),
            )

    # -- processes ------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> _Process:
        assert self.work_dir is not None
        log_path = self.logs_dir / f"{name}.log"
        log_file = log_path.open("ab")
        try:
            popen = subprocess.Popen(
                args,
                cwd=self.work_dir,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # only prctl(2): safe after fork
            )
        except BaseException:
            log_file.close()
            raise
        proc = _Process(name, popen, log_path, log_file)
        self._procs.append(proc)
        return proc

    @staticmethod
    def _terminate(proc: _Process, grace: float = 15.0) -> None:
        popen = proc.popen
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(popen.pid, signal.SIGKILL)
                popen.wait(timeout=grace)
        proc.log_file.close()

    def exited(self) -> dict[str, int]:
        """Children that have exited, with their exit codes (empty while all run)."""
        return {p.name: rc for p in self._procs if (rc := p.popen.poll()) is not None}

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs_dir / f"{name}.log"
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait(
        self,
        deadline: float,
        what: str,
        ready: Callable[[], bool],
        proc: _Process | None = None,
    ) -> None:
        while True:
            for p in [proc] if proc is not None else self._procs:
                if p.popen.poll() is not None:
                    raise K8sEnvError(
                        f"{p.name} exited with {p.popen.returncode} while waiting for {what}:\n"
                        f"{self.log_tail(p.name)}"
                    )
            if ready():
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {p.name}\n{self.log_tail(p.name, 15)}" for p in self._procs)
                raise K8sEnvError(f"timed out waiting for {what}\n{tails}")
            time.sleep(0.2)

    # -- API helpers (stdlib only, so the env needs no Kubernetes client) -------------------

    def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, timeout: float = 10
    ) -> Any:
        """One JSON request to the API server as the admin user; returns the decoded body."""
        if self._ssl is None:
            raise K8sEnvError("not started")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, context=self._ssl, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw.startswith(b"{") else raw.decode()

    def _readyz(self) -> bool:
        try:
            return bool(self.request("GET", "/readyz", timeout=2) == "ok")
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _exists(self, path: str) -> bool:
        try:
            self.request("GET", path)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return False
            raise
        return True

    def _node_ready(self, name: str) -> bool:
        node = self.request("GET", f"/api/v1/nodes/{name}")
        conditions = node.get("status", {}).get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        if not ready:
            return False
        if self.controller_manager:
            # The node-lifecycle controller lifts the not-ready taint the API server put on
            # at creation (TaintNodesByCondition); until then nothing schedules there.
            taints = node.get("spec", {}).get("taints") or []
            return not any(t.get("key", "").startswith("node.kubernetes.io/") for t in taints)
        return True


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --------------------------------------------------------------------------- CLI


def _serve(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="env.py serve")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--no-controller-manager", action="store_true")
    parser.add_argument("--no-scheduler", action="store_true")
    args = parser.parse_args(argv)

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    env = K8sTestEnv(
        args.cache_dir,
        args.work_dir,
        controller_manager=not args.no_controller_manager,
        scheduler=not args.no_scheduler,
    )
    with env:
        info = {"server": env.server, "kubeconfig": str(env.kubeconfig), "pids": env.pids}
        assert env.work_dir is not None
        (env.work_dir / "env.json").write_text(json.dumps(info, indent=2) + "\n")
        print(json.dumps(info), flush=True)
        while True:
            exited = env.exited()
            if exited:
                print(f"exited: {exited}; stopping the rest", file=sys.stderr)
                return 1
            time.sleep(1)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return _serve(argv[1:])
    if argv[:1] == ["build"]:
        build(force="--force" in argv)
        return 0
    print("usage: env.py serve --work-dir DIR [--cache-dir DIR] | env.py build [--force]")
    return 2


if __name__ == "__main__":
    sys.exit(main())
