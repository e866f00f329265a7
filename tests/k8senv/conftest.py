from __future__ import annotations

import pytest

from .fixtures import k8s_api, k8s_env

__all__ = ["k8s_api", "k8s_env"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "k8senv: runs against a real kube-apiserver on loopback (tests/k8senv)"
    )
