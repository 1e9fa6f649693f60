"""Hosts derived from the lab's recorded snapshot, shared by the check and rule tests: each
function changes only the answers that make the host what its name says (tests/kdsnap.py)."""

from __future__ import annotations

import json
from typing import Any

from kdsnap import REALDATA_DMI, EditableSnapshot, realdata

INTEL_VMX = "cpuinfo/insights__intel-xeon-e5-2670_baremetal_vmx__cpu0.txt"
HYPERV_CPU = "cpuinfo/virt-what__hyperv-guest_xeon-5130_no-vmx_no-hypervisor-flag.txt"
RHEL_DOMAIN = "domains/insights__etc-libvirt-qemu__i440fx_rhel7.4_virt-manager-persistent.xml"
LIBVIRT = {"uri": None, "params": {}}  # the manifest keys of a default-URI libvirt answer
# What libvirt-python raises when libvirtd's socket is gone (libvirt 9.0 wording).
NOT_RUNNING = {
    "type": "libvirt-error",
    "what": "connect to the default URI",
    "message": "Failed to connect socket to '/var/run/libvirt/libvirt-sock': "
    "No such file or directory",
    "details": {
        "code": 38,
        "code_name": "VIR_ERR_SYSTEM_ERROR",
        "domain": 7,
        "domain_name": "VIR_FROM_RPC",
        "level": 2,
    },
}
# ...and when the socket file is still there but nothing listens on it (libvirt 9.0, seen on
# the lab after its libvirtd was killed with SIGKILL).
REFUSED = {
    **NOT_RUNNING,
    "message": NOT_RUNNING["message"].replace("No such file or directory", "Connection refused"),
}
BIN_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/local/bin")
DIR = {"type": "dir", "uid": 0, "gid": 0, "rdev": None, "acl": []}
FILE = {**DIR, "type": "file", "mode": 0o644}


def with_domains(snap: EditableSnapshot, *xml: str, active: bool = False) -> EditableSnapshot:
    """libvirt answers with these domain definitions (named d0, d1, ... in the listing)."""
    items = [
        {
            "name": f"d{i}",
            "uuid": None,
            "id": None,
            "state": "running" if active else "shutoff",
            "active": active,
            "persistent": True,
            "autostart": False,
            "xml": text,
            "live_xml": None,
        }
        for i, text in enumerate(xml)
    ]
    return snap.set_value("libvirt", items, request="domains", **LIBVIRT)


def no_kvm_device(snap: EditableSnapshot) -> EditableSnapshot:
    """/dev/kvm absent: nothing to stat, nothing to open."""
    return snap.missing("stat", path="/dev/kvm").drop("kvm_probe", path="/dev/kvm")


def intel_bare_metal(snap: EditableSnapshot, log: str) -> EditableSnapshot:
    """A modular Intel host with VT-x, kvm loaded without kvm_intel, `log` as its kern.log."""
    snap.set_file("/proc/cpuinfo", realdata(INTEL_VMX))
    snap.set_file(
        "/proc/modules",
        "kvm 1146880 0 - Live 0x0000000000000000\nirqbypass 16384 1 kvm, Live 0x0000000000000000\n",
    )
    snap.set_value("dir", ["kvm", "irqbypass", "tun"], path="/sys/module")
    snap.drop("command", argv=["dmesg"]).set_file("/var/log/kern.log", log)
    return snap


def hyperv_guest_without_vtx(
    snap: EditableSnapshot, dmi: str = "hyperv_guest_2008", hypervisor_flag: bool = False
) -> EditableSnapshot:
    """A Hyper-V guest whose host does not expose VT-x: a Hyper-V guest's real /proc/cpuinfo
    (no vmx), Hyper-V's real DMI strings (tests/fixtures/realdata/dmi/vendors.json `dmi`), no
    kvm module loaded, a kernel log without KVM lines, and no /dev/kvm. With `hypervisor_flag`
    the cpuinfo carries the `hypervisor` flag, as kernels since 2.6.30 print it for Hyper-V's
    CPUID bit (the recorded guest's kernel predates it)."""
    text = realdata(HYPERV_CPU)
    if hypervisor_flag:
        text = text.replace(" lahf_lm\n", " lahf_lm hypervisor\n")
        assert " hypervisor\n" in text
    snap.set_file("/proc/cpuinfo", text)
    values = json.loads(REALDATA_DMI.read_text())[dmi]
    for name in ("sys_vendor", "product_name", "bios_vendor", "board_vendor"):
        if values.get(name):
            snap.set_file(f"/sys/class/dmi/id/{name}", values[name] + "\n")
    snap.set_file("/proc/modules", "tun 61440 0 - Live 0x0000000000000000\n")
    loaded = [m for m in snap.value("dir", path="/sys/module") if not m.startswith("kvm")]
    snap.set_value("dir", loaded, path="/sys/module")
    snap.drop("command", argv=["dmesg"]).set_file(
        "/var/log/kern.log", "[    0.000000] Linux version 6.1.0\n"
    )
    return no_kvm_device(snap)


