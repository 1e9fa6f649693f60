"""The rule engine on real findings: every playbook is matched against the findings it is for.

Hosts are the lab's recorded snapshot (tests/fixtures/snapshots/host-kvm-pvm) with the answers
that differ replaced (tests/kdsnap.py), using real captured text from tests/fixtures/realdata;
the checks run on them and the engine diagnoses what they found. A playbook whose check needs
data this snapshot cannot hold is listed in FINDING_CASES instead, with a finding made the way
its check makes it (same code, status, subject, message and evidence keys).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Callable, Optional

import pytest

from doctor import playbooks, rules
from doctor.model import Finding
from doctor.probe.predict import CAUSES

from kdhosts import (
    BIN_DIRS,
    FILE,
    LIBVIRT,
    RHEL_DOMAIN,
    daemon_stopped,
    image_under,
    intel_bare_metal,
    kvm_probe_refused,
    listens_for_tls_without_files,
    no_kvm_device,
    socket_left_behind,
    stale_virtqemud_socket,
    with_domains,
)
from kdsnap import ALICE_IDENTITY, REALDATA_DMI, EditableSnapshot, realdata, run_checks

VMWARE_GUEST = "cpuinfo/virt-what__vmware-esx4.1-guest_core2-e8400_no-vmx_no-hypervisor-flag.txt"
DISABLED_BY_BIOS = "kernel-log/platform9-express-206__dmesg-grep-kvm__kvm-disabled-by-bios_and_no-hardware-support.txt"
POLKIT = {
    "type": "libvirt-error",
    "what": "connect",
    "message": "authentication unavailable: no polkit agent available to authenticate action "
    "'org.libvirt.unix.manage'",
    "details": {"code": 49, "code_name": "VIR_ERR_AUTH_UNAVAILABLE", "domain": 46},
}
ACL_WITHOUT_QEMU = [
    {"tag": "user", "qualifier": None, "perms": "rw-"},
    {"tag": "user", "qualifier": 1500, "perms": "rw-"},
    {"tag": "group", "qualifier": None, "perms": "rw-"},
    {"tag": "mask", "qualifier": None, "perms": "---"},
    {"tag": "other", "qualifier": None, "perms": "---"},
]


def domain_xml(
    name: str, body: str, *, machine: str = "pc-i440fx-7.2", memory: str = "131072"
) -> str:
    """A KVM domain like the lab's (128 MiB, no disk) with `body` added to its devices."""
    return f"""<domain type='kvm'>
  <name>{name}</name>
  <memory unit='KiB'>{memory}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='{machine}'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
{body}
  </devices>
</domain>
"""


def alice_denied(snap: EditableSnapshot) -> EditableSnapshot:
    passwd = (
        snap.path / "files/etc/passwd"
    ).read_text() + "alice:x:1500:1500::/home/alice:/bin/sh\n"
    group = (snap.path / "files/etc/group").read_text() + "alice:x:1500:\n"
    snap.set_file("/etc/passwd", passwd).set_file("/etc/group", group)
    return snap.set_value("identity", ALICE_IDENTITY)


# --- one derived host per playbook ------------------------------------------------------------

Host = Callable[[EditableSnapshot], tuple[EditableSnapshot, Optional[str]]]


def firmware_disabled(snap: EditableSnapshot) -> tuple[EditableSnapshot, Optional[str]]:
    return intel_bare_metal(no_kvm_device(snap), realdata(DISABLED_BY_BIOS)), None


def vmware_guest(snap: EditableSnapshot) -> tuple[EditableSnapshot, Optional[str]]:
    snap = no_kvm_device(snap).set_file("/proc/cpuinfo", realdata(VMWARE_GUEST))
    values = json.loads(REALDATA_DMI.read_text())["vmware_esx4.1_guest"]
    for name in ("sys_vendor", "product_name", "bios_vendor", "board_vendor"):
        if values.get(name):
            snap.set_file(f"/sys/class/dmi/id/{name}", values[name] + "\n")
    return snap, None


def module_not_loaded(snap: EditableSnapshot) -> tuple[EditableSnapshot, Optional[str]]:
    return intel_bare_metal(no_kvm_device(snap), "[    0.000000] Linux version 6.1.0\n"), None


