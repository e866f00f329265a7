"""Filters of the kata role.

The containerd check parses the config k3s rendered (TOML) and names what is missing;
the TDX decision reuses the harness's own reading of the host signals
(cvmharness.libvirt.tdx_host_state) on what roles/libvirt_host's probe module read.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from typing import Any

from ansible.errors import AnsibleFilterError

_VERSION = re.compile(r"kata-runtime\s*:\s*(\S+)")
_K3S = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")

# containerd's CRI runtime plugin id per config version.
PLUGIN_IDS = {3: "io.containerd.cri.v1.runtime", 2: "io.containerd.grpc.v1.cri"}


def kata_installed_version(stdout: str) -> str:
    """The version `kata-runtime --version` prints (`kata-runtime  : 3.21.0`), or ''."""
    match = _VERSION.search(stdout or "")
    return match.group(1) if match else ""


def kata_containerd_config_version(k3s_version: str) -> int:
    """3 for a k3s that ships containerd 2.x (v1.31.6+, v1.32.2+), else 2.

    k3s reads config-v3.toml.tmpl (config version 3) before config.toml.tmpl from those
    releases on; older ones only read config.toml.tmpl.
    """
    match = _K3S.match(k3s_version or "")
    if not match:
        raise AnsibleFilterError(f"cannot read a k3s version from {k3s_version!r}")
    version = tuple(int(p) for p in match.groups())
    containerd2 = version >= (1, 32, 2) or (1, 31, 6) <= version < (1, 32, 0)
    return 3 if containerd2 else 2


def kata_containerd_runtimes(text: str) -> dict[str, dict[str, Any]]:
    """The CRI runtimes a rendered containerd config declares, by handler name."""
    try:
        config = tomllib.loads(text or "")
    except tomllib.TOMLDecodeError as err:
        raise AnsibleFilterError(f"the containerd config is not valid TOML: {err}") from err
    version = int(config.get("version", 1))
    plugin = config.get("plugins", {}).get(PLUGIN_IDS.get(version, "cri"), {})
    runtimes = plugin.get("containerd", {}).get("runtimes", {})
    return {
        name: {
            "runtime_type": entry.get("runtime_type"),
            "runtime_path": entry.get("runtime_path"),
            "config_path": entry.get("options", {}).get("ConfigPath"),
        }
        for name, entry in runtimes.items()
    }


def kata_expected_runtimes(shims: list[str], config_dir: str) -> list[dict[str, str]]:
    """The containerd runtime entry each shim gets, as kata-deploy names them."""
    return [
        {
            "name": f"kata-{shim}",
            "runtime_type": f"io.containerd.kata-{shim}.v2",
            "config_path": f"{config_dir}/configuration-{shim}.toml",
        }
        for shim in shims
    ]


def kata_containerd_missing(text: str, expected: list[dict[str, str]]) -> list[str]:
    """What the rendered config lacks of the expected runtimes, one phrase each."""
    try:
        found = kata_containerd_runtimes(text)
    except AnsibleFilterError as err:
        return [str(err)]
    problems = []
    for want in expected:
        name = want["name"]
        have = found.get(name)
        if have is None:
            problems.append(f"no runtime {name!r}")
            continue
        for key in ("runtime_type", "config_path"):
            if have.get(key) != want[key]:
                problems.append(f"runtime {name!r} has {key} {have.get(key)!r}, not {want[key]!r}")
    return problems


def kata_tdx_reasons(virt: dict[str, Any]) -> list[str]:
    """Why this host cannot launch TDX guests (empty: it can), from the probe's signals.

    Kata starts QEMU itself, so libvirt's domain capabilities only count where libvirt
    is installed.
    """
    try:
        from cvmharness.libvirt import HostSignals, tdx_host_state
    except ImportError as err:
        raise AnsibleFilterError(
            "the kata role reads TDX readiness with the cvmharness package; "
            f"install it on the controller (pip install -e .): {err}"
        ) from err
    tdx = virt.get("tdx", {})
    kvm = virt.get("kvm", {})
    dmesg = tdx.get("dmesg_lines")
    signals = HostSignals(
        kvm_intel_tdx=tdx.get("kvm_intel_tdx_param"),
        dmesg=tuple(dmesg) if dmesg is not None else None,
        cpu_flags=("tdx_host_platform",) if tdx.get("cpuinfo_tdx_host_platform") else (),
        domcapabilities=tdx.get("domcapabilities_kvm"),
        kvm_modules=tuple(kvm.get("vendor_modules", ())),
        dev_kvm=kvm.get("dev_kvm"),
    )
    reasons = list(tdx_host_state(signals).reasons)
    if virt.get("libvirt_version") is None:
        # Without libvirt its domain capabilities do not apply: judge the other signals.
        applicable = dataclasses.replace(signals, domcapabilities=_TDX_DOMCAPS)
        reasons = list(tdx_host_state(applicable).reasons)
    return reasons


_TDX_DOMCAPS = (
    "<domainCapabilities><features><tdx supported='yes'/></features></domainCapabilities>"
)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "kata_installed_version": kata_installed_version,
            "kata_containerd_config_version": kata_containerd_config_version,
            "kata_containerd_runtimes": kata_containerd_runtimes,
            "kata_containerd_missing": kata_containerd_missing,
            "kata_expected_runtimes": kata_expected_runtimes,
            "kata_tdx_reasons": kata_tdx_reasons,
        }
