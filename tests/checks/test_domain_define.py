"""DOM009-DOM019 and DOM021-DOM024, the define-time rules: a failing and a passing definition each.

Each failing definition is the smallest change to a plain guest that libvirt 9.0 refuses with
the words the check quotes (the suite's own inputs and the derived ones are in
tests/fixtures/libvirt-suite, asserted by tests/test_lint_oracle.py); each passing one is the
same guest with the problem put right.
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional

import pytest

from checks import domain as domain_checks
from doctor.facts.domains import Domains, parse_domain
from doctor.model import Finding

from kdtest import require


def guest(
    devices: str = "",
    *,
    machine: str = "pc-q35-7.2",
    memory: str = "<memory unit='MiB'>512</memory>",
    vcpu: str = "<vcpu>2</vcpu>",
    features: str = "<acpi/>",
    os_extra: str = "",
    os_attrs: str = "",
    numa: str = "",
) -> str:
    return f"""<domain type='kvm'>
  <name>kd-define</name>
  {memory}
  {vcpu}
  <os{os_attrs}><type arch='x86_64' machine='{machine}'>hvm</type>{os_extra}</os>
  <features>{features}</features>
  {numa}
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
{devices}
  </devices>
</domain>"""


def verdict(code: str, xml: str) -> Finding:
    """The one finding the check gives on the definition (read as `kvmdoctor lint` reads it)."""
    dom = parse_domain(xml, active=False, persistent=True, origin="t.xml", file="t.xml")
    spec = next(c for c in _checks() if c.code == code)
    (finding,) = list(spec.func(Domains((dom,), "files")))
    return finding


def _checks() -> list:  # type: ignore[type-arg]
    from doctor.registry import load_registry

    return list(load_registry())


def disk(target: str, bus: str, *, extra: str = "", fmt: str = "raw", src: str = "") -> str:
    source = src or f"/var/lib/libvirt/images/{target}.img"
    return (
        f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>"
        f"<source file='{source}'/><target dev='{target}' bus='{bus}'/>{extra}</disk>"
    )


def pci(slot: int, function: int = 0, bus: int = 0) -> str:
    return f"<address type='pci' domain='0x0000' bus='{bus:#04x}' slot='{slot:#04x}' function='{function:#x}'/>"


NIC = "<interface type='network'><source network='default'/><model type='virtio'/>{}</interface>"
ROOT_PORTS = "<controller type='pci' model='pcie-root-port'/>" * 241
SCSI_HOSTDEV = (
    "<hostdev mode='subsystem' type='scsi' managed='no'><source><adapter name='scsi_host0'/>"
    "<address bus='0' target='0' unit='1'/></source>"
    "<address type='drive' controller='0' bus='0' target='0' unit='{}'/></hostdev>"
)
DRIVE = "<address type='drive' controller='0' bus='0' target='0' unit='0'/>"
EFI_LOADER = "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"

# (code, libvirt's words in the failing finding, failing definition, passing definition)
CASES: list[tuple[str, str, str, str]] = [
    (
        "DOM009",
        "Memory size must be specified",
        guest(memory=""),
        guest(
            memory="",
            numa="<cpu><numa><cell id='0' cpus='0-1' memory='512' unit='MiB'/></numa></cpu>",
        ),
    ),
    (
        "DOM010",
        "target 'sda' duplicated for disk sources",
        guest(disk("sda", "sata") + disk("sda", "scsi", src="/srv/b.img")),
        guest(disk("sda", "sata") + disk("sdb", "scsi", src="/srv/b.img")),
    ),
    (
        "DOM011",
        "Found duplicate drive address",
        guest(
            disk("sda", "sata")
            + disk(
                "sdb",
                "sata",
                extra="<address type='drive' controller='0' bus='0' target='0' unit='0'/>",
            )
        ),
        guest(
            disk("sda", "sata")
            + disk(
                "sdb",
                "sata",
                extra="<address type='drive' controller='0' bus='0' target='0' unit='1'/>",
            )
        ),
    ),
    (
        "DOM011",
        "Found duplicate drive address",
        guest(disk("sda", "scsi") + SCSI_HOSTDEV.format(0)),
        guest(disk("sda", "scsi") + SCSI_HOSTDEV.format(1)),
    ),
    (
        "DOM012",
        "Attempted double use of PCI Address 0000:00:03.0",
        guest(NIC.format(pci(3)) + NIC.format(pci(3)), machine="pc"),
        guest(NIC.format(pci(3)) + NIC.format(pci(4)), machine="pc"),
    ),
    (
        "DOM012",
        "Attempted double use of PCI Address 0000:00:01.1",
        guest("<memballoon model='virtio'>" + pci(1, 1) + "</memballoon>", machine="pc"),
        guest(
            "<controller type='ide' index='0'>" + pci(1, 1) + "</controller>"
            "<memballoon model='virtio'>" + pci(5) + "</memballoon>",
            machine="pc",
        ),
    ),
    (
        "DOM013",
        "Invalid PCI address slot='0x20', must be <= 0x1F",
        guest(NIC.format(pci(0x20)), machine="pc"),
        guest(NIC.format(pci(0x1F)), machine="pc"),
    ),
    (
        "DOM014",
        "must be model='pcie-root' for this machine type",
        guest("<controller type='pci' index='0' model='pci-root'/>"),
        guest("<controller type='pci' index='0' model='pcie-root'/>"),
    ),
    (
        "DOM014",
        "Multiple 'pci' controllers with index '1'",
        guest(
            "<controller type='pci' index='1' model='pcie-root-port'/>"
            "<controller type='pci' index='1' model='pcie-root-port'/>"
        ),
        guest(
            "<controller type='pci' index='1' model='pcie-root-port'/>"
            "<controller type='pci' index='2' model='pcie-root-port'/>"
        ),
    ),
    (
        "DOM014",
        "a PCI slot is needed to connect a PCI controller model='pcie-root-port'",
        guest(ROOT_PORTS),
        guest("<controller type='pci' model='pcie-root-port'/>" * 200),
    ),
    (
        "DOM015",
        "shared access for disk 'vdb' requires use of supported storage format",
        guest(disk("vdb", "virtio", fmt="qcow2", extra="<shareable/>")),
        guest(disk("vdb", "virtio", fmt="raw", extra="<shareable/>")),
    ),
    (
        "DOM016",
        "Maximum CPUs greater than specified machine type limit 255",
        guest(vcpu="<vcpu>256</vcpu>", machine="pc-i440fx-7.2"),
        guest(vcpu="<vcpu>255</vcpu>", machine="pc-i440fx-7.2"),
    ),
    (
        "DOM016",
        "Maximum CPUs greater than specified machine type limit 288",
        guest(vcpu="<vcpu>289</vcpu>", machine="pc-q35-7.2"),
        guest(vcpu="<vcpu>288</vcpu>", machine="pc-q35-7.2"),
    ),
    (
        "DOM017",
        "IOMMU device: 'intel' is only supported with Q35 machines",
        guest("<iommu model='intel'/>", machine="pc"),
        guest("<iommu model='intel'/>", machine="q35"),
    ),
    (
        "DOM017",
        "IOMMU device: 'virtio' requires ACPI",
        guest("<iommu model='virtio'/>", features=""),
        guest("<iommu model='virtio'/>"),
    ),
    (
        "DOM018",
        "SMM TSEG is only supported with q35 machine type",
        guest(machine="pc", features="<acpi/><smm state='on'><tseg unit='MiB'>48</tseg></smm>"),
        guest(features="<acpi/><smm state='on'><tseg unit='MiB'>48</tseg></smm>"),
    ),
    (
        "DOM018",
        "SMM TSEG size must be divisible by 1 MiB",
        guest(features="<acpi/><smm state='on'><tseg unit='KiB'>1536</tseg></smm>"),
        guest(features="<acpi/><smm state='on'><tseg unit='KiB'>2048</tseg></smm>"),
    ),
    (
        "DOM019",
        "no loader path specified and firmware auto selection disabled",
        guest(os_extra="<loader readonly='yes' type='pflash'/>"),
        guest(os_extra=EFI_LOADER),
    ),
    (
        "DOM019",
        "NVRAM is not permitted when loader is stateless",
        guest(
            os_extra="<loader readonly='yes' type='pflash' stateless='yes'>"
            "/usr/share/OVMF/OVMF_CODE_4M.fd</loader><nvram>/var/lib/x_VARS.fd</nvram>"
        ),
        guest(
            os_extra="<loader readonly='yes' type='pflash' stateless='yes'>"
            "/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"
        ),
    ),
    (
        "DOM019",
        "firmware feature 'enrolled-keys' cannot be enabled when firmware feature "
        "'secure-boot' is disabled",
        guest(
            os_attrs=" firmware='efi'",
            os_extra="<firmware><feature enabled='no' name='secure-boot'/>"
            "<feature enabled='yes' name='enrolled-keys'/></firmware>",
        ),
        guest(
            os_attrs=" firmware='efi'",
            os_extra="<firmware><feature enabled='yes' name='secure-boot'/>"
            "<feature enabled='yes' name='enrolled-keys'/></firmware>",
        ),
    ),
    (
        "DOM019",
        "UEFI requires ACPI on this architecture",
        guest(os_attrs=" firmware='efi'", features=""),
        guest(os_attrs=" firmware='efi'"),
    ),
    (
        "DOM014",
        "Invalid value for attribute 'index' in element 'controller': '-1'",
        guest("<controller type='pci' index='-1' model='pcie-root-port'/>"),
        guest("<controller type='pci' index='1' model='pcie-root-port'/>"),
    ),
    (
        "DOM021",
        "Invalid address type 'pci' for the disk 'sda' with the bus type 'sata'",
        guest(disk("sda", "sata", extra=pci(5))),
        guest(disk("sda", "sata", extra=DRIVE)),
    ),
    (
        "DOM021",
        "unexpected address type for usb disk",
        guest(disk("sdb", "usb", extra=pci(5))),
        guest(disk("sdb", "usb", extra="<address type='usb' bus='0' port='1'/>")),
    ),
    (
        "DOM021",
        "IOMMU device: 'virtio' needs a PCI address",
        guest("<iommu model='virtio'><address type='virtio-mmio'/></iommu>"),
        guest("<iommu model='virtio'>" + pci(3) + "</iommu>"),
    ),
    (
        "DOM022",
        "cannot be plugged into the PCI controller with index='1'. It requires a controller "
        "that accepts a dmi-to-pci-bridge.",
        guest(
            "<controller type='pci' index='1' model='pcie-root-port'/>"
            "<controller type='pci' index='2' model='dmi-to-pci-bridge'>"
            + pci(0, bus=1)
            + "</controller>"
        ),
        guest(
            "<controller type='pci' index='1' model='pcie-root-port'/>"
            "<controller type='pci' index='2' model='dmi-to-pci-bridge'>"
            + pci(0x1E)
            + "</controller>"
        ),
    ),
    (
        "DOM022",
        "It requires a controller that accepts a standard PCI device.",
        guest(
            "<controller type='pci' index='1' model='pcie-expander-bus'/>"
            + NIC.format(pci(0, bus=1))
        ),
        guest(
            "<controller type='pci' index='1' model='pcie-expander-bus'/>"
            "<controller type='pci' index='2' model='pcie-root-port'>"
            + pci(0, bus=1)
            + "</controller>"
            + NIC.format(pci(0, bus=2))
        ),
    ),
    (
        "DOM022",
        "needs to be an integrated device (bus=0)",
        guest(
            "<controller type='pci' index='1' model='pcie-root-port'/>"
            "<iommu model='virtio'>" + pci(0, bus=1) + "</iommu>"
        ),
        guest(
            "<controller type='pci' index='1' model='pcie-root-port'/>"
            "<iommu model='virtio'>" + pci(3) + "</iommu>"
        ),
    ),
    (
        "DOM023",
        "invalid disk target 'vdb1', partitions can't appear in disk targets",
        guest(disk("vdb1", "virtio")),
        guest(disk("vdb", "virtio")),
    ),
    (
        "DOM023",
        "missing target information for device /srv/a.img",
        guest("<disk type='file' device='disk'><source file='/srv/a.img'/></disk>"),
        guest(
            "<disk type='file' device='disk'><source file='/srv/a.img'/>"
            "<target dev='vda' bus='virtio'/></disk>"
        ),
    ),
    (
        "DOM024",
        "disk device='lun' is only valid for block type disk source",
        guest(
            "<disk type='file' device='lun'><source file='/srv/a.img'/>"
            "<target dev='sda' bus='scsi'/></disk>"
        ),
        guest(
            "<disk type='block' device='lun'><source dev='/dev/sdz'/>"
            "<target dev='sda' bus='scsi'/></disk>"
        ),
    ),
    (
        "DOM024",
        "Only scsi disk supports vendor and product",
        guest(disk("vdb", "virtio", extra="<vendor>KD</vendor><product>LINT</product>")),
        guest(disk("sdb", "scsi", extra="<vendor>KD</vendor><product>LINT</product>")),
    ),
]


@pytest.mark.parametrize(
    "code,words,failing,passing", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_the_check_fails_what_libvirt_refuses_and_passes_it_put_right(
    code: str, words: str, failing: str, passing: str
) -> None:
    refused = verdict(code, failing)
    assert refused.status == "fail", refused.message
    assert words in refused.message
    assert refused.location is not None and refused.location.element.startswith("/domain")
    accepted = verdict(code, passing)
    assert accepted.status == "pass", accepted.message


def test_drive_addresses_follow_libvirts_assignment_from_the_target_name() -> None:
    from doctor.facts.domains import Disk

    def addr(target: str, bus: str) -> Optional[tuple[int, ...]]:
        return domain_checks._disk_drive_address(
            Disk("disk", "file", bus, target, None, False, False)
        )

    assert addr("hdc", "ide") == (0, 1, 0, 0)
    assert addr("hde", "ide") == (1, 0, 0, 0)
    assert addr("sdg", "sata") == (1, 0, 0, 0)
    assert addr("sdh", "scsi") == (0, 0, 0, 8)  # unit 7 is the controller's own
    assert addr("sdp", "scsi") == (1, 0, 0, 0)
    assert addr("vda", "virtio") is None


def test_the_q35_vcpu_limit_is_certain_only_for_a_versioned_machine_type() -> None:
    assert verdict("DOM016", guest(vcpu="<vcpu>300</vcpu>", machine="q35")).status == "pass"
    assert verdict("DOM016", guest(vcpu="<vcpu>256</vcpu>", machine="pc-q35-2.6")).status == "fail"


# --- DOM025: libvirt's own RelaxNG schema ------------------------------------------------------


def _schemas() -> Any:
    """The schemas libvirt installed on this machine, read as the fact reads them."""
    import os

    from doctor.facts import FactContext
    from doctor.facts.libvirt import SCHEMA_DIR
    from doctor.sources.live import LiveSource

    require(os.path.isfile(f"{SCHEMA_DIR}/domain.rng"), "libvirt's schemas (libvirt-clients)")
    with contextlib.closing(LiveSource(root="/")) as source:
        return FactContext(source).get("libvirt_schemas")


def schema_verdict(xml: str, schemas: Any) -> Finding:
    dom = parse_domain(xml, active=False, persistent=True, origin="t.xml", file="t.xml")
    (finding,) = list(domain_checks.definition_refused_by_schema(Domains((dom,), "files"), schemas))
    return finding


def test_dom025_warns_of_what_libvirts_schema_refuses_and_passes_it_put_right() -> None:
    schemas = _schemas()
    refused = schema_verdict(
        guest("<controller type='pci' index='-1' model='pcie-root-port'/>"), schemas
    )
    assert refused.status == "warn", refused.message
    assert "libvirt's schema refuses the definition" in refused.message
    assert refused.location is not None and refused.location.element == "/domain/devices"
    assert refused.evidence["errors"]
    fine = schema_verdict(
        guest("<controller type='pci' index='1' model='pcie-root-port'/>"), schemas
    )
    assert (fine.status, fine.message) == ("pass", "libvirt's schema accepts the definition")


def test_dom025_skips_saying_so_without_libvirts_schemas() -> None:
    finding = schema_verdict(guest(), None)
    assert finding.status == "skip"
    assert "schemas are not installed on this machine (/usr/share/libvirt/schemas" in (
        finding.message
    )


def test_dom025_leaves_the_hosts_domains_to_libvirt() -> None:
    """`run` keeps no definition text: libvirt parsed its domains already."""
    dom = parse_domain(guest(), active=False, persistent=True, origin="libvirt")
    (finding,) = list(domain_checks.definition_refused_by_schema(Domains((dom,), "libvirt"), None))
    assert finding.status == "skip" and "only kvmdoctor lint validates" in finding.message


def test_the_inlined_schema_judges_as_libvirts_files_do() -> None:
    """The schema compiled from the fact's texts (includes inlined) gives the verdict of
    lxml's own compile of /usr/share/libvirt/schemas/domain.rng, on every corpus input."""
    import json
    from pathlib import Path

    from lxml import etree

    schemas = _schemas()
    ours = domain_checks.domain_schema(schemas)
    theirs = etree.RelaxNG(file=f"{schemas.directory}/domain.rng")
    corpus = Path(__file__).resolve().parents[1] / "fixtures" / "libvirt-suite"
    manifest = json.loads((corpus / "manifest.json").read_text())
    verdicts = []
    for entry in [*manifest["entries"], *manifest["out_of_area"]]:
        doc = etree.parse(str(corpus / entry["file"]))
        verdicts.append((entry["file"], ours.validate(doc), theirs.validate(doc)))
    assert [v for v in verdicts if v[1] != v[2]] == []
    assert any(not v[1] for v in verdicts) and any(v[1] for v in verdicts)


def test_run_leaves_the_schema_check_to_lint_unless_selected() -> None:
    from doctor import engine
    from doctor.registry import load_registry

    registry = load_registry()
    assert "DOM025" not in [s.code for s in engine.select(registry)]
    assert [s.code for s in engine.select(registry, ["DOM025"])] == ["DOM025"]
    every = [s.code for s in registry]
    assert "DOM025" in [s.code for s in engine.select(registry, within=every)]