DERIVED_CASES: dict[str, Host] = {
    "kvm-missing-firmware-disabled": firmware_disabled,
    "kvm-missing-nested-not-exposed": vmware_guest,
    "kvm-missing-module-not-loaded": module_not_loaded,
    "kvm-device-root-only": lambda s: (s.set_stat("/dev/kvm", mode=0o600, gid=0), None),
    "kvm-device-acl-denies": lambda s: (s.set_stat("/dev/kvm", acl=ACL_WITHOUT_QEMU), None),
    "kvm-device-not-accessible": lambda s: (s.set_stat("/dev/kvm", mode=0o600, gid=107), None),
    "kvm-device-lsm-denies": lambda s: (
        alice_denied(s)
        .set_value("identity", {**ALICE_IDENTITY, "groups": [107, 1500]})
        .set_value(
            "kvm_probe",
            kvm_probe_refused("EACCES"),
            path="/dev/kvm",
        ),
        None,
    ),
    "vhost-net-unavailable": lambda s: (s, None),
    "tun-device-missing": lambda s: (s.missing("stat", path="/dev/net/tun"), None),
    "libvirtd-not-running": lambda s: (daemon_stopped(s), None),
    "libvirtd-tls-blocks-start": lambda s: (
        listens_for_tls_without_files(daemon_stopped(s)),
        None,
    ),
    "libvirt-stale-modular-socket": lambda s: (stale_virtqemud_socket(s), "qemu:///system"),
    "libvirt-daemon-not-installed": lambda s: (
        daemon_stopped(s).missing("stat", path="/usr/sbin/libvirtd"),
        None,
    ),
    "libvirt-connection-denied": lambda s: (
        s.set_error("libvirt", POLKIT, request="connect", **LIBVIRT),
        None,
    ),
    "virtlogd-not-running": lambda s: (s.missing("stat", path="/run/libvirt/virtlogd-sock"), None),
    "rhel-emulator-path-on-other-distribution": lambda s: (
        with_domains(s, realdata(RHEL_DOMAIN)).missing("stat", path="/usr/bin/qemu-kvm"),
        None,
    ),
    "uri-implies-tls": lambda s: (s, "qemu://kvm1.example/system"),
    "firewall-tools-missing-iptables": lambda s: (
        _without(s, "ebtables"),
        None,
    ),
    "image-directory-not-searchable": lambda s: (image_under(s, 0o700), None),
    "disk-image-missing": lambda s: (
        image_under(s, 0o711).missing("stat", path="/root/images/rhel.qcow2"),
        None,
    ),
    "ide-controller-limit": lambda s: (
        with_domains(
            s,
            domain_xml(
                "kdide",
                "".join(
                    f"<disk type='file' device='cdrom'><target dev='hd{c}' bus='ide'/><readonly/></disk>"
                    for c in "abcde"
                ),
            ),
        ),
        None,
    ),
    "cdrom-on-virtio-bus": lambda s: (
        with_domains(
            s,
            domain_xml(
                "kdcd", "<disk type='file' device='cdrom'><target dev='vdb' bus='virtio'/></disk>"
            ),
        ),
        None,
    ),
    "boot-order-conflict": lambda s: (
        with_domains(
            s,
            domain_xml(
                "kdboot",
                "<disk type='file' device='disk'><source file='/var/lib/libvirt/images/kdboot.qcow2'/>"
                "<target dev='vda' bus='virtio'/><boot order='1'/></disk>",
            ).replace("hvm</type>", "hvm</type><boot dev='hd'/>"),
        ),
        None,
    ),
    "disk-used-twice": lambda s: (
        with_domains(
            s,
            *(
                domain_xml(
                    name,
                    "<disk type='file' device='disk'><source "
                    "file='/var/lib/libvirt/images/kdshared.qcow2'/><target dev='vda' "
                    "bus='virtio'/></disk>",
                )
                for name in ("kdone", "kdtwo")
            ),
        ),
        None,
    ),
    "graphics-port-conflict": lambda s: (
        with_domains(
            s,
            *(
                domain_xml(name, "<graphics type='vnc' port='5977' autoport='no'/>")
                for name in ("kdvnc1", "kdvnc2")
            ),
        ),
        None,
    ),
    "memory-implausibly-small": lambda s: (
        with_domains(s, domain_xml("kdmem", "", memory="2048")),
        None,
    ),
    "domain-definition-refused": lambda s: (
        with_domains(
            s,
            domain_xml(
                "kdshared",
                "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                "<source file='/var/lib/libvirt/images/kdshared.qcow2'/>"
                "<target dev='vdb' bus='virtio'/><shareable/></disk>",
            ),
        ),
        None,
    ),
    "vcpus-need-eim": lambda s: (
        with_domains(
            s,
            domain_xml("kdcpu", "", machine="pc-q35-7.2").replace(
                "<vcpu>1</vcpu>", "<vcpu>300</vcpu>"
            ),
        ),
        None,
    ),
    "secure-boot-needs-q35-smm": lambda s: (
        with_domains(
            s,
            domain_xml("kdsb", "").replace(
                "hvm</type>",
                "hvm</type><loader readonly='yes' secure='yes' type='pflash'>"
                "/usr/share/OVMF/OVMF_CODE_4M.ms.fd</loader>",
            ),
        ),
        None,
    ),
    "kvm-firmware-disabled": lambda s: (
        intel_bare_metal(s.drop("kvm_probe", path="/dev/kvm"), realdata(DISABLED_BY_BIOS)),
        None,
    ),
    "kvm-backend-refused-to-load": lambda s: (
        intel_bare_metal(s.drop("kvm_probe", path="/dev/kvm"), realdata(DISABLED_BY_BIOS)),
        None,
    ),
    "kvm-module-not-loaded": lambda s: (
        intel_bare_metal(s.drop("kvm_probe", path="/dev/kvm"), "[    0.0] Linux version 6.1\n"),
        None,
    ),
    "kvm-not-in-kernel": lambda s: (
        no_kvm_device(s).set_value("dir", ["tun", "virtio_net"], path="/sys/module"),
        None,
    ),
    "kvm-device-missing": lambda s: (s.set_stat("/dev/kvm", type="file", rdev=None), None),
    "nested-virt-not-exposed": lambda s: (
        _probe(
            vmware_guest(s)[0].set_stat("/dev/kvm", type="char", rdev="10:232"),
            vm_created=False,
            create_vm_errno="ENODEV",
        ),
        None,
    ),
    "kvm-vm-creation-busy": lambda s: (_probe(s, vm_created=False, create_vm_errno="EBUSY"), None),
    "kvm-access-denied-stale-group": lambda s: (
        _probe(
            _group_member(alice_denied(s), "kvm", "alice"),
            opened=False,
            open_errno="EACCES",
            api_version=None,
            vm_created=None,
        ),
        None,
    ),
    "daemon-group-membership-stale": lambda s: (_group_member(s, "libvirt", "root"), None),
    "kvm-group-membership-stale": lambda s: (_group_member(s, "libvirt", "libvirt-qemu"), None),
    "vhost-net-module-not-loaded": lambda s: (_modular(s), None),
    "tun-module-not-loaded": lambda s: (
        _modular(s)
        .set_file("/proc/modules", "kvm 1146880 0 - Live 0x0000000000000000\n")
        .missing("stat", path="/dev/net/tun"),
        None,
    ),
    "modular-daemon-not-running": lambda s: (_modular_daemons(s), None),
    "libvirt-daemon-hung": lambda s: (
        s.set_error(
            "libvirt",
            {"type": "timeout", "what": "connect", "message": "no answer within 10 s"},
            request="connect",
            **LIBVIRT,
        ),
        None,
    ),
    "libvirt-connection-failed": lambda s: (
        s.set_error(
            "libvirt",
            {
                "type": "libvirt-error",
                "what": "connect",
                "message": "internal error: unexpected qemu URI path '/nonsense', try qemu:///system",
                "details": {"code": 1, "code_name": "VIR_ERR_INTERNAL_ERROR", "domain": 10},
            },
            request="connect",
            **LIBVIRT,
        ),
        None,
    ),
    "qemu-emulator-missing": lambda s: (
        with_domains(
            s,
            domain_xml("kdarm", "").replace(
                "/usr/bin/qemu-system-x86_64", "/usr/bin/qemu-system-aarch64"
            ),
        ).missing("stat", path="/usr/bin/qemu-system-aarch64"),
        None,
    ),
    "firewall-tools-missing-nftables": lambda s: (
        _without(s.set_file("/etc/libvirt/network.conf", 'firewall_backend = "nftables"\n'), "nft"),
        None,
    ),
    "qemu-cannot-access-images": lambda s: (
        image_under(s, 0o711).set_file(
            "/etc/libvirt/qemu.conf",
            (s.path / "files/etc/libvirt/qemu.conf").read_text() + "\ndynamic_ownership = 0\n",
        ),
        None,
    ),
    "known-error-in-logs": lambda s: (
        _log(
            s,
            "/var/log/libvirt/libvirtd.log",
            "2026-11-26 07:27:53.901+0000: 11006: error : virPortAllocatorSetUsed:274 : "
            "internal error: Failed to reserve port 5977\n",
        ),
        None,
    ),
    "uefi-nvram-template-missing": lambda s: (
        with_domains(
            s,
            domain_xml("kdnv", "").replace(
                "hvm</type>",
                "hvm</type><loader readonly='yes' type='pflash'>/var/lib/kd/CUSTOM_CODE.fd</loader>"
                "<nvram>/var/lib/libvirt/qemu/nvram/kdnv_VARS.fd</nvram>",
            ),
        )
        .set_value(
            "stat",
            {"path": "/var/lib/kd/CUSTOM_CODE.fd", **FILE},
            path="/var/lib/kd/CUSTOM_CODE.fd",
        )
        .missing("stat", path="/var/lib/libvirt/qemu/nvram/kdnv_VARS.fd"),
        None,
    ),
    "firmware-descriptor-unreadable": lambda s: (
        s.set_file("/usr/share/qemu/firmware/60-edk2-x86_64.json", "{ not json\n"),
        None,
    ),
    "uefi-firmware-missing": lambda s: (_no_firmware(s), None),
    "libvirt-network-inactive": lambda s: (
        # A real virt-manager q35 guest on the 'default' network, which this host has not started.
        with_domains(
            s,
            realdata(
                "domains/lkml-danmoulding__virsh-dumpxml__q35-running_fedora-virt-manager_libvirt-pcie-root-ports.xml"
            ),
        ),
        None,
    ),
    "pci-hotplug-needs-acpi": lambda s: (
        with_domains(s, domain_xml("kdnoacpi", "").replace("<features><acpi/></features>", "")),
        None,
    ),
    "pci-slots-exhausted": lambda s: (
        with_domains(
            s,
            domain_xml(
                "kdpci",
                "".join(
                    "<rng model='virtio'><backend model='random'>/dev/urandom</backend>"
                    f"<address type='pci' domain='0x0000' bus='0x00' slot='{slot:#04x}' function='0x0'/>"
                    "</rng>"
                    for slot in range(2, 32)
                ),
            ),
        ),
        None,
    ),
    "domain-firmware-missing": lambda s: (
        with_domains(
            s,
            domain_xml("kdfw", "").replace(
                "hvm</type>",
                "hvm</type><loader readonly='yes' type='pflash'>/usr/share/OVMF/kd-gone_CODE.fd"
                "</loader><nvram>/var/lib/libvirt/qemu/nvram/kdfw_VARS.fd</nvram>",
            ),
        ).missing("stat", path="/usr/share/OVMF/kd-gone_CODE.fd"),
        None,
    ),
}


