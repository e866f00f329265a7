#!/usr/bin/python
"""Ansible module: read the facts of one lab node for docs/results.md facts/<node>.json.

Everything is read from the node itself (procfs, sysfs, dmesg, tool --version output);
a value that cannot be read is None (JSON null), never guessed.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: cvmharness_node_facts
short_description: Read a cvmharness lab node's hardware, firmware, kernel, TDX and tool facts
description:
  - Returns the facts the harness records per node in C(facts/<node>.json).
  - Read-only; values that cannot be read are null.
options:
  node:
    description: Name recorded as C(node).
    type: str
    required: true
  wrk_binary:
    description: The wrk the harness runs (absolute path); without it, wrk on PATH.
    type: str
    required: false
  timeout:
    description: Seconds each external command may take.
    type: int
    default: 10
author:
  - cvmharness
"""

RETURN = r"""
node_facts:
  description: The facts, in the layout of docs/results.md (facts/<node>.json).
  returned: always
  type: dict
"""


FLAGS_OF_INTEREST = (
    "vmx",
    "svm",
    "hypervisor",
    "tdx_host_platform",
    "tdx_guest",
    "sme",
    "sev",
    "sev_es",
    "sev_snp",
    "aes",
    "avx2",
    "avx512f",
    "constant_tsc",
    "nonstop_tsc",
)
SBIN_DIRS = ["/usr/local/sbin", "/usr/sbin", "/sbin"]


def read_text(path: str | Path) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def read_value(path: str | Path) -> str | None:
    text = read_text(path)
    return text.strip() if text is not None else None


def yes_no(value: str | None) -> bool | None:
    if value is None:
        return None
    if value.upper() in ("Y", "1", "YES"):
        return True
    if value.upper() in ("N", "0", "NO"):
        return False
    return None


def run(argv: list[str], timeout: int) -> tuple[int, str] | None:
    """Run a command; (rc, stdout+stderr) or None when it cannot run at all."""
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.returncode, (done.stdout or "") + (done.stderr or "")


def find_binary(name: str, extra: list[str] | None = None) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in (extra or []) + SBIN_DIRS:
        candidate = Path(directory) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def tool_version(
    argv: list[str], pattern: str, timeout: int, extra_dirs: list[str] | None = None
) -> str | None:
    binary = argv[0] if Path(argv[0]).is_absolute() else find_binary(argv[0], extra_dirs)
    if binary is None or not os.access(binary, os.X_OK):
        return None
    result = run([binary, *argv[1:]], timeout)
    if result is None:
        return None
    match = re.search(pattern, result[1], re.MULTILINE)
    return match.group(1) if match else None


def cpuinfo() -> tuple[dict[str, Any], set[str]]:
    text = read_text("/proc/cpuinfo")
    cpu: dict[str, Any] = {
        key: None
        for key in (
            "model",
            "vendor",
            "family",
            "model_id",
            "stepping",
            "microcode",
            "sockets",
            "cores",
            "threads",
            "flags_of_interest",
        )
    }
    if text is None:
        return cpu, set()
    blocks = [b for b in text.split("\n\n") if b.strip()]
    parsed = []
    for block in blocks:
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        parsed.append(fields)
    processors = [p for p in parsed if "processor" in p]
    if not processors:
        return cpu, set()
    first = processors[0]

    def as_int(value: str | None) -> int | None:
        try:
            return int(value, 0) if value is not None else None
        except ValueError:
            return None

    flags = set(first.get("flags", "").split())
    cpu.update(
        model=first.get("model name"),
        vendor=first.get("vendor_id"),
        family=as_int(first.get("cpu family")),
        model_id=as_int(first.get("model")),
        stepping=as_int(first.get("stepping")),
        microcode=first.get("microcode"),
        threads=len(processors),
        flags_of_interest=[f for f in FLAGS_OF_INTEREST if f in flags],
    )
    socket_ids = {p["physical id"] for p in processors if "physical id" in p}
    if socket_ids:
        cpu["sockets"] = len(socket_ids)
        cores_per_socket = {
            p["physical id"]: as_int(p.get("cpu cores")) for p in processors if "physical id" in p
        }
        if all(v is not None for v in cores_per_socket.values()):
            cpu["cores"] = sum(v for v in cores_per_socket.values() if v is not None)
    return cpu, flags


