"""TDX readiness from the signals of real hosts and guests (tests/data/tdx/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvmharness.libvirt import (
    HostSignals,
    domcaps_tdx,
    guest_tdx_detected,
    kvm_state,
    parse_cpu_flags,
    tdx_host_state,
    tdx_module_state,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "tdx"


def _read(case: str, name: str) -> str | None:
    path = DATA / case / name
    return path.read_text() if path.is_file() else None


def signals(case: str, modules: tuple[str, ...] = ("kvm", "kvm_intel")) -> HostSignals:
    dmesg = _read(case, "dmesg")
    flags = _read(case, "cpuinfo_flags")
    return HostSignals(
        kvm_intel_tdx=(_read(case, "kvm_intel_tdx") or "").strip() or None,
        dmesg=None if dmesg is None else tuple(dmesg.splitlines()),
        cpu_flags=None if flags is None else parse_cpu_flags(flags),
        domcapabilities=_read(case, "domcapabilities.xml"),
        kvm_modules=modules,
        dev_kvm=True,
    )


def test_ready_host() -> None:
    state = tdx_host_state(signals("host_ready"))
    assert state.ready and state.reasons == () and state.module == "initialized"


def test_host_without_tdx_names_every_failing_signal() -> None:
    state = tdx_host_state(signals("host_absent_pvm", modules=("kvm", "kvm_pvm")))
    assert not state.ready
    assert state.module == "absent"
    text = "; ".join(state.reasons)
    assert "kvm_intel is not loaded" in text
    assert "no 'virt/tdx: module initialized'" in text
    assert "tdx_host_platform" in text
    assert "domcapabilities" in text
    assert len(state.reasons) == 4


def test_module_initialisation_failed() -> None:
    state = tdx_host_state(signals("host_module_failed"))
    assert not state.ready and state.module == "failed"
    assert "kvm_intel.tdx is N" in state.reasons[0]
    assert any("module initialization failed (-5)" in r for r in state.reasons)
    assert any("<tdx supported='yes'/>" in r for r in state.reasons)


def test_not_enabled_by_bios() -> None:
    state = tdx_host_state(signals("host_bios_disabled"))
    assert not state.ready and state.module == "failed"
    assert any("tdx: not enabled by BIOS." in r for r in state.reasons)


def test_unreadable_dmesg_is_unknown_not_absent() -> None:
    base = signals("host_ready")
    state = tdx_host_state(HostSignals(**{**base.__dict__, "dmesg": None}))
    assert not state.ready and state.module == "unknown"
    assert state.reasons == ("dmesg is not readable (cannot check 'virt/tdx: module "
                             "initialized')",)


@pytest.mark.parametrize(("xml", "expected"), [
    ("<domainCapabilities><features><tdx supported='yes'/></features></domainCapabilities>", True),
    ('<domainCapabilities><features><tdx supported="no"/></features></domainCapabilities>', False),
    ("<domainCapabilities><features><sev supported='no'/></features></domainCapabilities>", False),
    ("<domainCapabilities><features><launchSecurity supported='yes'><enum name='sectype'>"
     "<value>tdx</value></enum></launchSecurity></features></domainCapabilities>", True),
    (None, None),
])
def test_domcapabilities(xml: str | None, expected: bool | None) -> None:
    assert domcaps_tdx(xml) is expected


def test_module_state_prefers_initialised_over_earlier_noise() -> None:
    lines = (_read("host_ready", "dmesg") or "").splitlines()
    state, line = tdx_module_state(lines)
    assert state == "initialized" and line is not None and line.endswith("module initialized")


def test_kvm_state_on_pvm_and_on_vmx() -> None:
    usable, reasons = kvm_state(signals("host_absent_pvm", modules=("kvm", "kvm_pvm")))
    assert not usable
    assert reasons == ("cpuinfo has neither vmx nor svm",
                       "no kvm_intel/kvm_amd module loaded (KVM modules: kvm, kvm_pvm)")
    assert kvm_state(signals("host_ready")) == (True, ())


def test_guest_detection() -> None:
    td = (_read("guest_td", "dmesg") or "").splitlines()
    vm = (_read("guest_vm", "dmesg") or "").splitlines()
    assert guest_tdx_detected(td) is True
    assert guest_tdx_detected(vm) is False
    assert guest_tdx_detected(None) is None
    assert guest_tdx_detected(vm, ("fpu", "tdx_guest")) is True


@pytest.mark.tdx
def test_this_host_is_tdx_ready() -> None:
    """On a TDX lab host: the real signals read here say ready."""
    from cvmharness.libvirt import read_host_signals
    from cvmharness.transport import LocalTransport

    state = tdx_host_state(read_host_signals(LocalTransport(node="localhost")))
    if not state.ready:
        pytest.skip("this host has no Intel TDX: " + "; ".join(state.reasons))
    assert state.module == "initialized"