def probe(**fields: Any) -> dict[str, Any]:
    """A KVM probe answer: /dev/kvm opened and the API version read; VM creation as given."""
    return {
        "path": "/dev/kvm",
        "opened": True,
        "open_errno": None,
        "api_version": 12,
        "api_errno": None,
        "vm_created": True,
        "create_vm_errno": None,
        "extensions": {},
        **fields,
    }


def _probe(snap: EditableSnapshot, **fields: Any) -> EditableSnapshot:
    return snap.set_value("kvm_probe", probe(**fields), path="/dev/kvm")


def _group_member(snap: EditableSnapshot, group: str, user: str) -> EditableSnapshot:
    text = (snap.path / "files/etc/group").read_text()
    lines = [
        (line + ("," if not line.endswith(":") else "") + user)
        if line.startswith(f"{group}:")
        else line
        for line in text.splitlines()
    ]
    return snap.set_file("/etc/group", "\n".join(lines) + "\n")


def _modular(snap: EditableSnapshot) -> EditableSnapshot:
    """A kernel that loads modules: /proc/modules lists kvm and tun, nothing for vhost."""
    return snap.set_file(
        "/proc/modules",
        "kvm 1146880 0 - Live 0x0000000000000000\ntun 61440 2 - Live 0x0000000000000000\n",
    )


