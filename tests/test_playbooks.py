"""Playbooks: loading and validation, coverage of every check code, and every signature against
a real error message (as libvirt, QEMU, virsh, virt-install, virt-manager or the kernel print
it), plus the messages of the field notes in shared/reference/ that fall within the checks."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from doctor import playbooks
from doctor.playbooks import fill, lookup, message_lines, normalise, pasted_lines
from doctor.registry import load_registry

from kdtest import ROOT, require

REFERENCE = ROOT.parent / "shared" / "reference"

# Messages of a missing /dev/kvm, in the order of the signatures every playbook about one
# shares (tests/fixtures/messages/ holds the threads they come from).
KVM_MISSING_EXAMPLES = [
    "Could not access KVM kernel module: No such file or directory",
    "qemu-system-x86_64: failed to initialize KVM: No such file or directory",
    "Unable to open /dev/kvm: No such file or directory",
    "TASK ERROR: KVM virtualisation configured, but not available. Either disable in VM "
    "configuration or enable in BIOS.",
    "libvirt: QEMU Driver error : unsupported configuration: Domain requires KVM, but it is not "
    "available. Check that virtualization is enabled in the host BIOS, and host configuration "
    "is setup to load the kvm modules.",
    "error: invalid argument: KVM is not supported by '/usr/bin/kvm' on this host",
    "libvirt: Capabilities Utils error : invalid argument: could not find capabilities for "
    "arch=x86_64 domaintype=kvm ",
    "libvirtError: unsupported configuration: Emulator '/usr/bin/qemu-system-x86_64' does not "
    "support virt type 'kvm'",
    "Error launching details: Host does not support domain type kvm with machine 'pc-q35-9.1' "
    "for virtualization type 'hvm' with architecture 'x86_64'",
]
NO_VMX_EXAMPLE = (
    "QEMU: Checking for hardware virtualization : FAIL (Host not compatible with KVM; HW "
    "virtualization CPU features not found. Only emulated CPUs are available; performance "
    "will be significantly limited)"
)
# docker-machine-driver-kvm (minikube's kvm driver) on any failed connection
KVM_DRIVER_EXAMPLE = (
    "E1107 12:30:30.581841   13820 start.go:150] Error starting host: Error creating host: Error "
    'with pre-create check: "Unable to connect to kvm driver, did you add yourself to the '
    "libvirtd group?"
)
# Firmware auto-selection that finds nothing, in libvirt's older and newer wording.
EFI_EXAMPLES = [
    "error: operation failed: Unable to find any firmware to satisfy 'efi'",
    "libvirt.libvirtError: operation failed: Unable to find \u2019efi\u2019 firmware that is "
    "compatible with the current configuration",
]

# One real message per signature, in the playbook's signature order. Sources: the lab's own
# libvirtd.log and QEMU logs (libvirt 9.0, QEMU 7.2), the field notes, and the wording in
# libvirt's, QEMU's and the kernel's sources.
SIGNATURE_EXAMPLES: dict[str, list[str]] = {
    "boot-order-conflict": [
        "error: unsupported configuration: per-device boot elements cannot be used together "
        "with os/boot elements"
    ],
    "definition-refused-by-schema": [
        "error: XML document failed to validate against schema: Unable to validate doc against "
        "/usr/share/libvirt/schemas/domain.rng",
    ],
    "domain-definition-refused": [
        "error: unsupported configuration: Found duplicate drive address for disk with target "
        "name 'sda' controller='0' bus='0' target='0' unit='0'",
        "error: unsupported configuration: shared access for disk 'hda' requires use of "
        "supported storage format",
        "error: unsupported configuration: Maximum CPUs greater than specified machine type "
        "limit 288",
        "error: unsupported configuration: SMM TSEG is only supported with q35 machine type",
        "error: no loader path specified and firmware auto selection disabled",
        "error: internal error: a PCI slot is needed to connect a PCI controller "
        "model='pcie-root-port', but none is available, and it cannot be automatically added",
        "error: unsupported configuration: Invalid address type 'pci' for the disk 'hda' with "
        "the bus type 'ide'",
        "error: XML error: The device at PCI address 0000:01:00.0 cannot be plugged into the "
        "PCI controller with index='1'. It requires a controller that accepts a "
        "dmi-to-pci-bridge.",
        "error: unsupported configuration: invalid disk target 'vdb1', partitions can't appear "
        "in disk targets",
        "error: unsupported configuration: disk device='lun' is only valid for block type disk "
        "source",
        "error: unsupported configuration: Only scsi disk supports vendor and product",
    ],
    "bridge-source-invalid": [
        "error: Unable to add bridge eth0 port vnet0: Operation not supported",
        "error: Cannot get interface MTU on 'br1': No such device",
        "Unable to add bridge kdbr9 port vnet3: No such device",
        "> failed to get mtu of bridge `br0': No such device",
    ],
    "cdrom-on-virtio-bus": [
        "unsupported configuration: disk type 'virtio' of 'vdb' does not support ejectable media"
    ],
    "disk-image-missing": [
        "error: Cannot access storage file '/var/lib/libvirt/images/web1.qcow2': No such file or "
        "directory",
        "error: internal error: Process exited prior to exec: libvirt: QEMU Driver error : Unable "
        "to stat RDPWindows.qcow2: No such file or directory",
    ],
    "disk-used-twice": [
        'qemu-system-x86_64: -blockdev {"node-name":"libvirt-1-format","read-only":false,'
        '"driver":"qcow2","file":"libvirt-1-storage","backing":null}: Failed to get '
        '"write" lock',
        "Is another process using the image [/var/lib/libvirt/images/kd-exp.qcow2]?",
    ],
    "domain-firmware-missing": [
        "2026-11-26 07:24:10.670+0000: 7720: error : virCgroupAllowDevicePath:2189 : Path "
        "'/usr/share/OVMF/OVMF_CODE.fd' is not accessible: No such file or directory",
        "Failed to create file '/var/lib/libvirt/qemu/nvram/web1_VARS.fd.new': No such file or "
        "directory",
        *EFI_EXAMPLES,
    ],
    "firmware-descriptor-unreadable": EFI_EXAMPLES,
    "firewall-tools-missing-iptables": [
        "internal error: Failed to apply firewall rules /sbin/ebtables is not available",
        "direct firewall backed requested, but /sbin/ebtables is not avaliable: No such file or "
        "directory",
        "error: Cannot find 'iptables' in path: No such file or directory",
        "internal error: Failed to initialize a valid firewall backend",
    ],
    "firewall-tools-missing-nftables": [
        "error: Cannot find 'nft' in path: No such file or directory",
        "internal error: Failed to initialize a valid firewall backend",
    ],
    "graphics-port-conflict": [
        "error: internal error: Failed to reserve port 5900",
        "Failed to start VNC server: Failed to bind socket: Address already in use",
        "`qemu-system-x86_64: -vnc 0.0.0.0:4,websocket=5704: Failed to find an available port: "
        "Address already in use`",
        "(process:27803): Spice-WARNING **: 22:21:01.291: reds.c:2645:reds_init_socket: binding "
        "socket to 0.0.0.0:41212 failed",
    ],
    "ide-controller-limit": [
        "unsupported configuration: Only a single IDE controller is supported for this machine "
        "type",
        "unsupported configuration: IDE controllers are unsupported for this QEMU binary or "
        "machine type",
    ],
    "image-directory-not-searchable": [
        "error : virStorageSourceReportBrokenChain:1271 : Cannot access storage file "
        "'/root/kd-lib007/disk.qcow2' (as uid:64055, gid:64055): Permission denied"
    ],
    "kvm-access-denied-stale-group": [
        "qemu-system-x86_64: Could not access KVM kernel module: Permission denied"
    ],
    "kvm-backend-refused-to-load": [
        "modprobe: ERROR: could not insert 'kvm_intel': Input/output error",
        "[    5.123456] kvm_intel: VMX not supported by CPU 0",
        "kvm_amd: SVM not supported by CPU 1, not amd or hygon",
        "[    4.210991] kvm: no hardware support",
    ],
    "kvm-device-acl-denies": [
        "Could not access KVM kernel module: Permission denied",
        "error: internal error: qemu unexpectedly closed the monitor: Could not access KVM kernel "
        "module: Permission denied",
    ],
    "kvm-device-missing": KVM_MISSING_EXAMPLES,
    "kvm-device-not-accessible": [
        "Could not access KVM kernel module: Permission denied",
        "qemu-system-x86_64: failed to initialize kvm: Permission denied",
        "Unable to open /dev/kvm: Permission denied",
        *KVM_MISSING_EXAMPLES[4:],
    ],
    "kvm-device-lsm-denies": [
        "Could not access KVM kernel module: Operation not permitted",
        "2020-09-11T21:12:26.475521Z qemu-kvm: failed to initialize KVM: Operation not permitted",
    ],
    "kvm-device-root-only": ["Could not access KVM kernel module: Permission denied"],
    "kvm-firmware-disabled": [
        "[    1.028834] kvm: disabled by bios",
        "[    0.204187] x86/cpu: VMX (outside TXT) disabled by BIOS",
        "kvm_intel: VMX not enabled (by BIOS) in MSR_IA32_FEAT_CTL on CPU 0",
        "kvm_amd: SVM disabled (by BIOS) in MSR_VM_CR on CPU 0",
        "kvm: VMX is disabled on CPU 0",
        "VT-x is disabled in the BIOS for all CPU modes (VERR_VMX_MSR_ALL_VMX_DISABLED).",
        "AMD-V is disabled in the BIOS (or by the host OS) (VERR_SVM_DISABLED).",
    ],
    "kvm-missing-firmware-disabled": KVM_MISSING_EXAMPLES,
    "kvm-missing-module-not-loaded": KVM_MISSING_EXAMPLES,
    "kvm-missing-nested-not-exposed": [*KVM_MISSING_EXAMPLES, NO_VMX_EXAMPLE],
    "kvm-missing-no-cpu-support": [*KVM_MISSING_EXAMPLES, NO_VMX_EXAMPLE],
    "kvm-module-not-loaded": [
        "modprobe: FATAL: Module kvm_intel not found in directory /lib/modules/6.1.0-18-amd64"
    ],
    "kvm-not-usable": ["ioctl(KVM_CREATE_VM) failed: 12 Cannot allocate memory"],
    "kvm-vm-creation-busy": [
        "ioctl(KVM_CREATE_VM) failed: 16 Device or resource busy",
        "qemu-system-x86_64: failed to initialize kvm: Device or resource busy",
    ],
    "libvirt-connection-denied": [
        "error: authentication unavailable: no polkit agent available to authenticate action "
        "'org.libvirt.unix.manage'",
        "error: Failed to connect socket to '/var/run/libvirt/libvirt-sock': Permission denied",
        "error: Failed to initialize libvirt",
        "error: authentication failed: access denied by policy",
        "`authentication failed: polkit: polkit\\56retains_authorization_after_challenge=1 "
        "Authorization requires authentication but no agent is available. `",
        "error: End of file while reading data: nc: unix connect failed: Permission denied: "
        "Input/output error",
        "Unable to connect to libvirt qemu:///system.\n\nVerify that the 'libvirtd' daemon is "
        "running.",
        KVM_DRIVER_EXAMPLE,
    ],
    "libvirt-connection-failed": [
        "error: no connection driver available for qemu:///system",
        "unable to connect to server at '192.168.122.1:16509': Connection refused",
    ],
    "libvirt-daemon-not-installed": [
        "Failed to connect socket to '/var/run/libvirt/virtqemud-sock': No such file or directory",
        "Unable to connect to libvirt qemu:///system.\n\nVerify that the 'libvirtd' daemon is "
        "running.",
        KVM_DRIVER_EXAMPLE,
        "The libvirtd service does not appear to be installed. Install and run the libvirtd "
        "service to manage virtualization on this host.",
        "Could not detect a default hypervisor. Make sure the appropriate QEMU/KVM "
        "virtualization packages are installed to manage virtualization on this host.",
    ],
    "libvirt-network-inactive": [
        "error: Network not found: no network with matching name 'default'",
        "error: Requested operation is not valid: network 'default' is not active",
    ],
    "libvirtd-not-running": [
        "error: Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or "
        "directory",
        "error: Failed to connect socket to '/run/libvirt/libvirt-sock': Connection refused",
        "Unable to connect to libvirt qemu:///system.\n\nVerify that the 'libvirtd' daemon is "
        "running.",
        KVM_DRIVER_EXAMPLE,
        "libvirtd is installed but not running. Start the libvirtd service to manage "
        "virtualization on this host.",
    ],
    "macvtap-on-enslaved-device": [
        "error creating macvtap interface macvtap@eth0 (52:54:00:56:84:7a): Device or resource busy"
    ],
    "memory-implausibly-small": [
        "No physical memory is available at the location required for the Windows Boot Manager."
    ],
    "modular-daemon-not-running": [
        "Failed to connect socket to '/var/run/libvirt/virtnetworkd-sock': No such file or "
        "directory",
        "level=error msg=Error: failed to dial libvirt: dial unix /var/run/libvirt/libvirt-sock: "
        "connect: no such file or directory",
        "Unable to connect to libvirt qemu:///system.\n\nVerify that the 'libvirtd' daemon is "
        "running.",
        KVM_DRIVER_EXAMPLE,
    ],
    "nested-virt-not-exposed": [
        *KVM_MISSING_EXAMPLES,
        NO_VMX_EXAMPLE,
        "ERROR    This host does not support virtualization",
    ],
    "kvm-not-in-kernel": [
        *KVM_MISSING_EXAMPLES,
        "modprobe: FATAL: Module kvm-intel not found in directory "
        "/lib/modules/4.19.84-microsoft-standard",
    ],
    "pci-hotplug-needs-acpi": [
        "error : qemuMonitorJSONCheckErrorFull:366 : internal error: unable to execute QEMU "
        "command 'device_add': Bus 'pci.0' does not support hotplugging"
    ],
    "pci-slots-exhausted": ["error: internal error: No more available PCI slots"],
    "qemu-cannot-access-images": [
        "error: Cannot access storage file '/home/alice/vm.qcow2' (as uid:107, gid:107): "
        "Permission denied",
        "qemu-system-x86_64: -drive file=/home/alice/vm.qcow2,format=qcow2,if=none: Could not "
        "open '/home/alice/vm.qcow2': Permission denied",
        "ERROR    cannot access storage file",
    ],
    "qemu-emulator-missing": [
        "error: Cannot check QEMU binary /usr/bin/qemu-system-x86_64: No such file or directory",
        "error: Cannot find QEMU binary /usr/bin/qemu-system-aarch64: No such file or directory",
        "libvirt: QEMU Driver error : internal error: Cannot find suitable emulator for x86_64",
        "Error: No hypervisor options were found for this connection. This usually means that "
        "QEMU or KVM is not installed on your machine, or the KVM kernel modules are not loaded.",
        "Could not detect a default hypervisor. Make sure the appropriate QEMU/KVM "
        "virtualization packages are installed to manage virtualization on this host.",
        KVM_MISSING_EXAMPLES[6],
        KVM_MISSING_EXAMPLES[8],
    ],
    "rhel-emulator-path-on-other-distribution": [
        "error : virQEMUCapsNewForBinaryInternal:5859 : Cannot check QEMU binary "
        "/usr/libexec/qemu-kvm: No such file or directory"
    ],
    "secure-boot-needs-q35-smm": [
        "unsupported configuration: Secure boot is supported with q35 machine types only",
        "unsupported configuration: Secure boot requires SMM feature enabled",
        "operation failed: domain has SMM turned off but chosen firmware requires it",
        "unsupported configuration: Secure boot is supported for x86_64 architecture only",
        "spec.template.spec.domain has EFI SecureBoot enabled. SecureBoot requires SMM, which is "
        "currently disabled.",
        *EFI_EXAMPLES,
    ],
    # Observed in the lab (tests/integration/test_libvirt_live.py, test_tls_libvirtd.py),
    # libvirt 9.0: virsh's stderr and the lab daemon's log lines, verbatim.
    "libvirt-stale-modular-socket": [
        "error: Failed to connect socket to '/var/run/libvirt/virtqemud-sock': Connection refused"
    ],
    "tls-cert-marked-as-ca": [
        "2026-12-04 06:24:16.589+0000: 618: error : virNetTLSContextCheckCertBasicConstraints:"
        "172 : The certificate /etc/libvirt/pki/servercert.pem basic constraints show a CA, but "
        "we need one for a server"
    ],
    "tls-cert-wrong-purpose": [
        "2026-12-04 06:24:17.468+0000: 926: error : virNetTLSContextCheckCertKeyPurpose:326 : "
        "Certificate /etc/libvirt/pki/servercert.pem purpose does not allow use for with a TLS "
        "server"
    ],
    "tls-cert-key-usage-insufficient": [
        "2026-12-04 06:24:20.311+0000: 1184: error : virNetTLSContextCheckCertKeyUsage:241 : "
        "Certificate /etc/libvirt/pki/servercert.pem usage does not permit digital signature"
    ],
    "tls-client-dn-not-allowed": [
        "2026-12-04 06:24:47.779+0000: 6444: error : virNetTLSContextCheckCertDNACL:368 : "
        "Client's Distinguished Name is not on the list of allowed clients "
        "(tls_allowed_dn_list).  Use 'virt-pki-query-dn clientcert.pem' to view the "
        "Distinguished Name field in the client certificate, or run this daemon with "
        "--verbose option.",
        "error: Unable to read TLS confirmation: Input/output error",
    ],
    "tls-ca-missing": [
        "error: Cannot read CA certificate '/etc/pki/CA/cacert.pem': No such file or directory"
    ],
    "tls-cert-expired": [
        "The server certificate /etc/pki/libvirt/servercert.pem has expired",
        "error: Unable to verify TLS peer: The peer certificate has expired",
    ],
    "tls-cert-name-mismatch": [
        "Certificate check failed Certificate [session] owner does not match the hostname kvm1",
        "error: authentication failed: Failed to verify peer's certificate",
    ],
    "tls-cert-not-signed-by-ca": [
        "error: Unable to verify TLS peer: The certificate hasn't got a known issuer.",
        "Our own certificate /etc/pki/libvirt/servercert.pem failed validation against "
        "/etc/pki/CA/cacert.pem: The certificate hasn't got a known issuer.",
        "Certificate failed validation: The certificate is not trusted.",
    ],
    "tls-cert-not-yet-valid": [
        "The server certificate /etc/pki/libvirt/servercert.pem is not yet active"
    ],
    "tls-cert-or-key-missing": [
        "Cannot read certificate '/etc/pki/libvirt/servercert.pem': No such file or directory",
        "Cannot read private key '/etc/pki/libvirt/private/serverkey.pem': No such file or "
        "directory",
        "Certificate check failed Unable to verify TLS peer: No certificate was found.",
    ],
    "tls-key-does-not-match": [
        "Unable to set x509 key and certificate: /etc/pki/libvirt/private/serverkey.pem, "
        "/etc/pki/libvirt/servercert.pem: The certificate and the given key do not match.",
        "Unable to set x509 key and certificate: /etc/pki/libvirt/private/serverkey.pem, "
        "/etc/pki/libvirt/servercert.pem: Decryption has failed.",
    ],
    "tls-key-unreadable-by-daemon": [
        "Cannot read private key '/etc/pki/libvirt/private/serverkey.pem': Permission denied"
    ],
    "tun-device-missing": [
        "error: Unable to open /dev/net/tun, is tun module loaded?: No such file or directory",
        "qemu-system-x86_64: -netdev tap,id=hostnet0: Could not open /dev/net/tun: No such file "
        "or directory",
        "Failed to open /dev/net/tun: No such device",
    ],
    "uefi-firmware-missing": [
        "ERROR    Did not find any UEFI binary path for arch 'x86_64'",
        "error: operation failed: Unable to find any firmware to satisfy 'efi'",
        "Did not find any UEFI binary path for ...",
        "Failed to setup UEFI: Did not find any UEFI binary path for arch 'x86_64'",
        "Falied to setup UEFI: 不能为架构'x86_64'找到任何UEFI二进制路径",
        "ERROR    UEFI is not supported with this QEMU binary",
        EFI_EXAMPLES[1],
    ],
    "uefi-firmware-missing-aarch64": [
        "unsupported configuration: ACPI requires UEFI on this architecture",
        "Did not find any UEFI binary path for arch 'aarch64'",
        "Falied to setup UEFI: 不能为架构'aarch64'找到任何UEFI二进制路径",
    ],
    "uefi-nvram-template-missing": [
        "error: operation failed: unable to find any master var store for loader: "
        "/usr/share/OVMF/OVMF_CODE.secboot.fd",
        "Failed to open file '/usr/share/OVMF/OVMF_VARS.fd': No such file or directory",
    ],
    "uri-implies-tls": [
        "error: Cannot read CA certificate '/etc/pki/CA/cacert.pem': No such file or directory",
        "error: unable to connect to server at 'kvm1.example.org:16514': Connection refused",
    ],
    "vcpus-need-eim": [
        "unsupported configuration: more than 255 vCPUs require extended interrupt mode enabled "
        "on the iommu device"
    ],
    "vhost-net-unavailable": [
        "error: internal error: Unable to open vhost-net. Opened so far 0, requested 1",
        "qemu-system-x86_64: -netdev tap,vhost=on: vhost-net support unavailable",
    ],
    "libvirt-conf-syntax-error": [
        # libvirtd 9.0 of the lab, started with `libvirtd -f FILE` on an unquoted string
        # (tests/integration/test_libvirt_conf.py gets it from the real daemon)
        "2026-12-04 06:28:31.653+0000: 14141: error : main:918 : Can't load config file: "
        "configuration file syntax error: /etc/libvirt/libvirtd.conf:2: expecting a value: "
        "/etc/libvirt/libvirtd.conf",
    ],
    "virtlogd-not-running": [
        "error: Failed to connect socket to '/run/libvirt/virtlogd-sock': No such file or directory"
    ],
}

# Error messages from the field notes (shared/reference/), verbatim, with the playbook that
# holds the cause and fix the notes give. Messages about what no check looks at (virt-install
# options, `virsh undefine`, video devices, building libvirt) are not here.
FIELD_NOTES: list[tuple[str, str]] = [
    (
        "failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory",
        "libvirtd-not-running",
    ),
    (
        "Cannot read CA certificate '/etc/pki/CA/cacert.pem': No such file or directory",
        "uri-implies-tls",
    ),
    (
        "Cannot read CA certificate '/etc/pki/CA/cacert.pem': No such file or directory",
        "tls-ca-missing",
    ),
    (
        "Cannot read certificate '/etc/pki/libvirt/servercert.pem': No such file or directory",
        "tls-cert-or-key-missing",
    ),
    (
        "direct firewall backed requested, but /sbin/ebtables is not avaliable: No such file or "
        "directory",
        "firewall-tools-missing-iptables",
    ),
    (
        "failed to connect socket to '/var/run/libvirt/virtqemud-sock': No such file or directory",
        "modular-daemon-not-running",
    ),
    (
        "failed to connect socket to '/var/run/libvirt/virtqemud-sock': No such file or directory",
        "libvirt-daemon-not-installed",
    ),
    (
        "Cannot check QEMU binary /usr/libexec/qemu-kvm: No such file or directory",
        "rhel-emulator-path-on-other-distribution",
    ),
    (
        "Falied to setup UEFI: 不能为架构'aarch64'找到任何UEFI二进制路径",
        "uefi-firmware-missing-aarch64",
    ),
    ("Did not find any UEFI binary path for ...", "uefi-firmware-missing"),
    ("cannot access storage file", "qemu-cannot-access-images"),
    (
        "unsupported configuration: ACPI requires UEFI on this architecture",
        "uefi-firmware-missing-aarch64",
    ),
    (
        "unsupported configuration: per-device boot elements cannot be used together with "
        "os/boot elements",
        "boot-order-conflict",
    ),
    (
        "unsupported configuration: more than 255 vCPUs require extended interrupt mode enable on "
        "the iommu device",
        "vcpus-need-eim",
    ),
    ("Unable to add bridge eth0 port vnet0: Operation not supported", "bridge-source-invalid"),
    (
        "error creating macvtap interface macvtap@eth0 (52:54:00:56:84:7a): Device or resource busy",
        "macvtap-on-enslaved-device",
    ),
    (
        "unsupported configuration: disk type 'virtio' of 'vdb' does not support ejectable media",
        "cdrom-on-virtio-bus",
    ),
    (
        "No physical memory available at the location required for the Windows Boot Manager.",
        "memory-implausibly-small",
    ),
    ("Unable to open /dev/kvm: No such file or director", "kvm-missing-nested-not-exposed"),
    ("Unable to open /dev/kvm: No such file or director", "kvm-device-missing"),
    (
        "internal error: qemu unexpectedly closed the monitor: Could not access KVM kernel module: "
        "Permission denied",
        "kvm-device-acl-denies",
    ),
    (
        "qemu-system-x86_64: failed to initialize KVM: Permission denied",
        "kvm-device-not-accessible",
    ),
    (
        "unsupported configuration: Only a single IDE controller is supported for this machine type",
        "ide-controller-limit",
    ),
    (
        "unsupported configuration: IDE controllers are unsupported for this QEMU binary or "
        "machine type",
        "ide-controller-limit",
    ),
    ("internal error: Failed to reserve port 5900", "graphics-port-conflict"),
    ('Failed to get "write" lock', "disk-used-twice"),
    ("error: Failed to initialize libvirt", "libvirt-connection-denied"),
    ("No more available PCI slots", "pci-slots-exhausted"),
    ("kvm: VMX is disabled on CPU 0", "kvm-firmware-disabled"),
    ("could not inert 'kvm_intel': Input/output error", "kvm-backend-refused-to-load"),
]


@pytest.fixture(scope="module")
def book() -> playbooks.Playbooks:
    return playbooks.load()


# --- loading --------------------------------------------------------------------------------


def test_every_shipped_playbook_loads(book: playbooks.Playbooks) -> None:
    assert book.errors == []
    assert len(book) == len(list((ROOT / "playbooks").glob("*.yaml")))


def test_the_schema_the_loader_uses_is_the_published_one() -> None:
    shipped = json.loads((ROOT / "playbooks" / "playbook.schema.json").read_text())
    published = json.loads((ROOT / "docs" / "playbook.schema.json").read_text())
    assert shipped == published


def test_an_invalid_playbook_is_reported_with_its_file_and_the_others_load(
    tmp_path: Path,
) -> None:
    good = (ROOT / "playbooks" / "virtlogd-not-running.yaml").read_text()
    (tmp_path / "virtlogd-not-running.yaml").write_text(good)
    (tmp_path / "no-fix.yaml").write_text(
        good.replace("virtlogd-not-running", "no-fix").split("fix:")[0] + "verify: [LIB003]\n"
    )
    (tmp_path / "bad-regex.yaml").write_text(
        good.replace("virtlogd-not-running", "bad-regex") + "  - 'unclosed (group'\n"
    )
    (tmp_path / "wrong-name.yaml").write_text(good)
    (tmp_path / "not-yaml.yaml").write_text("id: [unclosed\n")
    (tmp_path / "unsafe.yaml").write_text(
        good.replace("virtlogd-not-running", "unsafe").replace("safety: safe", "safety: yolo")
    )
    (tmp_path / "stray-brace.yaml").write_text(
        good.replace("virtlogd-not-running", "stray-brace").replace("{message}", "{message} {")
    )

    loaded = playbooks.load(tmp_path)

    assert list(loaded.items) == ["virtlogd-not-running"]
    errors = {Path(e.file).name: e.message for e in loaded.errors}
    assert set(errors) == {
        "no-fix.yaml",
        "bad-regex.yaml",
        "wrong-name.yaml",
        "not-yaml.yaml",
        "unsafe.yaml",
        "stray-brace.yaml",
    }
    assert "'fix' is a required property" in errors["no-fix.yaml"]
    assert "signatures/1: not a valid regular expression" in errors["bad-regex.yaml"]
    assert "differs from the file name 'wrong-name'" in errors["wrong-name.yaml"]
    assert "fix/0/safety" in errors["unsafe.yaml"]
    assert "a brace that is no placeholder" in errors["stray-brace.yaml"]


def test_an_invalid_playbook_reaches_the_report_as_a_load_error(tmp_path: Path) -> None:
    from doctor import rules

    (tmp_path / "broken.yaml").write_text("id: broken\n")
    book = playbooks.load(tmp_path)
    error = rules.playbook_load_error(book.errors[0])
    assert error.origin == f"playbook {tmp_path / 'broken.yaml'}"
    assert "'title' is a required property" in error.message


# --- coverage -------------------------------------------------------------------------------


def test_every_registered_check_code_has_a_playbook(book: playbooks.Playbooks) -> None:
    codes = [spec.code for spec in load_registry()]
    assert codes, "no check registered"
    assert playbooks.codes_without_playbook(codes, book) == []


def test_every_playbook_names_only_registered_codes(book: playbooks.Playbooks) -> None:
    known = {spec.code for spec in load_registry()}
    for playbook in book:
        named = {*playbook.codes, *playbook.explains, *playbook.verify}
        assert named <= known, (playbook.id, sorted(named - known))


# --- signatures -----------------------------------------------------------------------------


def test_every_playbook_with_signatures_has_its_examples(book: playbooks.Playbooks) -> None:
    with_signatures = {p.id for p in book if p.signatures}
    assert set(SIGNATURE_EXAMPLES) == with_signatures


@pytest.mark.parametrize(
    ("playbook_id", "index"),
    [(p, i) for p, examples in SIGNATURE_EXAMPLES.items() for i in range(len(examples))],
)
def test_each_signature_recognises_its_real_message(
    book: playbooks.Playbooks, playbook_id: str, index: int
) -> None:
    playbook = book.get(playbook_id)
    assert playbook is not None
    assert len(SIGNATURE_EXAMPLES[playbook_id]) == len(playbook.signatures)
    message = SIGNATURE_EXAMPLES[playbook_id][index]
    signature = playbook.signatures[index]
    assert any(signature.search(line) for line in pasted_lines(message)), signature.pattern
    assert playbook_id in [m.playbook.id for m in book.match_text(message)]


@pytest.mark.parametrize(("message", "playbook_id"), FIELD_NOTES, ids=lambda v: v[:50])
def test_explain_finds_the_field_notes_playbook(
    book: playbooks.Playbooks, message: str, playbook_id: str
) -> None:
    assert playbook_id in [m.playbook.id for m in book.match_text(message)]


def test_the_field_notes_messages_are_quoted_verbatim() -> None:
    require(REFERENCE.is_dir(), f"the field notes at {REFERENCE}")
    notes = "\n".join(p.read_text(encoding="utf-8") for p in REFERENCE.glob("*.txt"))
    lowered = notes.lower()
    for message, _ in FIELD_NOTES:
        assert message.lower() in lowered, message


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("Cannot find 'nft' in path", "Cannot find 'nft' in path"),
        (
            r"Unable to add bridge (?P<bridge>\S+) port (?P<iface>\S+): No such device",
            "Unable to add bridge ",
        ),
        ('Failed to get (shared )?"write" lock', "Failed to get "),
        (
            r"Is another process using the image \[(?P<path>[^\]]+)\]",
            "Is another process using the image [",
        ),
        ("colou?r mismatch", "r mismatch"),  # "u" may be absent, so it splits the text
        (r"abc\d{2}defg", "defg"),  # a counted repeat is skipped, not read as text
        ("abcd{0,3}efgh", "efgh"),
        ("ab[cd]*efgh", "efgh"),  # a class and what it repeats are not text
        ("ab+cdef", "cdef"),
        ("vhost(-net)? is missing", " is missing"),  # nothing inside a group counts
        ("Operation not permitted|Permission denied", ""),  # either may occur
        (r"\d+ \S+", ""),
        ("abc", ""),  # too short to be worth a test of its own
        (r"abc\x41defgh", "defgh"),  # characters given by number or name are not read as text
        (r"Failed\x20to connect", "to connect"),
        (r"abc\u0041defgh", "defgh"),
        (r"abc\101defgh", "defgh"),
        (r"abc\0123defgh", "3defgh"),  # \012 is the octal escape; the 3 is text again
        (r"abc\N{LATIN CAPITAL LETTER A}defgh", "defgh"),
        (r"(\w+) and \1 again", " again"),
        ("(?x)cannot \\s* connect  socket", ""),  # verbose: spaces are not text
        ("(?i)Cannot connect", "Cannot connect"),
    ],
)
def test_the_text_a_signature_requires(pattern: str, expected: str) -> None:
    assert playbooks.required_text(pattern) == expected


def _every_signature(book: playbooks.Playbooks, line: str) -> set[str]:
    return {p.id for p in book for s in p.signatures if s.search(line)}


def test_the_required_text_never_hides_a_match(book: playbooks.Playbooks) -> None:
    """match_line tries a signature only on lines holding its required text: over every real
    message here, the field notes, the message corpus (as pasted, and its wrapped lines joined
    again) and the kernel and libvirt logs among the real data, it finds what searching every
    signature finds."""
    from doctor.playbooks import _rejoined

    texts = [m for examples in SIGNATURE_EXAMPLES.values() for m in examples]
    texts += [m for m, _ in FIELD_NOTES]
    realdata = ROOT / "tests" / "fixtures" / "realdata"
    texts += [p.read_text(errors="replace") for p in sorted(realdata.rglob("*")) if p.is_file()]
    lines = {line for text in texts for line in message_lines(text)}
    for entry in corpus():
        pasted = pasted_lines(entry["message"])
        lines.update(pasted)
        for i in range(len(pasted) - 1):
            lines.update(_rejoined(pasted[i : i + 3]))
    matched = 0
    for line in sorted(lines):
        found = {m.playbook.id for m in book.match_line(line)}
        assert found == _every_signature(book, line), line
        matched += bool(found)
    assert matched >= len(SIGNATURE_EXAMPLES)


def corpus() -> list[dict[str, object]]:
    import yaml

    entries = []
    for path in sorted((ROOT / "tests" / "fixtures" / "messages").glob("*.yaml")):
        entries += yaml.safe_load(path.read_text(encoding="utf-8"))
    return entries


@pytest.mark.parametrize(
    ("pattern", "line"),
    [
        (r"abc\x41defgh", "abcAdefgh"),
        (r"Failed\x20to connect", "Failed to connect"),
        (r"abc\N{LATIN CAPITAL LETTER A}defgh", "abcadefgh"),
        ("(?x)cannot \\s* connect  socket", "cannotconnectsocket"),
        ("permission denied", "permi\u017f\u017fion denied"),  # long s folds onto s
        ("image is busy", "\u0131mage is busy"),  # dotless i folds onto i
        ("\u017fegment fault", "segment fault"),  # and the other way round
    ],
)
def test_the_filter_never_hides_what_the_signature_matches(pattern: str, line: str) -> None:
    """Lines and signatures outside the shipped ones: escapes, verbose patterns and the
    letters case-insensitive matching folds onto ASCII."""
    book = playbooks.Playbooks()
    signature = re.compile(pattern, re.IGNORECASE)
    assert signature.search(line)
    book.items["p"] = dataclasses.replace(
        next(iter(playbooks.shipped())), id="p", signatures=(signature,)
    )
    assert [m.playbook.id for m in book.match_line(line)] == ["p"]


def test_every_shipped_signature_has_required_text(book: playbooks.Playbooks) -> None:
    """Without it a signature is tried on every log line; keep signatures specific."""
    for playbook in book:
        for signature in playbook.signatures:
            assert playbooks.required_text(signature.pattern), (playbook.id, signature.pattern)


def test_a_message_unlike_any_signature_matches_nothing(book: playbooks.Playbooks) -> None:
    assert book.match_text("Domain web1 started\nerror: the weather is fine") == []


# --- normalising pasted text ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "error: Failed to start domain 'web1'",
            "Failed to start domain 'web1'",
        ),
        (
            "libvirt.libvirtError: internal error: Failed to reserve port 5900",
            "Failed to reserve port 5900",
        ),
        (
            "2026-11-26 07:24:21.858+0000: 7722: error : virQEMUCapsNewForBinaryInternal:5859 : "
            "Cannot check QEMU binary /usr/libexec/qemu-kvm: No such file or directory",
            "Cannot check QEMU binary /usr/libexec/qemu-kvm: No such file or directory",
        ),
        (
            "2026-11-26T07:27:48+0000 kvm1 libvirtd[7719]: error: Failed to connect socket",
            "Failed to connect socket",
        ),
        (
            "Nov 26 07:27:48 kvm1 libvirtd[7719]: internal error: Failed to reserve port 5977",
            "Failed to reserve port 5977",
        ),
        (
            "2026-11-26T07:27:52.311823Z qemu-system-x86_64: -blockdev {}: Failed to get lock",
            "-blockdev {}: Failed to get lock",
        ),
        ("[    1.028834] kvm: disabled by bios", "kvm: disabled by bios"),
        (
            "Cannot read CA certificate ‘/etc/pki/CA/cacert.pem’",
            "Cannot read CA certificate '/etc/pki/CA/cacert.pem'",
        ),
    ],
)
def test_normalise_drops_what_differs_between_tools(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (  # logrus, and Go's net.Dial in libvirt's words
            "level=error msg=Error: failed to dial libvirt: dial unix "
            "/var/run/libvirt/libvirt-sock: connect: no such file or directory",
            "failed to dial libvirt: Failed to connect socket to '/var/run/libvirt/libvirt-sock': "
            "no such file or directory",
        ),
        (  # oslo.log (nova), after its own time stamp
            "2014-02-27 02:16:42.505 7854 TRACE nova.virt.libvirt.driver libvirtError: Failed to "
            "connect socket to '/run/libvirt/libvirt-sock': No such file or directory",
            "Failed to connect socket to '/run/libvirt/libvirt-sock': No such file or directory",
        ),
        (  # ... and in the journal, without its process id
            "Jul 13 02:16:32 fv-az1276-702 nova-compute[80768]: ERROR nova.compute.manager "
            "[instance: deb01d2a-6729-4a7b-822d-606e63f47563] Instance failed to spawn",
            "Instance failed to spawn",
        ),
        (  # OpenNebula
            "Wed Dec  4 18:07:39 2024 [Z0][VMM][I]: error: Cannot check QEMU binary "
            "/usr/bin/qemu-kvm-one: No such file or directory",
            "Cannot check QEMU binary /usr/bin/qemu-kvm-one: No such file or directory",
        ),
        (  # klog (minikube, KubeVirt)
            "E1214 07:34:09.398740    9185 start.go:493] Error starting the VM",
            "Error starting the VM",
        ),
        (  # elapsed time of a CI log
            "00:03:38.739  Could not access KVM kernel module: No such file or directory",
            "Could not access KVM kernel module: No such file or directory",
        ),
        (  # virt-install's padded level
            "ERROR    authentication unavailable: no polkit agent available",
            "authentication unavailable: no polkit agent available",
        ),
        (  # Terraform's error box
            "│ Error: Requested operation is not valid: network is not running",
            "Requested operation is not valid: network is not running",
        ),
        (  # Markdown quote and emphasis, a nix build's prefix
            "> **Error starting domain: Cannot access storage file '/x' (as uid:107, gid:107)",
            "Cannot access storage file '/x' (as uid:107, gid:107)",
        ),
        (
            "mac_hdd_ng.qcow2> qemu-system-x86_64: failed to initialize kvm: Permission denied",
            "failed to initialize kvm: Permission denied",
        ),
        (  # a Python repr of JSON: escaped quotes, double quotes as single ones
            '{"msg": "Failed to connect socket to \\\'/run/libvirt/libvirt-sock\\\': Permission '
            'denied"}',
            "{'msg': 'Failed to connect socket to '/run/libvirt/libvirt-sock': Permission denied'}",
        ),
        (  # Markdown's escaped brackets
            "Is another process using the image \\[/var/snap/root.qcow2\\]?",
            "Is another process using the image [/var/snap/root.qcow2]?",
        ),
        (  # QEMU's backtick, and a socket path left unquoted
            "failed to get mtu of bridge `br0': No such device",
            "failed to get mtu of bridge 'br0': No such device",
        ),
        (
            "error: Failed to connect socket to /run/user/1000/libvirt/virtqemud-sock: No such "
            "file or directory",
            "Failed to connect socket to '/run/user/1000/libvirt/virtqemud-sock': No such file or "
            "directory",
        ),
    ],
)
def test_pasted_lines_undo_what_pasting_and_tools_add(raw: str, expected: str) -> None:
    assert pasted_lines(raw) == [expected]


def test_escaped_line_breaks_separate_pasted_lines() -> None:
    assert pasted_lines("a first line\\r\\nand a second\\\\nand a third") == [
        "a first line",
        "and a second",
        "and a third",
    ]


def test_a_literal_backslash_n_separates_lines() -> None:
    text = "qemu unexpectedly closed the monitor: x\\nqemu-system-x86_64: failed to initialize KVM"
    assert message_lines(text) == [
        "qemu unexpectedly closed the monitor: x",
        "failed to initialize KVM",
    ]


# --- placeholders ---------------------------------------------------------------------------


def test_placeholders_fill_from_paths_indexes_and_defaults() -> None:
    evidence = {"device": {"group": "kvm"}, "kernel_lines": ["a", "b"], "empty": None}

    def resolve(name: str) -> str | None:
        found, value = lookup(evidence, name)
        return str(value) if found and value is not None else None

    text, missing = fill(
        "{device.group} {kernel_lines[-1]} {empty|none} {absent} {{literal}}", resolve
    )
    assert text == "kvm b none <absent> {literal}"
    assert missing == ["absent"]


def test_compiled_playbooks_are_current_and_load_like_the_yaml() -> None:
    """playbooks/compiled.json (what a run loads) holds exactly today's YAML: `make docs`."""
    import json

    from doctor.playbooks import COMPILED_NAME, compile_shipped, load

    from kdtest import ROOT

    written = json.loads((ROOT / "playbooks" / COMPILED_NAME).read_text())
    assert written == json.loads(json.dumps(compile_shipped())), "stale: run make docs"
    fast, slow = load(use_compiled=True), load()
    assert list(fast.items) == list(slow.items)
    assert [p.signatures for p in fast] == [p.signatures for p in slow]