def daemon_stopped(snap: EditableSnapshot) -> EditableSnapshot:
    """libvirtd installed but not running: no socket, no process, no connection."""
    for path in ("/run/libvirt/libvirt-sock", "/run/libvirt/libvirt-sock-ro"):
        snap.missing("stat", path=path)
    rows = json.loads((snap.path / "processes.json").read_text())
    snap.set_processes([r for r in rows if r["name"] != "libvirtd"])
    return snap.set_error("libvirt", NOT_RUNNING, request="connect", **LIBVIRT)


def socket_left_behind(snap: EditableSnapshot) -> EditableSnapshot:
    """libvirtd gone, its socket file left in /run/libvirt: the connection is refused."""
    rows = json.loads((snap.path / "processes.json").read_text())
    snap.set_processes([r for r in rows if r["name"] != "libvirtd"])
    return snap.set_error("libvirt", REFUSED, request="connect", **LIBVIRT)


# The TLS files of a libvirtd server, where libvirtd.conf leaves them at their defaults.
SERVER_TLS_FILES = (
    "/etc/pki/CA/cacert.pem",
    "/etc/pki/libvirt/servercert.pem",
    "/etc/pki/libvirt/private/serverkey.pem",
)


def listens_for_tls_without_files(snap: EditableSnapshot) -> EditableSnapshot:
    """libvirtd set to start with --listen (Debian's /etc/default/libvirtd), listen_tls at its
    default (on), and none of the server's TLS files in place: the state after enabling
    --listen without setting TLS up, in which libvirtd exits at start-up."""
    snap.set_file("/etc/default/libvirtd", 'LIBVIRTD_ARGS="--listen"\n')
    for path in SERVER_TLS_FILES:
        snap.missing("file", path=path).missing("stat", path=path)
    return snap


QEMUD_SOCK = "/run/libvirt/virtqemud-sock"
QEMUD_REFUSED = {
    **REFUSED,
    "message": REFUSED["message"].replace("libvirt-sock", "virtqemud-sock"),
}


def stale_virtqemud_socket(snap: EditableSnapshot, *, named_uri: bool = True) -> EditableSnapshot:
    """libvirtd runs; a socket file virtqemud left in /run/libvirt (virtqemud is not even
    installed), which libvirt's client prefers: a connection to qemu:///system is refused
    (libvirt 9.0's words, as the lab shows), one without a URI goes to libvirt-sock."""
    snap.set_stat(QEMUD_SOCK, type="socket", mode=0o755)
    if named_uri:
        snap.set_error("libvirt", QEMUD_REFUSED, request="connect", uri="qemu:///system", params={})
    return snap


def image_under(snap: EditableSnapshot, directory_mode: int) -> EditableSnapshot:
    """The RHEL 7 domain with its image at /root/images/rhel.qcow2 (0600), /root in
    `directory_mode`, and the domain's emulator present."""
    xml = realdata(RHEL_DOMAIN).replace(
        "/var/lib/libvirt/images/rhel-7.4-insights.qcow2", "/root/images/rhel.qcow2"
    )
    snap = with_domains(snap, xml)
    snap.set_value("stat", {"path": "/", **DIR, "mode": 0o755}, path="/")
    snap.set_value("stat", {"path": "/root", **DIR, "mode": directory_mode}, path="/root")
    snap.set_value("stat", {"path": "/root/images", **DIR, "mode": 0o755}, path="/root/images")
    snap.set_value(
        "stat",
        {"path": "/root/images/rhel.qcow2", **FILE, "mode": 0o600},
        path="/root/images/rhel.qcow2",
    )
    snap.set_value(
        "stat", {"path": "/usr/bin/qemu-kvm", **FILE, "mode": 0o755}, path="/usr/bin/qemu-kvm"
    )
    return snap


def kvm_probe_refused(errno: str) -> dict[str, Any]:
    """A kvm_probe answer: /dev/kvm exists but opening it failed with `errno`."""
    return {
        "path": "/dev/kvm",
        "opened": False,
        "open_errno": errno,
        "api_version": None,
        "api_errno": None,
        "vm_created": None,
        "create_vm_errno": None,
        "extensions": {},
    }