def _modular_daemons(snap: EditableSnapshot) -> EditableSnapshot:
    snap = daemon_stopped(snap)
    binary = {"type": "file", "mode": 0o755, "uid": 0, "gid": 0, "rdev": None, "acl": []}
    for name in ("virtqemud", "virtnetworkd", "virtstoraged"):
        snap.set_value("stat", {"path": f"/usr/sbin/{name}", **binary}, path=f"/usr/sbin/{name}")
    for name in ("virtqemud", "virtstoraged"):
        path = f"/run/libvirt/{name}-sock"
        snap.set_value("stat", {"path": path, **binary, "type": "socket"}, path=path)
    return snap


def _log(snap: EditableSnapshot, path: str, text: str) -> EditableSnapshot:
    return snap.set_file(path, text)


def _without(snap: EditableSnapshot, tool: str) -> EditableSnapshot:
    for directory in BIN_DIRS:
        snap.missing("stat", path=f"{directory}/{tool}")
    return snap


def _no_firmware(snap: EditableSnapshot) -> EditableSnapshot:
    for entry in snap.manifest["answers"]:
        if entry["kind"] == "dir" and "/firmware" in entry.get("path", ""):
            entry.pop("value", None)
            entry["error"] = {"type": "not-found", "message": "No such file or directory"}
    return snap


def diagnose(findings: dict[str, list[Finding]]) -> tuple[list[rules.Diagnosis], list[Finding]]:
    flat = [f for code in sorted(findings) for f in findings[code]]
    return rules.diagnose(flat, playbooks.shipped())


@pytest.mark.parametrize("playbook_id", sorted(DERIVED_CASES))
def test_the_playbook_diagnoses_its_derived_host(edit_snapshot: Any, playbook_id: str) -> None:
    snap, uri = DERIVED_CASES[playbook_id](edit_snapshot())
    diagnoses, marked = diagnose(run_checks(snap.save(), uri=uri))
    assert playbook_id in [d.playbook.id for d in diagnoses], [
        (f.code, f.status, f.subject, f.message) for f in marked if f.status in ("warn", "fail")
    ]
    found = next(d for d in diagnoses if d.playbook.id == playbook_id)
    assert found.missing == (), found.cause
    # What the diagnosis rests on and explains is not left standing as a problem of its own.
    for finding in (*found.findings, *found.explains):
        if finding.status in ("warn", "fail"):
            assert playbook_id in finding.explained_by
    assert_one_root_cause_per_problem(diagnoses, marked)


def assert_one_root_cause_per_problem(
    diagnoses: Sequence[rules.Diagnosis], findings: Sequence[Finding]
) -> None:
    """No diagnosis fired beside a finding that contradicts its premise, and no root cause
    stands whose problem findings a higher-ranked diagnosis all rests on or explains."""
    for d in diagnoses:
        for premise in d.playbook.contradicted_by:
            against = [
                f
                for f in findings
                if f.ignored is None
                and premise.matches(f)
                and (premise.subject or d.subject == "host" or f.subject in (d.subject, "host"))
            ]
            assert against == [], (d.playbook.id, against)

    def keys(d: rules.Diagnosis, problems_only: bool) -> set[tuple[str, str]]:
        return {
            (f.code, f.subject)
            for f in (*d.findings, *d.explains)
            if not problems_only or f.status in ("warn", "fail", "error")
        }

    roots = [d for d in diagnoses if d.consequence_of is None]
    for position, d in enumerate(roots):
        for higher in roots[:position]:
            problems = keys(d, True)
            assert not problems or not problems <= keys(higher, False), (
                d.playbook.id,
                higher.playbook.id,
            )
    for d in diagnoses:
        if d.consequence_of is not None:
            cause = diagnoses[d.consequence_of - 1]
            assert cause.consequence_of is None and keys(d, True) <= keys(cause, False)


# --- playbooks whose hosts this snapshot cannot hold: findings shaped as their checks make them


def shaped(code: str, status: str, message: str, subject: str = "host", **evidence: Any) -> Finding:
    """A finding as check `code` makes it."""
    return Finding(status, message, subject, evidence, code)  # type: ignore[arg-type]