def memory_mib() -> int | None:
    text = read_text("/proc/meminfo")
    if text is None:
        return None
    match = re.search(r"^MemTotal:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) // 1024 if match else None


def os_release() -> dict[str, str | None]:
    text = read_text("/etc/os-release") or read_text("/usr/lib/os-release")
    values: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip('"')
    return {"name": values.get("NAME"), "version": values.get("VERSION_ID")}


def dmesg_lines(timeout: int) -> list[str] | None:
    """Kernel log lines, or None when the log cannot be read (dmesg_restrict, no dmesg)."""
    binary = find_binary("dmesg", ["/bin", "/usr/bin"])
    if binary is None:
        return None
    result = run([binary], timeout)
    if result is None or result[0] != 0:
        return None
    return result[1].splitlines()


def virtualization(flags: set[str], timeout: int) -> dict[str, Any]:
    role = None
    if flags:
        role = "guest" if "hypervisor" in flags else "host"
    virt_type = None
    detect = find_binary("systemd-detect-virt", ["/usr/bin", "/bin"])
    if detect is not None:
        result = run([detect, "--vm"], timeout)
        if result is not None:
            out = result[1].strip().splitlines()
            if out and re.fullmatch(r"[a-z0-9_-]+", out[0]):
                virt_type = out[0]
    if virt_type is None and role == "host":
        virt_type = "none"
    kvm_module = next(
        (m for m in ("kvm_intel", "kvm_amd") if Path(f"/sys/module/{m}").is_dir()), None
    )
    nested = (
        yes_no(read_value(f"/sys/module/{kvm_module}/parameters/nested")) if kvm_module else None
    )
    return {
        "role": role,
        "type": virt_type,
        "kvm": {"present": Path("/dev/kvm").exists(), "module": kvm_module, "nested": nested},
    }


def domcapabilities_tdx(timeout: int) -> bool | None:
    virsh = find_binary("virsh", ["/usr/bin"])
    if virsh is None:
        return None
    result = run([virsh, "-c", "qemu:///system", "domcapabilities"], timeout)
    if result is None or result[0] != 0:
        return None
    match = re.search(r"<tdx\s+supported=['\"](yes|no)['\"]", result[1])
    if match:
        return match.group(1) == "yes"
    # A libvirt that knows TDX always lists it under <features>.
    return False if "<features>" in result[1] else None


def tdx(flags: set[str], dmesg: list[str] | None, timeout: int) -> dict[str, Any]:
    tdx_lines = [line for line in dmesg or [] if re.search(r"\btdx\b|virt/tdx", line, re.I)]
    module_initialized = None
    guest_detected = None
    if dmesg is not None:
        module_initialized = any("virt/tdx: module initialized" in line for line in dmesg)
        guest_detected = any("tdx: Guest detected" in line for line in dmesg)
    if "tdx_guest" in flags:
        guest_detected = True
    return {
        "host": {
            "kvm_intel_tdx": yes_no(read_value("/sys/module/kvm_intel/parameters/tdx")),
            "module_initialized": module_initialized,
            "cpu_flag": ("tdx_host_platform" in flags) if flags else None,
            "dmesg": tdx_lines if dmesg is not None else None,
            "domcapabilities": domcapabilities_tdx(timeout),
        },
        "guest": {"detected": guest_detected},
    }


def versions(wrk_binary: str | None, timeout: int) -> dict[str, str | None]:
    # The wrk the harness runs (wrk_prefix/bin/wrk), not whichever is first on PATH.
    wrk = tool_version([wrk_binary or "wrk", "-v"], r"^wrk (\S+)", timeout)
    libvirt = tool_version(["libvirtd", "--version"], r"libvirt\)?\s+(\d\S*)", timeout)
    if libvirt is None:
        libvirt = tool_version(["virsh", "--version"], r"^(\d\S*)", timeout)
    return {
        "qemu": tool_version(
            ["qemu-system-x86_64", "--version"],
            r"QEMU emulator version (\S+)",
            timeout,
            ["/usr/libexec", "/usr/bin"],
        ),
        "libvirt": libvirt,
        "nginx": tool_version(["nginx", "-v"], r"nginx version: nginx/(\S+)", timeout),
        "wrk": wrk,
        "k3s": tool_version(["k3s", "--version"], r"k3s version (\S+)", timeout),
        "kata": tool_version(
            ["kata-runtime", "--version"],
            r"kata-runtime\s*:\s*(\S+)",
            timeout,
            ["/opt/kata/bin"],
        ),
    }


def nics() -> list[dict[str, Any]]:
    try:
        paths = sorted(Path("/sys/class/net").iterdir())
    except OSError:
        return []
    result = []
    for path in paths:
        name = path.name
        if name == "lo":
            continue
        driver_link = path / "device" / "driver"
        driver = driver_link.resolve().name if driver_link.is_symlink() else None
        speed_text = read_value(path / "speed")
        speed = int(speed_text) if speed_text and speed_text.lstrip("-").isdigit() else None
        mtu_text = read_value(path / "mtu")
        result.append(
            {
                "name": name,
                "driver": driver,
                "speed_mbps": speed if speed is not None and speed > 0 else None,
                "mtu": int(mtu_text) if mtu_text and mtu_text.isdigit() else None,
            }
        )
    return result


def gather(node: str, wrk_binary: str | None, timeout: int) -> dict[str, Any]:
    cpu, flags = cpuinfo()
    dmesg = dmesg_lines(timeout)
    uname = platform.uname()
    return {
        "node": node,
        # datetime.UTC needs Python 3.11; nodes may run an older Python.
        "gathered_at": datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017
        .replace(microsecond=0)
        .isoformat()
        .replace("+00:00", "Z"),
        "cpu": cpu,
        "memory_mib": memory_mib(),
        "kernel": {
            "release": uname.release or None,
            "version": uname.version or None,
            "cmdline": read_value("/proc/cmdline"),
        },
        "os": os_release(),
        "virtualization": virtualization(flags, timeout),
        "tdx": tdx(flags, dmesg, timeout),
        "versions": versions(wrk_binary, timeout),
        "nics": nics(),
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "node": {"type": "str", "required": True},
            "wrk_binary": {"type": "str", "required": False},
            "timeout": {"type": "int", "default": 10},
        },
        supports_check_mode=True,
    )
    facts = gather(module.params["node"], module.params["wrk_binary"], module.params["timeout"])
    module.exit_json(changed=False, node_facts=facts)


if __name__ == "__main__":
    main()