def _copy_shipped(tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "playbooks"
    target.mkdir(parents=True)
    for path in (ROOT / "playbooks").iterdir():
        if path.suffix in (".yaml", ".json"):
            shutil.copy(path, target / path.name)
    return target


def test_a_current_compiled_json_is_loaded_without_compiling_a_signature(tmp_path: Path) -> None:
    """A run takes the playbooks from compiled.json and compiles a signature only when a line
    reaches it (past its required text): a line no signature can match compiles none."""
    directory = _copy_shipped(tmp_path)
    book = playbooks.load(directory, use_compiled=True)
    slow = playbooks.load(directory)
    assert not book.errors and list(book.items) == list(slow.items)
    signatures = [s for p in book for s in p.signatures]
    assert len(signatures) > 100
    assert all(s._compiled is None for s in signatures)  # loaded from compiled.json
    assert all(s._compiled is not None for p in slow for s in p.signatures)  # from YAML
    assert book.match_line("systemd[1]: Started Session 4 of user root.") == []
    assert all(s._compiled is None for s in signatures)
    line = "Cannot find 'nft' in path"
    assert [m.playbook.id for m in book.match_line(line)] == [
        m.playbook.id for m in slow.match_line(line)
    ]
    assert 0 < sum(s._compiled is not None for s in signatures) < len(signatures)


def test_a_line_makes_only_the_playbooks_it_matches(tmp_path: Path) -> None:
    """From compiled.json, matching a line makes the playbooks whose signature it matches;
    the others stay data (their signatures' texts come from compiled.json's `runs`)."""
    directory = _copy_shipped(tmp_path)
    book = playbooks.load(directory, use_compiled=True)
    everything = playbooks.load(directory)
    line = "Cannot find 'nft' in path"
    matched = [m.playbook.id for m in book.match_line(line)]
    assert matched == [m.playbook.id for m in everything.match_line(line)] != []
    assert set(book._items) == set(matched)
    assert len(book._pending) == len(everything.items) - len(matched)
    assert book._runs and all(book.runs(p) == playbooks.literal_runs(p) for p in book.patterns())


def test_a_stale_compiled_json_is_not_used(tmp_path: Path) -> None:
    """A playbook edited (or added, or removed) after compiled.json was written is loaded from
    its YAML, validated: the files' sizes no longer match compiled.json's stamp."""
    directory = _copy_shipped(tmp_path)
    edited = directory / "bond-degraded.yaml"
    edited.write_text(edited.read_text().replace("title: ", "title: Edited ", 1), encoding="utf-8")
    book = playbooks.load(directory, use_compiled=True)
    entry = book.get("bond-degraded")
    assert entry is not None and entry.title.startswith("Edited ")
    assert all(s._compiled is not None for p in book for s in p.signatures)

    directory = _copy_shipped(tmp_path / "added")
    (directory / "extra-problem.yaml").write_text(
        edited.read_text().replace("id: bond-degraded", "id: extra-problem"), encoding="utf-8"
    )
    assert "extra-problem" in playbooks.load(directory, use_compiled=True).items

    directory = _copy_shipped(tmp_path / "removed")
    (directory / "bond-degraded.yaml").unlink()
    assert "bond-degraded" not in playbooks.load(directory, use_compiled=True).items


def test_a_signature_compiled_late_equals_the_expression() -> None:
    signature = playbooks.Signature(r"Unable to add bridge (?P<bridge>\S+) port")
    compiled = re.compile(signature.pattern, re.IGNORECASE)
    assert signature == compiled and signature == playbooks.Signature(signature.pattern)
    found = signature.search("x: unable to add BRIDGE br0 port vnet1")
    assert found is not None and found.group("bridge") == "br0"
    assert signature.search("unable to add a bridge") is None


def test_a_run_makes_only_the_playbooks_its_findings_codes_can_reveal(tmp_path: Path) -> None:
    """From compiled.json, diagnose makes only the playbooks with a condition on a code among
    the findings; the diagnoses are those of every playbook made from the YAML, and the others
    are made when asked for, in the order load gives them."""
    from doctor import rules
    from doctor.model import Finding

    directory = _copy_shipped(tmp_path)
    lazy, full = playbooks.load(directory, use_compiled=True), playbooks.load(directory)
    assert lazy._pending and not lazy._items  # nothing made at load
    findings = []
    for code in ("KVM001", "LIB001", "NET009", "KVM008"):
        findings.append(Finding("fail", f"{code} failed", subject="host", code=code))
    ours, marked = rules.diagnose(findings, lazy)
    theirs, marked_full = rules.diagnose(findings, full)
    assert [d.as_dict(i) for i, d in enumerate(ours)] == [
        d.as_dict(i) for i, d in enumerate(theirs)
    ]
    assert marked == marked_full
    assert ours, "the findings reveal some playbook"
    made = set(lazy._items)
    assert made and len(made) < len(full)
    named = {p.id for p in full if {"KVM001", "LIB001", "NET009", "KVM008"} & set(p.codes)}
    assert made == named
    assert list(lazy.items) == list(full.items) and not lazy._pending
    assert lazy.for_codes(["NET009"]) == [p for p in full if "NET009" in p.codes]