SERVER = "tls:server"
KEY = "/etc/pki/libvirt/private/serverkey.pem"
CERT = "/etc/pki/libvirt/servercert.pem"
FINDING_CASES: dict[str, Sequence[Finding]] = {
    # lint's schema check: `run` leaves the host's domains to libvirt, so shaped as lint has it
    "definition-refused-by-schema": [
        shaped(
            "DOM025",
            "warn",
            "libvirt's schema refuses the definition (Extra element devices in interleave)",
            "file:vms/web.xml",
            domain="web",
            schema="/usr/share/libvirt/schemas/domain.rng",
        ),
    ],
    # A bare-metal CPU without vmx: this snapshot is a KVM guest, so its DMI says otherwise.
    "kvm-missing-no-cpu-support": [
        shaped(
            "KVM001",
            "fail",
            "/dev/kvm does not exist: the CPU advertises no vmx/svm: it lacks "
            "VT-x, or the firmware disabled it (recent kernels then hide the flag)",
            cause="KVM003",
            device={"path": "/dev/kvm", "exists": False},
        ),
        shaped(
            "KVM003", "pass", "no sign that the firmware disabled VT-x in the kernel log (dmesg)"
        ),
    ],
    # Alone, without a cause another check names (on this snapshot KVM004 or KVM002 would).
    "kvm-not-usable": [shaped("KVM006", "fail", "KVM_CREATE_VM failed with ENOMEM")],
    "kvm-usable-unproven": [
        shaped(
            "KVM006",
            "warn",
            "kvmdoctor may not open /dev/kvm (EACCES), so it cannot prove KVM "
            "works; run it as root or see KVM002",
        )
    ],
    "uefi-firmware-missing-aarch64": [
        shaped(
            "FW001",
            "fail",
            "no UEFI firmware for aarch64: no descriptor in /usr/share/qemu/firmware, "
            "/etc/qemu/firmware and no OVMF/AAVMF build",
            arch="aarch64",
        )
    ],
    # TLS: the checks' own wording (checks/tls.py) for a server whose TLS set-up is broken.
    "tls-ca-missing": [
        shaped(
            "TLS001",
            "fail",
            "Cannot read CA certificate '/etc/pki/CA/cacert.pem': No such file "
            "or directory (needed by the server (libvirtd))",
            SERVER,
            ca_file="/etc/pki/CA/cacert.pem",
        )
    ],
    "tls-cert-or-key-missing": [
        shaped(
            "TLS002",
            "fail",
            f"the server (libvirtd): Cannot read certificate '{CERT}': No such file or directory",
            SERVER,
            cert_file=CERT,
            key_file=KEY,
        )
    ],
    "tls-key-does-not-match": [
        shaped(
            "TLS002",
            "fail",
            f"the key {KEY} does not belong to the certificate {CERT}",
            SERVER,
            cert_file=CERT,
            key_file=KEY,
        )
    ],
    "tls-cert-expired": [
        shaped(
            "TLS003",
            "fail",
            f"The server certificate {CERT} has expired: valid until 2025-01-01T00:00:00Z",
            f"cert:{CERT}",
            file=CERT,
        )
    ],
    "tls-cert-not-yet-valid": [
        shaped(
            "TLS003",
            "fail",
            f"The server certificate {CERT} is not yet active: valid from 2030-01-01T00:00:00Z",
            f"cert:{CERT}",
            file=CERT,
        )
    ],
    "tls-cert-name-mismatch": [
        shaped(
            "TLS004",
            "fail",
            f"the server certificate {CERT} (DNS:other.example.org) covers none "
            "of this host's names (kdhost, kdhost.example.org)",
            SERVER,
            cert_file=CERT,
        )
    ],
    "tls-cert-not-signed-by-ca": [
        shaped(
            "TLS005",
            "fail",
            f"{CERT} does not verify against the CA in /etc/pki/CA/cacert.pem: "
            "no CA certificate has its issuer's name",
            SERVER,
            cert_file=CERT,
            ca_file="/etc/pki/CA/cacert.pem",
        )
    ],
    "tls-cert-marked-as-ca": [
        shaped(
            "TLS007",
            "fail",
            f"The certificate {CERT} basic constraints show a CA, but we need one for a server "
            "(CN=kvm1 says CA:TRUE): libvirtd does not start its TLS listener",
            SERVER,
            cert_file=CERT,
        )
    ],
    "tls-cert-wrong-purpose": [
        shaped(
            "TLS008",
            "fail",
            f"Certificate {CERT} purpose does not allow use for with a TLS server (its purposes "
            "are clientAuth, without serverAuth; the extension is critical)",
            SERVER,
            cert_file=CERT,
        )
    ],
    "tls-cert-key-usage-insufficient": [
        shaped(
            "TLS009",
            "fail",
            f"Certificate {CERT} usage does not permit digital signature (key usage: "
            "key_encipherment)",
            SERVER,
            cert_file=CERT,
        )
    ],
    "tls-client-dn-not-allowed": [
        shaped(
            "TLS010",
            "fail",
            "Client's Distinguished Name is not on the list of allowed clients "
            "(tls_allowed_dn_list): libvirtd refuses the client certificate "
            "/etc/pki/libvirt/clientcert.pem, whose DN C=GB,O=kd lab,CN=kd client matches none "
            "of ['C=GB,O=kd ops,CN=*']",
            SERVER,
            client_dn="C=GB,O=kd lab,CN=kd client",
            daemon_conf="/etc/libvirt/libvirtd.conf",
        )
    ],
    "tls-key-readable-by-others": [
        shaped(
            "TLS006",
            "fail",
            f"the private key {KEY}: every user can read it (-rw-r--r-- root:root)",
            SERVER,
            key_file=KEY,
        )
    ],
    "tls-key-unreadable-by-daemon": [
        shaped(
            "TLS006",
            "fail",
            f"the private key {KEY}: kdsvc cannot read it: not owner, no group "
            "grants it, others get ---",
            SERVER,
            key_file=KEY,
        )
    ],
    # NET: findings as checks/network.py words them (its hosts need netlink dumps).
    "bridge-source-invalid": [
        shaped(
            "NET001",
            "fail",
            "interface 0: eth0 is not a bridge (kind device): libvirt cannot add vnet0 to it",
            "domain:web1",
            domain="web1",
        )
    ],
    "tap-not-on-bridge": [
        shaped(
            "NET002",
            "fail",
            "interface 0: vnet0 is not enslaved to br0",
            "domain:web1",
            tap={"name": "vnet0", "master": None},
            expected_bridge="br0",
        )
    ],
    "bridge-port-not-forwarding": [
        shaped(
            "NET003",
            "fail",
            "br0: port vnet0 is in STP state listening",
            "iface:vnet0",
            bridge="br0",
            state="listening",
        )
    ],
    "ip-forward-disabled": [
        shaped(
            "NET004",
            "fail",
            "kdnat: net.ipv4.ip_forward = 0: the host does not route for kdnat's "
            "guests; they reach the host and nothing beyond it",
            "network:kdnat",
            network="kdnat",
        )
    ],
    "bridge-netfilter-drops-guests": [
        shaped(
            "NET005",
            "fail",
            "br0: bridged guest traffic passes the FORWARD chain, whose policy is DROP",
            "iface:br0",
            bridge="br0",
        )
    ],
    "macvtap-host-isolation": [
        shaped(
            "NET006",
            "warn",
            "interface 0: macvtap on eth0, which carries the host's 198.51.100.7: "
            "guest and host cannot reach each other over it",
            "domain:web1",
        )
    ],
    "macvtap-on-enslaved-device": [
        shaped("NET007", "fail", "interface 0: eth0 is a slave of bond0", "domain:web1")
    ],
    "bond-mode-unsuited-for-bridge": [
        shaped(
            "NET008",
            "warn",
            "bond0 is in balance-alb (mode 6) and carries br0 with guests",
            "iface:bond0",
            bond="bond0",
            mode="balance-alb",
        )
    ],
    "bond-degraded": [shaped("NET009", "warn", "bond0: eth1 is down", "iface:bond0", bond="bond0")],
    "duplicate-mac": [
        shaped(
            "NET010",
            "fail",
            "MAC 52:54:00:aa:bb:cc is used by 2 interfaces: domain:web1 interface 1 (running), "
            "domain:web2 interface 1 (running)",
            "mac:52:54:00:aa:bb:cc",
            domain="web2",
        )
    ],
    # Fleet findings (kvmdoctor report merge; tests/cli/test_report_merge.py has real ones).
    "domain-uuid-on-two-hosts": [
        shaped(
            "DOM020",
            "warn",
            "UUID aab19d0c-0e7e-461b-bcae-d1b8ce3e671a is defined on 2 hosts: "
            "host:kvm1/domain:web1 (running), host:kvm2/domain:web1 (defined); a copied "
            "definition: the second start or a migration clashes",
            "uuid:aab19d0c-0e7e-461b-bcae-d1b8ce3e671a",
            uuid="aab19d0c-0e7e-461b-bcae-d1b8ce3e671a",
            hosts=["kvm1", "kvm2"],
        )
    ],
    "version-drift": [
        shaped(
            "LIB009",
            "warn",
            "libvirt: kvm3 runs 8.0.0; the others run 9.0.0 (2 of 3 hosts)",
            "version:libvirt",
            component="libvirt",
            majority="9.0.0",
            odd_hosts=["kvm3"],
        )
    ],
    "libvirt-conf-syntax-error": [
        shaped(
            "LIB008",
            "fail",
            "/etc/libvirt/libvirtd.conf: line 2: expecting a value: libvirt refuses the whole "
            "file, so libvirtd does not start with it",
            "file:/etc/libvirt/libvirtd.conf",
            path="/etc/libvirt/libvirtd.conf",
            reader="libvirtd",
            error="line 2: expecting a value",
        )
    ],
    "nat-masquerade-missing": [
        shaped(
            "NET012",
            "fail",
            "kdnat: no MASQUERADE rule for 198.51.100.0/24",
            "network:kdnat",
            network="kdnat",
        )
    ],
}

