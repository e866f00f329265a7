"""The guest role's domain template, rendered as Ansible renders it, element by element.

A td is the vm plus exactly the confidentiality parts; both must carry what libvirt
requires, and validate against the installed libvirt schema where it knows the elements
(libvirt < 11.6 does not know launchSecurity type='tdx': that element is checked here by
hand and left out of the schema check).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "guest"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"

IMAGE = {
    "name": "cvmh-debian",
    "stamp": "0123456789abcdef" * 4,
    "kernel": "/var/lib/cvmharness/images/cvmh-debian/vmlinuz",
    "initrd": "/var/lib/cvmharness/images/cvmh-debian/initrd.img",
    "cmdline": "root=/dev/vda rw console=ttyS0,115200 quiet",
    "seed": "",
    "disk": "/var/lib/cvmharness/images/cvmh-debian/disk.img",
    "format": "raw",
}


def render(guest: dict[str, Any], image: dict[str, Any] | None = None,
           **overrides: Any) -> ET.Element:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    context = {k: v for k, v in defaults.items() if isinstance(v, str) and "{{" not in v}
    context.update(guest_domain_type="kvm", guest_ssh_dir="/root/.local/state/cvmharness/ssh")
    context.update(overrides)
    context.update(g=guest, image=image or IMAGE,
                   disk=f"{context['guest_dir']}/{guest['name']}/disk.qcow2")
    # Ansible's template defaults: trim_blocks on, undefined variables are errors.
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ROLE / "templates")),
                             trim_blocks=True, undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    return ET.fromstring(env.get_template("domain.xml.j2").render(**context))


VM = {"name": "vm0", "flavor": "vm", "vcpus": 4, "memory_mib": 4096, "ssh_port": 10022,
      "http_forwards": {8080: 18080}}
TD = {**VM, "name": "td0", "flavor": "td"}


def text(root: ET.Element, path: str) -> str | None:
    node = root.find(path)
    return None if node is None else (node.text or "")


def test_vm_common_elements() -> None:
    root = render(VM)
    assert root.tag == "domain" and root.get("type") == "kvm"
    assert text(root, "name") == "cvmh-vm0"
    assert text(root, "memory") == "4096" and root.find("memory").get("unit") == "MiB"  # type: ignore[union-attr]
    assert text(root, "vcpu") == "4"
    os_type = root.find("os/type")
    assert os_type is not None and os_type.get("machine") == "q35" and os_type.text == "hvm"
    assert text(root, "os/kernel") == IMAGE["kernel"]
    assert text(root, "os/initrd") == IMAGE["initrd"]
    assert text(root, "os/cmdline") == IMAGE["cmdline"]
    cpu = root.find("cpu")
    assert cpu is not None and cpu.get("mode") == "host-passthrough"
    topology = root.find("cpu/topology")
    assert topology is not None and topology.get("cores") == "4"
    disk = root.find("devices/disk[@device='disk']")
    assert disk is not None
    assert disk.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert disk.find("source").get("file") == "/var/lib/cvmharness/guests/vm0/disk.qcow2"  # type: ignore[union-attr]
    assert disk.find("target").get("bus") == "virtio"  # type: ignore[union-attr]
    assert text(root, "on_reboot") == "destroy"


def test_vm_has_no_confidentiality_parts() -> None:
    root = render(VM)
    assert root.find("launchSecurity") is None
    assert root.find("memoryBacking") is None
    assert root.find("os/loader") is None  # SeaBIOS by default
    assert root.find("features/ioapic") is None


def test_td_carries_what_a_trust_domain_needs() -> None:
    root = render(TD)
    assert root.get("type") == "kvm"
    assert root.find("memoryBacking/source").get("type") == "anonymous"  # type: ignore[union-attr]
    assert root.find("memoryBacking/access").get("mode") == "private"  # type: ignore[union-attr]
    assert root.find("memoryBacking/hugepages") is None
    loader = root.find("os/loader")
    assert loader is not None and loader.get("type") == "rom"
    assert loader.text == "/usr/share/ovmf/OVMF.fd"
    assert root.find("os/nvram") is None
    assert root.find("features/ioapic").get("driver") == "qemu"  # type: ignore[union-attr]
    assert root.find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]
    sec = root.find("launchSecurity")
    assert sec is not None and sec.get("type") == "tdx"
    assert text(root, "launchSecurity/policy") == "0x10000000"
    assert sec.find("quoteGenerationService") is None
    # no reboot, no SCSI boot disk
    assert text(root, "on_reboot") == "destroy"
    assert root.find("devices/disk/target[@bus='scsi']") is None
    assert root.find("devices/controller[@model='virtio-scsi']") is None


def test_td_quote_generation_socket() -> None:
    root = render(TD, guest_tdx_quote_socket="/var/run/tdx-qgs/qgs.socket")
    qgs = root.find("launchSecurity/quoteGenerationService")
    assert qgs is not None and qgs.get("path") == "/var/run/tdx-qgs/qgs.socket"


def _strip_confidential(root: ET.Element) -> ET.Element:
    root = copy.deepcopy(root)
    for path in ("launchSecurity", "memoryBacking"):
        for node in root.findall(path):
            root.remove(node)
    os_el = root.find("os")
    assert os_el is not None
    for node in os_el.findall("loader"):
        os_el.remove(node)
    features = root.find("features")
    assert features is not None
    for node in features.findall("ioapic"):
        features.remove(node)
    for path in ("name", "title"):
        node = root.find(path)
        assert node is not None
        node.text = "X"
    for node in root.iter():
        node.tail = None
        if node.text is not None and not node.text.strip():
            node.text = None
        for key, value in node.attrib.items():
            node.set(key, value.replace("/td0/", "/X/").replace("/vm0/", "/X/"))
    return root


def test_vm_and_td_differ_only_in_confidentiality() -> None:
    vm = _strip_confidential(render(VM))
    td = _strip_confidential(render({**TD, "name": "vm0"}))
    assert ET.tostring(vm) == ET.tostring(td)


def test_user_networking_forwards_only_on_loopback() -> None:
    root = render({**VM, "http_forwards": {8080: 18080, 8081: 18081}})
    args = [a.get("value") for a in root.iter(f"{{{QEMU_NS}}}arg")]
    netdev = args[args.index("-netdev") + 1]
    assert netdev is not None and netdev.startswith("user,id=cvmhnet0")
    forwards = [p for p in netdev.split(",") if p.startswith("hostfwd=")]
    assert forwards == ["hostfwd=tcp:127.0.0.1:10022-:22", "hostfwd=tcp:127.0.0.1:18080-:8080",
                        "hostfwd=tcp:127.0.0.1:18081-:8081"]
    assert root.find("devices/interface") is None


def test_libvirt_network_guest_and_lab_variables() -> None:
    guest = {**VM, "network": "lab", "nic_queues": 4, "cpuset": "2-5",
             "vcpu_pins": [2, 3, 4, 5], "disk_cache": "none"}
    root = render(guest)
    iface = root.find("devices/interface")
    assert iface is not None and iface.get("type") == "network"
    assert iface.find("source").get("network") == "cvmh-lab"  # type: ignore[union-attr]
    assert iface.find("model").get("type") == "virtio"  # type: ignore[union-attr]
    assert iface.find("driver").get("queues") == "4"  # type: ignore[union-attr]
    assert root.find(f"{{{QEMU_NS}}}commandline") is None
    assert root.find("vcpu").get("cpuset") == "2-5"  # type: ignore[union-attr]
    pins = [(p.get("vcpu"), p.get("cpuset")) for p in root.findall("cputune/vcpupin")]
    assert pins == [("0", "2"), ("1", "3"), ("2", "4"), ("3", "5")]
    assert root.find("devices/disk/driver").get("cache") == "none"  # type: ignore[union-attr]


def test_tcg_domain_type_uses_an_emulated_cpu() -> None:
    root = render(VM, guest_domain_type="qemu")
    assert root.get("type") == "qemu"
    assert root.find("cpu").get("mode") == "maximum"  # type: ignore[union-attr]


def test_efi_vm_and_cloud_seed() -> None:
    image = {**IMAGE, "kernel": "", "initrd": "", "seed": "/x/seed.iso"}
    root = render(VM, image=image, guest_vm_firmware="efi")
    loader = root.find("os/loader")
    assert loader is not None and loader.get("type") == "pflash"
    assert root.find("os/nvram") is not None
    assert root.find("os/boot").get("dev") == "hd"  # type: ignore[union-attr]
    assert root.find("os/kernel") is None
    cdrom = root.find("devices/disk[@device='cdrom']")
    assert cdrom is not None and cdrom.find("source").get("file") == "/x/seed.iso"  # type: ignore[union-attr]


def _validate(root: ET.Element, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    ET.register_namespace("qemu", QEMU_NS)
    path = tmp_path / "domain.xml"
    path.write_bytes(ET.tostring(root))
    return subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True,
                          text=True, check=False, timeout=60)


def _schema_knows_tdx() -> bool:
    rng = Path("/usr/share/libvirt/schemas/domaincommon.rng")
    return rng.is_file() and "tdx" in rng.read_text()


needs_validator = pytest.mark.skipif(
    shutil.which("virt-xml-validate") is None or shutil.which("xmllint") is None,
    reason="virt-xml-validate/xmllint not installed (libvirt-clients, libxml2-utils)")


@needs_validator
@pytest.mark.parametrize("overrides", [{}, {"guest_domain_type": "qemu"},
                                       {"guest_vm_firmware": "efi"}])
def test_vm_validates_against_the_installed_schema(tmp_path: Path,
                                                   overrides: dict[str, Any]) -> None:
    done = _validate(render(VM, **overrides), tmp_path)
    assert done.returncode == 0, done.stderr


@needs_validator
def test_td_validates_against_the_installed_schema(tmp_path: Path) -> None:
    root = render(TD)
    if not _schema_knows_tdx():
        sec = root.find("launchSecurity")
        assert sec is not None
        root.remove(sec)  # checked element by element above
    done = _validate(root, tmp_path)
    assert done.returncode == 0, done.stderr
