"""pytest fixtures for the loopback Kubernetes test environment.

Use from a conftest.py next to your tests:

    from tests.k8senv.fixtures import k8s_api, k8s_env  # noqa: F401   (rootdir on sys.path)
    # or, inside tests/k8senv itself:  from .fixtures import k8s_api, k8s_env

`k8s_env` is session-scoped: one control plane for the whole run (~5-10 s to start).
The binaries are built on first use (a cold build takes 13-30 min on 2 cores, see
tools/k8s-testenv/README.md; cached afterwards). CVMH_BUILD_K8S=0 skips these tests
instead when nothing is built; without a Go toolchain they skip with that reason.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from .env import BUILD_SCRIPT, REPO_ROOT, K8sTestEnv, build, default_cache_dir, missing_binaries

BUILD_ENV_VAR = "CVMH_BUILD_K8S"


def _ensure_built() -> None:
    cache = default_cache_dir()
    missing = missing_binaries(cache)
    if not missing:
        if shutil.which("go") is not None:
            build(cache)  # a no-op unless the pinned versions changed
        return
    if os.environ.get(BUILD_ENV_VAR, "") == "0":
        pytest.skip(f"Kubernetes test env not built in {cache} (missing: "
                    f"{', '.join(missing)}) and {BUILD_ENV_VAR}=0; run "
                    f"{BUILD_SCRIPT.relative_to(REPO_ROOT)} to build it")
    if shutil.which("go") is None:
        pytest.skip(f"Kubernetes test env not built in {cache} and no Go toolchain to "
                    f"build it with ({BUILD_SCRIPT.relative_to(REPO_ROOT)})")
    build(cache)


@pytest.fixture(scope="session")
def k8s_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[K8sTestEnv]:
    """A running kube-apiserver (+ controller-manager, scheduler, kwok nodes) on 127.0.0.1."""
    _ensure_built()
    pytest.importorskip("cryptography", reason="K8sTestEnv makes its certificates with it")
    work_dir = tmp_path_factory.mktemp("k8senv")
    with K8sTestEnv(default_cache_dir(), work_dir) as env:
        yield env


@pytest.fixture(scope="session")
def k8s_api(k8s_env: K8sTestEnv) -> Iterator[Any]:
    """A `kubernetes.client.ApiClient` for k8s_env's admin user (skips without the client)."""
    kubernetes = pytest.importorskip("kubernetes", reason="pip install kubernetes")
    api_client = kubernetes.config.new_client_from_config(config_file=str(k8s_env.kubeconfig))
    try:
        yield api_client
    finally:
        api_client.close()