# PRB: findings as doctor/probe/verdict.py words them (tests/probe/test_verdict.py makes them
# from real paths and observations).
FINDING_CASES.update(
    {
        "probe-predicted-drop": [
            shaped(
                "PRB001",
                "fail",
                "forward (request): the FORWARD hook drops traffic from kdbr0 to kdu0 (nft: "
                'kdfwd: oifname "kdu0" drop)',
                "iface:kdbr0",
                hop="forward",
                cause="forward-drop",
            )
        ],
        "probe-traffic-dropped": [
            shaped(
                "PRB002",
                "fail",
                "icmp request to 203.0.113.2 seen on kdbr0, not on kdu0: no-route; "
                "kernel: IP_INNOROUTES at ip_route_input_slow on kdbr0 (confidence medium)",
                "iface:kdbr0",
                direction="request",
                last_seen="kdbr0",
                first_missing="kdu0",
                hop="kdbr0",
                cause="no-route",
                reason="IP_INNOROUTES",
            )
        ],
        "probe-source-not-translated": [
            shaped(
                "PRB003",
                "fail",
                "requests left kdu0 with the guest's own source 198.51.100.2",
                "iface:kdu0",
                uplink="kdu0",
            )
        ],
    }
)


def _probe_pair(cause: str, playbook: str, hop: str) -> list[Finding]:
    """A prediction and a located drop naming the playbook that fixes their cause, as
    doctor/probe/verdict.py words them."""
    return [
        shaped(
            "PRB001",
            "fail",
            f"{hop} (request): {cause} predicted",
            f"iface:{hop}",
            hop=hop,
            cause=cause,
            playbook=playbook,
        ),
        shaped(
            "PRB002",
            "fail",
            f"icmp request to 203.0.113.2 seen on {hop}, not beyond: {cause} (confidence high)",
            f"iface:{hop}",
            direction="request",
            last_seen=hop,
            hop=hop,
            cause=cause,
            playbook=playbook,
        ),
    ]


