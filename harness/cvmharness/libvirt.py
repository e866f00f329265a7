"""The libvirt side: a host's virtualization signals, what they mean, guest domain state.

Signals are read through a Transport (the host itself, or SSH to it) with ordinary
commands, and interpreted by pure functions tested on fixture files of real output
(tests/data/tdx/). This module does not import the libvirt Python binding: the guest
role defines domains through community.libvirt, and the harness only needs ``virsh``
answers it can also get from a remote host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

LIBVIRT_URI = "qemu:///system"
DOMAIN_PREFIX = "cvmh-"
"""Domains the guest role defines are named ``cvmh-<guest>``; teardown removes only those."""

_TDX_DMESG = re.compile(r"\b(virt/)?tdx:", re.IGNORECASE)
_MODULE_OK = re.compile(r"virt/tdx: module initialized|tdx: TDX module initialized", re.I)
_MODULE_FAILED = (
    # most telling first: the verdict line, then its cause
    re.compile(r"module initialization failed|tdx: not enabled by BIOS"
               r"|virt/tdx: module not loaded", re.IGNORECASE),
    re.compile(r"Failed to initialize TDX module|SEAMCALL.*failed", re.IGNORECASE),
)
_DOMCAPS_TDX = re.compile(r"<tdx\s+supported=['\"](yes|no)['\"]")
_DOMCAPS_SECTYPE_TDX = re.compile(
    r"<launchSecurity\s+supported=['\"]yes['\"]>.*?<value>tdx</value>", re.DOTALL)


class _Runs(Protocol):
    def run(self, argv: list[str], timeout_s: float) -> _Done: ...


class _Done(Protocol):
    @property
    def rc(self) -> int: ...

    @property
    def stdout(self) -> str: ...


@dataclass(frozen=True)
class HostSignals:
    """Raw virtualization signals of a host; None where the signal could not be read."""

    kvm_intel_tdx: str | None = None
    """/sys/module/kvm_intel/parameters/tdx (None: kvm_intel not loaded)."""
    dmesg: tuple[str, ...] | None = None
    cpu_flags: tuple[str, ...] | None = None
    domcapabilities: str | None = None
    """``virsh domcapabilities --virttype kvm`` (None: libvirt cannot report kvm)."""
    kvm_modules: tuple[str, ...] = ()
    dev_kvm: bool | None = None


@dataclass(frozen=True)
class TdxState:
    ready: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)
    module: str = "unknown"
    """initialized | failed | absent | unknown (dmesg not readable)."""


def parse_cpu_flags(cpuinfo: str) -> tuple[str, ...]:
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return tuple(line.split(":", 1)[1].split())
    return ()


def tdx_dmesg_lines(dmesg: tuple[str, ...] | list[str]) -> list[str]:
    return [line for line in dmesg if _TDX_DMESG.search(line)
            or "Failed to initialize TDX module" in line]


def tdx_module_state(dmesg: tuple[str, ...] | list[str] | None) -> tuple[str, str | None]:
    """(state, the line that says so): initialized, failed, absent or unknown."""
    if dmesg is None:
        return "unknown", None
    lines = tdx_dmesg_lines(dmesg)
    for line in lines:
        if _MODULE_OK.search(line):
            return "initialized", line.strip()
    for pattern in _MODULE_FAILED:
        for line in lines:
            if pattern.search(line):
                return "failed", line.strip()
    return "absent", None


def domcaps_tdx(xml: str | None) -> bool | None:
    if xml is None:
        return None
    match = _DOMCAPS_TDX.search(xml)
    if match:
        return match.group(1) == "yes"
    return bool(_DOMCAPS_SECTYPE_TDX.search(xml))


def kvm_state(signals: HostSignals) -> tuple[bool, tuple[str, ...]]:
    """Can KVM run full guests here? With the failing signals when not."""
    reasons: list[str] = []
    if signals.dev_kvm is False:
        reasons.append("/dev/kvm does not exist")
    flags = signals.cpu_flags or ()
    if signals.cpu_flags is not None and not ({"vmx", "svm"} & set(flags)):
        reasons.append("cpuinfo has neither vmx nor svm")
    vendor = [m for m in signals.kvm_modules if m in ("kvm_intel", "kvm_amd")]
    if not vendor:
        loaded = ", ".join(signals.kvm_modules) or "none"
        reasons.append(f"no kvm_intel/kvm_amd module loaded (KVM modules: {loaded})")
    return not reasons, tuple(reasons)


def tdx_host_state(signals: HostSignals) -> TdxState:
    """Every TDX signal the field uses, each failing one named."""
    reasons: list[str] = []
    param = None if signals.kvm_intel_tdx is None else signals.kvm_intel_tdx.strip()
    if param is None:
        reasons.append("kvm_intel is not loaded (no /sys/module/kvm_intel/parameters/tdx)")
    elif param not in ("Y", "y", "1"):
        reasons.append(f"kvm_intel.tdx is {param} (/sys/module/kvm_intel/parameters/tdx)")
    module, line = tdx_module_state(signals.dmesg)
    if module == "failed":
        reasons.append(f"TDX module failed: dmesg '{_strip_time(line or '')}'")
    elif module == "absent":
        reasons.append("dmesg has no 'virt/tdx: module initialized'")
    elif module == "unknown":
        reasons.append("dmesg is not readable (cannot check 'virt/tdx: module initialized')")
    if signals.cpu_flags is None:
        reasons.append("cpuinfo is not readable")
    elif "tdx_host_platform" not in signals.cpu_flags:
        reasons.append("cpuinfo lacks the tdx_host_platform flag")
    caps = domcaps_tdx(signals.domcapabilities)
    if caps is None:
        reasons.append("libvirt reports no kvm domain capabilities (virsh domcapabilities "
                       "--virttype kvm failed)")
    elif not caps:
        reasons.append("libvirt domcapabilities lack <tdx supported='yes'/>")
    return TdxState(ready=not reasons, reasons=tuple(reasons), module=module)


def guest_tdx_detected(dmesg: tuple[str, ...] | list[str] | None,
                       cpu_flags: tuple[str, ...] | None = None) -> bool | None:
    """Inside a guest: is it a TD? (dmesg 'tdx: Guest detected' or the tdx_guest flag)."""
    if cpu_flags and "tdx_guest" in cpu_flags:
        return True
    if dmesg is None:
        return None
    return any("tdx: Guest detected" in line for line in dmesg)


def _strip_time(line: str) -> str:
    return re.sub(r"^\[\s*[0-9.]+\]\s*", "", line).strip()


def read_host_signals(transport: _Runs, uri: str = LIBVIRT_URI,
                      timeout_s: float = 20.0) -> HostSignals:
    """Read the signals on a host through a transport; each unreadable one is None."""
    def out(argv: list[str]) -> str | None:
        try:
            done = transport.run(argv, timeout_s)
        except OSError:
            return None
        return done.stdout if done.rc == 0 else None

    param = out(["cat", "/sys/module/kvm_intel/parameters/tdx"])
    dmesg = out(["dmesg"])
    cpuinfo = out(["cat", "/proc/cpuinfo"])
    caps = out(["virsh", "-c", uri, "domcapabilities", "--virttype", "kvm"])
    modules = out(["ls", "/sys/module"])
    dev_kvm = out(["test", "-e", "/dev/kvm"])
    return HostSignals(
        kvm_intel_tdx=None if param is None else param.strip(),
        dmesg=None if dmesg is None else tuple(dmesg.splitlines()),
        cpu_flags=None if cpuinfo is None else parse_cpu_flags(cpuinfo),
        domcapabilities=caps,
        kvm_modules=tuple(m for m in (modules or "").split()
                          if m in ("kvm", "kvm_intel", "kvm_amd", "kvm_pvm")),
        dev_kvm=dev_kvm is not None,
    )


def domain_state(transport: _Runs, guest: str, uri: str = LIBVIRT_URI) -> str | None:
    """``virsh domstate`` of a harness guest: running, shut off, ... or None (undefined)."""
    try:
        done = transport.run(["virsh", "-c", uri, "domstate", DOMAIN_PREFIX + guest], 20)
    except OSError:
        return None
    return done.stdout.strip() if done.rc == 0 else None


def guest_lease_address(transport: _Runs, guest: str, uri: str = LIBVIRT_URI) -> str | None:
    """IPv4 of a guest on a libvirt network, from its DHCP lease (real labs only)."""
    try:
        done = transport.run(["virsh", "-c", uri, "domifaddr", DOMAIN_PREFIX + guest,
                              "--source", "lease"], 20)
    except OSError:
        return None
    match = re.search(r"ipv4\s+([0-9.]+)/", done.stdout) if done.rc == 0 else None
    return match.group(1) if match else None
