#!/usr/bin/python
"""Ansible module: the virtualization signals of a lab host, read-only.

Reports every signal the field uses to tell whether KVM can run full guests and whether
the host can launch TDX trust domains, each as read (None when unreadable, never
guessed), and picks the guest domain type. The harness interprets the same signals
(cvmharness.libvirt.tdx_host_state) to say precisely why a td cell cannot run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: cvmharness_virt_probe
short_description: Read KVM and Intel TDX readiness signals of a libvirt host
description:
  - Reads /dev/kvm, the loaded KVM vendor module, cpuinfo flags, the kvm_intel tdx
    parameter, the kernel log lines of the TDX module and libvirt's domain capabilities.
  - Picks the domain type for guests, kvm when KVM can run full guests, otherwise qemu.
options:
  uri:
    description: libvirt URI for domcapabilities.
    type: str
    default: "qemu:///system"
  domain_type:
    description: auto, kvm or qemu; anything but auto is reported as forced.
    type: str
    default: auto
author:
  - cvmharness
"""

RETURN = r"""
virt:
  description: Signals, versions and the chosen domain type.
  returned: always
  type: dict
"""

TDX_DMESG = re.compile(r"(virt/tdx|tdx):.*", re.IGNORECASE)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _run(argv: list[str], timeout: int = 20) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _flags() -> list[str]:
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith("flags"):
            return line.split(":", 1)[1].split()
    return []


def probe(uri: str, forced: str) -> dict[str, Any]:
    flags = _flags()
    modules = sorted(m for m in ("kvm_intel", "kvm_amd", "kvm_pvm")
                     if Path(f"/sys/module/{m}").is_dir())
    dev_kvm = Path("/dev/kvm").exists()
    hw = [f for f in ("vmx", "svm") if f in flags]
    reasons = []
    if not dev_kvm:
        reasons.append("/dev/kvm does not exist")
    if not hw:
        reasons.append("cpuinfo has neither vmx nor svm (no hardware virtualization exposed)")
    if not any(m in modules for m in ("kvm_intel", "kvm_amd")):
        loaded = ", ".join(modules) or "none"
        reasons.append(f"no kvm_intel/kvm_amd module loaded (KVM vendor modules: {loaded})")
    kvm_usable = not reasons
    dmesg = _run(["dmesg"])
    tdx_lines = ([line.strip() for line in dmesg.splitlines() if TDX_DMESG.search(line)]
                 if dmesg is not None else None)
    kvm_caps = _run(["virsh", "-c", uri, "domcapabilities", "--virttype", "kvm"])
    chosen = forced if forced in ("kvm", "qemu") else ("kvm" if kvm_usable else "qemu")
    return {
        "kvm": {
            "usable": kvm_usable,
            "dev_kvm": dev_kvm,
            "vendor_modules": modules,
            "cpu_virt_flags": hw,
            "hypervisor_flag": "hypervisor" in flags,
            "reasons": reasons,
        },
        "tdx": {
            "kvm_intel_tdx_param": _read("/sys/module/kvm_intel/parameters/tdx"),
            "cpuinfo_tdx_host_platform": "tdx_host_platform" in flags,
            "dmesg_lines": tdx_lines,
            "domcapabilities_kvm": kvm_caps,
        },
        "domain_type": chosen,
        "domain_type_forced": forced in ("kvm", "qemu"),
        "libvirt_version": (_run(["libvirtd", "--version"]) or "").strip() or None,
        "qemu_version": ((_run(["qemu-system-x86_64", "--version"]) or "").splitlines()
                         or [None])[0],
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={"uri": {"type": "str", "default": "qemu:///system"},
                       "domain_type": {"type": "str", "default": "auto"}},
        supports_check_mode=True,
    )
    module.exit_json(changed=False, virt=probe(module.params["uri"],
                                               module.params["domain_type"]))


if __name__ == "__main__":
    main()