@pytest.mark.parametrize(
    "cause, playbook_id",
    sorted((cause, book) for cause, (_, book) in CAUSES.items() if book is not None),
)
def test_a_probe_finding_reaches_the_specific_playbook_of_its_cause(
    cause: str, playbook_id: str
) -> None:
    diagnoses, marked = rules.diagnose(
        _probe_pair(cause, playbook_id, "kdbr0"), playbooks.shipped()
    )
    # One diagnosis, the specific playbook, anchored on one finding and explaining the other;
    # the generic probe playbooks do not stand beside it.
    assert [d.playbook.id for d in diagnoses] == [playbook_id]
    assert {f.code for f in (*diagnoses[0].findings, *diagnoses[0].explains)} == {
        "PRB001",
        "PRB002",
    }
    assert all(f.explained_by == (playbook_id,) for f in marked)
    assert_one_root_cause_per_problem(diagnoses, marked)


def test_the_nat_playbook_takes_the_missing_translation_and_its_untranslated_source() -> None:
    findings = [
        shaped(
            "PRB002",
            "fail",
            "icmp reply to 203.0.113.2 never reached kdu0: nat-missing (confidence medium)",
            "iface:kdu0",
            direction="reply",
            hop="kdu0",
            cause="nat-missing",
            playbook="nat-masquerade-missing",
            network="kdnat",
        ),
        shaped(
            "PRB003",
            "fail",
            "requests left kdu0 with the guest's own source 198.51.100.2",
            "iface:kdu0",
            uplink="kdu0",
            playbook="nat-masquerade-missing",
            network="kdnat",
        ),
    ]
    diagnoses, marked = rules.diagnose(findings, playbooks.shipped())
    assert [d.playbook.id for d in diagnoses] == ["nat-masquerade-missing"]
    # The libvirt network the guest's interface is on fills the fix's commands.
    assert [s.params.get("argv") for s in diagnoses[0].fix] == [
        ["virsh", "net-destroy", "kdnat"],
        ["virsh", "net-start", "kdnat"],
    ]
    assert all(f.explained_by == ("nat-masquerade-missing",) for f in marked)


def _untranslated(**extra: Any) -> Finding:
    """PRB003 as doctor/probe/verdict.py words it for a guest of the libvirt NAT network kdnat."""
    return shaped(
        "PRB003",
        "fail",
        "requests left kdu0 with the guest's own source 198.51.100.2: nothing translated it, "
        "so replies cannot find their way back",
        "iface:kdu0",
        uplink="kdu0",
        sources_on_uplink=["198.51.100.2"],
        playbook="nat-masquerade-missing",
        network="kdnat",
        **extra,
    )


def test_the_untranslated_source_alone_reaches_the_nat_playbook_not_the_generic_one() -> None:
    diagnoses, marked = rules.diagnose([_untranslated()], playbooks.shipped())
    assert [d.playbook.id for d in diagnoses] == ["nat-masquerade-missing"]
    assert [s.params.get("argv") for s in diagnoses[0].fix] == [
        ["virsh", "net-destroy", "kdnat"],
        ["virsh", "net-start", "kdnat"],
    ]
    assert [f.explained_by for f in marked] == [("nat-masquerade-missing",)]


def test_a_nat_prediction_drop_and_untranslated_source_make_one_nat_diagnosis() -> None:
    findings = [
        shaped(
            "PRB001",
            "warn",
            "kdu0 (reply): no MASQUERADE or SNAT rule covers the guest's 198.51.100.2 on its "
            "way out of kdu0: replies to its private address do not come back",
            "iface:kdu0",
            hop="kdu0",
            cause="nat-missing",
            playbook="nat-masquerade-missing",
            network="kdnat",
        ),
        shaped(
            "PRB002",
            "fail",
            "icmp reply to 203.0.113.2 never reached kdu0: nat-missing (confidence medium)",
            "iface:kdu0",
            direction="reply",
            hop="kdu0",
            cause="nat-missing",
            playbook="nat-masquerade-missing",
            network="kdnat",
        ),
        _untranslated(),
    ]
    diagnoses, marked = rules.diagnose(findings, playbooks.shipped())
    assert [d.playbook.id for d in diagnoses] == ["nat-masquerade-missing"]
    assert {f.code for f in (*diagnoses[0].findings, *diagnoses[0].explains)} == {
        "PRB001",
        "PRB002",
        "PRB003",
    }
    assert all(f.explained_by == ("nat-masquerade-missing",) for f in marked)
    assert_one_root_cause_per_problem(diagnoses, marked)


def test_a_probe_cause_without_a_playbook_falls_back_to_the_generic_one() -> None:
    [drop] = FINDING_CASES["probe-traffic-dropped"]
    diagnoses, _ = rules.diagnose([drop], playbooks.shipped())
    assert [d.playbook.id for d in diagnoses] == ["probe-traffic-dropped"]


def test_every_playbook_has_a_matching_case() -> None:
    ids = {p.id for p in playbooks.shipped()}
    assert set(DERIVED_CASES) | set(FINDING_CASES) == ids


@pytest.mark.parametrize("playbook_id", sorted(FINDING_CASES))
def test_the_playbook_diagnoses_findings_shaped_like_its_checks(playbook_id: str) -> None:
    diagnoses, marked = rules.diagnose(list(FINDING_CASES[playbook_id]), playbooks.shipped())
    assert playbook_id in [d.playbook.id for d in diagnoses]
    assert_one_root_cause_per_problem(diagnoses, marked)


# --- the engine's choices -------------------------------------------------------------------


def test_the_most_specific_diagnosis_takes_the_findings_it_explains(edit_snapshot: Any) -> None:
    snap, _ = firmware_disabled(edit_snapshot())
    diagnoses, marked = diagnose(run_checks(snap.save(), select=("KVM",)))
    ids = [d.playbook.id for d in diagnoses]
    assert ids[0] == "kvm-missing-firmware-disabled"
    # The generic "/dev/kvm is missing" and "firmware disabled" do not stand beside it.
    assert "kvm-device-missing" not in ids and "kvm-firmware-disabled" not in ids
    first = diagnoses[0]
    assert {f.code for f in first.findings} == {"KVM001", "KVM003"}
    assert {f.code for f in first.explains} >= {"KVM006"}
    assert "kvm: disabled by bios" in first.cause
    problems = [f for f in marked if f.status in ("warn", "fail") and not f.explained_by]
    assert [f.code for f in problems] == [], problems


def test_placeholders_fill_from_the_subject_and_the_evidence(edit_snapshot: Any) -> None:
    snap = edit_snapshot().set_stat("/dev/kvm", mode=0o600, gid=0)
    diagnoses, _ = diagnose(run_checks(snap.save(), select=("KVM",)))
    qemu = next(
        d
        for d in diagnoses
        if d.playbook.id == "kvm-device-root-only" and d.subject == "user:libvirt-qemu"
    )
    assert "crw------- root:root" in qemu.cause and "libvirt-qemu cannot open it" in qemu.cause
    member = next(s for s in qemu.fix if s.action == "group_member")
    assert member.params == {"user": "libvirt-qemu", "group": "kvm"}
    assert member.missing == ()


def test_diagnoses_are_ranked_by_severity_first(edit_snapshot: Any) -> None:
    snap = edit_snapshot().missing("stat", path="/dev/net/tun")
    diagnoses, _ = diagnose(run_checks(snap.save(), select=("KVM008",)))
    assert [(d.status, d.playbook.id) for d in diagnoses] == [
        ("fail", "tun-device-missing"),
        ("warn", "vhost-net-unavailable"),
    ]


def test_an_ignored_finding_makes_no_diagnosis(host_snapshot: Any) -> None:
    from doctor.model import Ignore

    findings = run_checks(host_snapshot, select=("KVM008",))["KVM008"]
    waived = [
        Finding(f.status, f.message, f.subject, f.evidence, f.code, Ignore("ci", "test"))
        for f in findings
    ]
    assert rules.diagnose(waived, playbooks.shipped())[0] == []


def test_a_log_hit_is_explained_by_the_diagnosis_of_its_playbook(edit_snapshot: Any) -> None:
    snap = edit_snapshot().missing("stat", path="/run/libvirt/virtlogd-sock")
    findings = run_checks(snap.save(), select=("LIB003",))
    hit = shaped(
        "LOG001",
        "info",
        "/var/log/libvirt/libvirtd.log says ...",
        "log:/var/log/libvirt/libvirtd.log",
        playbook="virtlogd-not-running",
        file="/var/log/libvirt/libvirtd.log",
        line="Failed to connect socket to '/run/libvirt/virtlogd-sock'",
        time=None,
    )
    diagnoses, marked = rules.diagnose([*findings["LIB003"], hit], playbooks.shipped())
    assert [d.playbook.id for d in diagnoses] == ["virtlogd-not-running"]
    assert hit.code == marked[-1].code and marked[-1].explained_by == ("virtlogd-not-running",)
    assert diagnoses[0].explains[0].subject == "log:/var/log/libvirt/libvirtd.log"


def test_a_log_hit_alone_gets_the_log_playbook(host_snapshot: Any) -> None:
    hit = shaped(
        "LOG001",
        "info",
        "...",
        "log:/var/log/libvirt/qemu/web1.log",
        playbook="disk-used-twice",
        file="/var/log/libvirt/qemu/web1.log",
        line='Failed to get "write" lock',
        time="2026-11-26T07:27:52Z",
    )
    diagnoses, _ = rules.diagnose([hit], playbooks.shipped())
    assert [d.playbook.id for d in diagnoses] == ["known-error-in-logs"]
    assert "kvmdoctor explain disk-used-twice" in diagnoses[0].fix[0].text
    assert "/var/log/libvirt/qemu/web1.log says, at 2026-11-26T07:27:52Z" in diagnoses[0].cause


def test_the_report_carries_diagnoses_and_explained_by(edit_snapshot: Any) -> None:
    from typer.testing import CliRunner

    from doctor.cli import app

    path = daemon_stopped(edit_snapshot()).save()
    result = CliRunner().invoke(app, ["run", "--snapshot", str(path), "-f", "json"])
    report = json.loads(result.stdout)
    first = report["diagnoses"][0]
    assert first["rank"] == 1 and first["playbook"] == "libvirtd-not-running"
    assert first["fix"][0]["params"]["without_systemd"] == ["libvirtd", "-d"]
    lib002 = next(c for c in report["checks"] if c["code"] == "LIB002")["findings"][0]
    assert lib002["explained_by"] == ["libvirtd-not-running"]


def test_a_socket_left_behind_is_diagnosed_as_the_daemon_not_running(edit_snapshot: Any) -> None:
    """LIB001 fails although the socket file exists; the diagnosis and its fix are those of a
    stopped daemon (libvirtd replaces the stale file when it starts), and it explains LIB002."""
    findings = run_checks(socket_left_behind(edit_snapshot()).save())
    flat = [f for fs in findings.values() for f in fs]
    diagnoses, _ = rules.diagnose(flat, playbooks.shipped())
    assert [d.playbook.id for d in diagnoses][:1] == ["libvirtd-not-running"]
    assert "nothing answers on its socket /run/libvirt/libvirt-sock" in diagnoses[0].cause
    assert "left its socket behind" in diagnoses[0].cause
    assert "LIB002" in [f.code for f in diagnoses[0].explains]
