"""The firmware facts: descriptor parsing, the search directories' precedence, qemu.conf
`nvram`, domain capabilities, and how libvirt picks a domain's firmware and NVRAM template.

Inputs are real: the descriptors that Debian (x86_64 and aarch64), Arch and QEMU ship
(tests/fixtures/realdata/firmware, copied from shared/realdata), this machine's own
/usr/share/qemu/firmware, the definitions libvirt 9.0 wrote for test domains on the lab machine
and its domain capabilities (tests/fixtures/realdata/firmware/lab), and the qemu.conf Debian
installs. Malformed descriptors are real ones with one thing removed or broken.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pytest

from doctor.facts.domains import Domain, parse_domain
from doctor.facts.firmware import (
    BUILTIN_NVRAM,
    DescriptorError,
    FirmwareInventory,
    file_state,
    find_template,
    machine_matches,
    os_release_ids,
    parse_descriptor,
    parse_domcaps_firmware,
    parse_nvram_pairs,
    resolve_precedence,
    select_firmware,
)
from doctor.sources.live import LiveSource

from kdsnap import ALICE_IDENTITY
from kdtest import ARCH_X86, DEBIAN_X86, REALDATA, require

FIRMWARE = REALDATA / "firmware"
LAB = FIRMWARE / "lab"
OS_RELEASE = REALDATA / "os-release"
CPUINFO = REALDATA / "cpuinfo"
QEMU_CONF = Path(__file__).resolve().parent / "data/libvirt/qemu.conf"
INTEL_CPUINFO = "insights__intel-xeon-e5-2670_baremetal_vmx__cpu0.txt"
ARM64_CPUINFO = "virt-what__gce-arm64-guest_neoverse-n1_aarch64.txt"
ARCH_OS = "notes-id35122322576__archlinux-amd64-docker.txt"
DEBIAN_OS = "notes-id35122322576__debian12-arm64v8-docker.txt"


def real(name: str) -> str:
    return (FIRMWARE / name).read_text()


def parse(name: str) -> Any:
    return parse_descriptor(real(name), name=name, path=f"/usr/share/qemu/firmware/{name}")


def lab_domain(name: str) -> Domain:
    """A definition libvirt 9.0 wrote to /etc/libvirt/qemu on the lab machine."""
    path = LAB / f"etc-libvirt-qemu__{name}.xml"
    return parse_domain(path.read_text(), active=False, persistent=True, origin=str(path))


def descriptors(files: dict[str, str]) -> tuple[Any, ...]:
    return tuple(
        parse_descriptor(real(src), name=name, path=f"/usr/share/qemu/firmware/{name}")
        for name, src in sorted(files.items())
    )


def inventory(files: dict[str, str], **kwargs: Any) -> FirmwareInventory:
    descs = descriptors(files)
    return FirmwareInventory(
        scope="system",
        directories=(),
        entries=(),
        descriptors=descs,
        files={},
        host_arch="x86_64",
        arch_from="test",
        **kwargs,
    )


def never_exists(path: str) -> Any:
    from doctor.facts.firmware import FileState

    return FileState(path, False)


# --- parsing the real descriptors ------------------------------------------------------------


ALL_REAL = sorted(p.name for p in FIRMWARE.glob("*.json"))


@pytest.mark.parametrize("name", ALL_REAL)
def test_every_real_descriptor_parses_as_split_flash_uefi(name: str) -> None:
    desc = parse(name)
    assert desc.uefi and desc.interface_types == ("uefi",)
    assert (desc.device, desc.mode) == ("flash", "split")  # no "mode": the historical default
    assert desc.executable.format == desc.nvram_template.format == "raw"
    assert desc.loader.endswith(".fd") and desc.template.endswith(".fd")
    assert desc.architectures() in (("x86_64",), ("aarch64",))


def test_debian_secure_enrolled_descriptor_is_q35_only_and_requires_smm() -> None:
    desc = parse("debian12-ovmf__40-edk2-x86_64-secure-enrolled.json")
    assert desc.loader == "/usr/share/OVMF/OVMF_CODE_4M.ms.fd"
    assert desc.template == "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
    assert desc.features == (
        "acpi-s3",
        "amd-sev",
        "enrolled-keys",
        "requires-smm",
        "secure-boot",
        "verbose-dynamic",
    )
    assert desc.description.startswith("UEFI firmware for x86_64, with Secure Boot and SMM")
    assert desc.serves("x86_64", "pc-q35-7.2")
    assert not desc.serves("x86_64", "pc-i440fx-7.2")
    assert not desc.serves("aarch64", "virt-7.2")


def test_debian_plain_descriptor_serves_both_x86_machine_families() -> None:
    desc = parse("debian12-ovmf__60-edk2-x86_64.json")
    assert desc.serves("x86_64", "pc-i440fx-7.2") and desc.serves("x86_64", "pc-q35-8.0")
    assert "secure-boot" not in desc.features and "requires-smm" not in desc.features


def test_arch_descriptors_use_their_own_paths_and_keep_acpi_s4() -> None:
    secure = parse("archlinux-edk2-ovmf__50-edk2-ovmf-x86_64-secure-4m.json")
    csm = parse("archlinux-edk2-ovmf__70-edk2-ovmf-x86_64-csm-4m.json")
    assert secure.loader == "/usr/share/edk2-ovmf/x64/OVMF_CODE.secboot.4m.fd"
    assert csm.loader == "/usr/share/edk2/x64/OVMF_CODE.csm.4m.fd"
    assert "acpi-s4" in secure.features and "acpi-s4" in csm.features


def test_debian_aarch64_descriptors_target_virt_machines() -> None:
    desc = parse("debian12-qemu-efi-aarch64__50-edk2-aarch64-secure.json")
    assert desc.loader == "/usr/share/AAVMF/AAVMF_CODE.secboot.fd"
    assert desc.serves("aarch64", "virt-7.2") and desc.serves("aarch64", "virt")
    assert "requires-smm" not in desc.features  # no SMM on Arm: Secure Boot without it


def test_qemu_template_descriptor_names_unexpanded_relative_paths() -> None:
    desc = parse("qemu-upstream-template__60-edk2-aarch64.json")
    assert desc.loader == "@DATADIR@/edk2-aarch64-code.fd"
    state = file_state(LiveSource("/"), desc.loader)
    assert (state.exists, state.error) == (False, "not an absolute path")


def test_this_machines_descriptors_are_the_debian_ones_captured_in_realdata() -> None:
    directory = Path("/usr/share/qemu/firmware")
    require(directory.is_dir(), "Debian's ovmf package (shared/LAB.md)")
    names = sorted(p.name for p in directory.iterdir())
    assert names == sorted(DEBIAN_X86)
    for name in names:
        text = (directory / name).read_text()
        assert text == real(DEBIAN_X86[name])
        desc = parse_descriptor(text, name=name, path=str(directory / name))
        assert all(os.path.exists(p) for p in desc.files()), desc.files()


def test_an_unknown_feature_is_ignored_as_libvirt_ignores_it() -> None:
    doc = json.loads(real("debian12-ovmf__60-edk2-x86_64.json"))
    doc["features"].append("feature-from-the-future")
    desc = parse_descriptor(json.dumps(doc), name="60.json", path="/x/60.json")
    assert desc.features == ("acpi-s3", "amd-sev", "verbose-dynamic")


def test_combined_flash_needs_no_nvram_template() -> None:
    doc = json.loads(real("debian12-ovmf__60-edk2-x86_64.json"))
    doc["mapping"]["mode"] = "combined"
    del doc["mapping"]["nvram-template"]
    desc = parse_descriptor(json.dumps(doc), name="60.json", path="/x/60.json")
    assert (desc.mode, desc.template) == ("combined", None)


def _broken(change: Callable[[dict[str, Any]], None]) -> str:
    doc = json.loads(real("debian12-ovmf__60-edk2-x86_64.json"))
    change(doc)
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("interface-types"), "failed to get interface-types from '/x/60.json'"),
        (lambda d: d.__setitem__("interface-types", ["efi"]), "unknown interface type: 'efi'"),
        (lambda d: d.pop("mapping"), "missing mapping in '/x/60.json'"),
        (lambda d: d["mapping"].pop("device"), "missing device type in '/x/60.json'"),
        (
            lambda d: d["mapping"].__setitem__("device", "rom"),
            "unknown device type in '/x/60.json'",
        ),
        (
            lambda d: d["mapping"].__setitem__("mode", "shared"),
            "Firmware flash mode value 'shared' unexpected",
        ),
        (lambda d: d["mapping"].pop("executable"), "missing 'executable' in '/x/60.json'"),
        (lambda d: d["mapping"].pop("nvram-template"), "missing 'nvram-template' in '/x/60.json'"),
        (
            lambda d: d["mapping"]["executable"].pop("format"),
            "missing 'format' in '/x/60.json'",
        ),
        (lambda d: d.pop("targets"), "failed to get targets from '/x/60.json'"),
        (
            lambda d: d["targets"][0].__setitem__("architecture", "x86-64"),
            "unknown architecture 'x86-64'",
        ),
        (lambda d: d["targets"][0].pop("machines"), "missing 'machines' in '/x/60.json'"),
        (lambda d: d.pop("features"), "failed to get features from '/x/60.json'"),
    ],
)
def test_a_descriptor_libvirt_refuses_is_refused_with_libvirts_words(
    change: Callable[[dict[str, Any]], None], message: str
) -> None:
    with pytest.raises(DescriptorError) as err:
        parse_descriptor(_broken(change), name="60.json", path="/x/60.json")
    assert str(err.value) == message


def test_a_truncated_descriptor_is_not_json() -> None:
    text = real("debian12-ovmf__60-edk2-x86_64.json")[:200]
    with pytest.raises(DescriptorError, match=r"^unable to parse json file '/x/60.json'$"):
        parse_descriptor(text, name="60.json", path="/x/60.json")


def test_qemu_i386_and_arm_targets_take_libvirts_names() -> None:
    doc = json.loads(real("debian12-ovmf__60-edk2-x86_64.json"))
    doc["targets"][0]["architecture"] = "i386"
    desc = parse_descriptor(json.dumps(doc), name="60.json", path="/x/60.json")
    assert desc.architectures() == ("i686",)


# --- machine globs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "machine", "matches"),
    [
        ("pc-q35-*", "pc-q35-7.2", True),
        ("pc-q35-*", "pc-i440fx-7.2", False),
        ("pc-i440fx-*", "pc-i440fx-2.10", True),  # the RHEL 7.4 definition in realdata
        ("pc-q35-*", "q35", True),  # an alias libvirt expands to pc-q35-<newest>
        ("pc-i440fx-*", "q35", False),
        ("pc-i440fx-*", "pc", True),
        ("virt-*", "virt", True),
        ("virt-*", "virt-8.2", True),
        ("pc-q35-?.?", "pc-q35-7.2", True),
        ("pc-q35-?.?", "pc-q35-10.0", False),
        ("pc-q35-[7]*", "pc-q35-7.2", False),  # GLib's simple globs have no brackets
        ("pc-q35-*", None, False),
    ],
)
def test_machine_globs_follow_glibs_simple_patterns(
    pattern: str, machine: Optional[str], matches: bool
) -> None:
    assert machine_matches(pattern, machine) is matches


# --- the search directories ----------------------------------------------------------------


def test_precedence_later_directories_replace_and_names_sort_across_directories() -> None:
    chosen, lost = resolve_precedence(
        [
            ("/usr/share/qemu/firmware", [("50-a.json", "file"), ("60-b.json", "file")]),
            ("/etc/qemu/firmware", [("10-local.json", "file"), ("60-b.json", "file")]),
            ("/home/alice/.config/qemu/firmware", [(".hidden.json", "dot"), ("x", "dir")]),
        ]
    )
    assert chosen == [
        ("10-local.json", "/etc/qemu/firmware/10-local.json"),
        ("50-a.json", "/usr/share/qemu/firmware/50-a.json"),
        ("60-b.json", "/etc/qemu/firmware/60-b.json"),
    ]
    assert [(e.name, e.status) for e in lost] == [
        ("60-b.json", "overridden"),
        (".hidden.json", "skipped"),
        ("x", "skipped"),
    ]
    assert lost[0].path == "/usr/share/qemu/firmware/60-b.json"


TreeSpec = dict[str, Optional[Union[str, bytes]]]


def firmware_tree(make_tree: Callable[[TreeSpec], Path], extra: TreeSpec) -> Path:
    base: TreeSpec = {
        "/proc/cpuinfo": (CPUINFO / INTEL_CPUINFO).read_text(),
        "/etc/libvirt/qemu/": None,
        "/usr/share/qemu/": None,
    }
    base.update(extra)
    return make_tree(base)


def debian_x86(directory: str = "/usr/share/qemu/firmware") -> TreeSpec:
    files: TreeSpec = {f"{directory}/{n}": real(src) for n, src in DEBIAN_X86.items()}
    for name in DEBIAN_X86.values():
        for path in parse(name).files():
            files[path] = b""  # stands in for the firmware binary: only its existence matters
    return files


def test_an_empty_file_in_etc_masks_and_a_same_named_file_replaces(
    make_tree: Callable[..., Path], facts: Callable[..., Any]
) -> None:
    tree = firmware_tree(
        make_tree,
        {
            **debian_x86(),
            "/etc/qemu/firmware/40-edk2-x86_64-secure-enrolled.json": "",
            "/etc/qemu/firmware/60-edk2-x86_64.json": real(
                ARCH_X86["70-edk2-ovmf-x86_64-csm-4m.json"]
            ),
            "/etc/qemu/firmware/.60-edk2-x86_64.json.swp": "{",
        },
    )
    inv = facts(tree).get("firmware")
    assert [(d.name, d.path) for d in inv.descriptors] == [
        ("50-edk2-x86_64-secure.json", "/usr/share/qemu/firmware/50-edk2-x86_64-secure.json"),
        ("60-edk2-x86_64.json", "/etc/qemu/firmware/60-edk2-x86_64.json"),
    ]
    assert inv.descriptors[1].loader == "/usr/share/edk2/x64/OVMF_CODE.csm.4m.fd"
    fate = {(e.path, e.status) for e in inv.entries}
    assert ("/etc/qemu/firmware/40-edk2-x86_64-secure-enrolled.json", "masks") in fate
    assert ("/usr/share/qemu/firmware/40-edk2-x86_64-secure-enrolled.json", "overridden") in fate
    assert ("/usr/share/qemu/firmware/60-edk2-x86_64.json", "overridden") in fate
    assert ("/etc/qemu/firmware/.60-edk2-x86_64.json.swp", "skipped") in fate
    assert inv.problems == () and inv.complete
    assert inv.exists("/usr/share/edk2/x64/OVMF_CODE.csm.4m.fd") is False
    assert inv.exists("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd") is True


def test_a_dangling_symlink_or_an_unparsable_file_makes_libvirt_refuse_them_all(
    make_tree: Callable[..., Path], facts: Callable[..., Any]
) -> None:
    tree = firmware_tree(
        make_tree,
        {
            **debian_x86(),
            "/etc/qemu/firmware/55-broken.json": real(DEBIAN_X86["60-edk2-x86_64.json"])[:100],
            "/etc/qemu/firmware/": None,
        },
    )
    (tree / "etc/qemu/firmware/70-gone.json").symlink_to("/usr/share/qemu/firmware/no-such.json")
    inv = facts(tree).get("firmware")
    assert inv.problems == (
        "unable to parse json file '/etc/qemu/firmware/55-broken.json'",
        "Unable to access /etc/qemu/firmware/70-gone.json: No such file or directory",
    )
    assert [d.name for d in inv.descriptors] == sorted(DEBIAN_X86)


def test_the_users_directory_counts_only_for_a_session_daemon(edit_snapshot: Any) -> None:
    from doctor.facts import FactContext
    from doctor.sources.snapshot import SnapshotSource

    user_dir = "/home/alice/.config/qemu/firmware"
    name = "10-alice.json"
    snap = edit_snapshot()
    snap.set_value("identity", ALICE_IDENTITY)
    snap.set_value("environ", None, name="XDG_CONFIG_HOME")
    snap.set_value("environ", "/home/alice", name="HOME")
    snap.set_value("dir", [name], path=user_dir)
    snap.set_stat(f"{user_dir}/{name}", type="file", mode=0o644, uid=1500, gid=1500)
    snap.set_file(f"{user_dir}/{name}", real(ARCH_X86["50-edk2-ovmf-x86_64-secure-4m.json"]))
    for path in ("/usr/share/qemu/firmware", "/etc/qemu/firmware"):
        snap.missing("dir", path=path)
    inv = FactContext(SnapshotSource(str(snap.save()))).get("firmware")
    assert inv.scope == "session"
    assert [d.path for d in inv.directories] == [
        "/usr/share/qemu/firmware",
        "/etc/qemu/firmware",
        user_dir,
    ]
    assert [d.path for d in inv.descriptors] == [f"{user_dir}/{name}"]


def test_the_system_daemon_never_reads_a_home_directory(
    make_tree: Callable[..., Path], facts: Callable[..., Any]
) -> None:
    inv = facts(firmware_tree(make_tree, debian_x86())).get("firmware")
    assert inv.scope == "system"
    assert [d.scope for d in inv.directories] == ["distribution", "administrator"]


def test_a_snapshot_without_the_directories_is_incomplete_not_empty(edit_snapshot: Any) -> None:
    import shutil

    from doctor.facts import FactContext
    from doctor.sources.snapshot import SnapshotSource

    snap = edit_snapshot()
    for path in ("/usr/share/qemu/firmware", "/etc/qemu/firmware"):
        snap.drop("dir", path=path)
        shutil.rmtree(snap.path / f"files{path}", ignore_errors=True)  # no hand-added copies
    inv = FactContext(SnapshotSource(str(snap.save()))).get("firmware")
    assert not inv.complete
    assert {d.state for d in inv.directories} == {"unreadable"}


# --- qemu.conf nvram and the built-in list ----------------------------------------------------


def qemu_conf_nvram_example() -> list[str]:
    """The `nvram` example of Debian's qemu.conf, uncommented as an administrator would."""
    text = QEMU_CONF.read_text()
    block = re.search(r"^#nvram = \[\n((?:#.*\n)*?)#\]", text, re.MULTILINE)
    assert block is not None
    return re.findall(r'"([^"]+)"', block.group(1))


def test_qemu_conf_nvram_example_gives_four_loader_template_pairs() -> None:
    pairs = parse_nvram_pairs(qemu_conf_nvram_example())
    assert [(p.loader, p.template) for p in pairs] == list(BUILTIN_NVRAM)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["/usr/share/OVMF/OVMF_CODE.fd"], "Invalid nvram format: '/usr/share/OVMF/OVMF_CODE.fd'"),
        (["a:b:c"], "Invalid nvram format: 'a:b:c'"),
        (
            "/usr/share/OVMF/OVMF_CODE.fd:/usr/share/OVMF/OVMF_VARS.fd",
            "expected a string list for 'nvram' parameter",
        ),
    ],
)
def test_qemu_conf_nvram_that_libvirt_refuses(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_nvram_pairs(value)


def test_qemu_conf_nvram_is_ignored_once_any_descriptor_exists(
    make_tree: Callable[..., Path], facts: Callable[..., Any]
) -> None:
    conf = "nvram = [\n" + ",\n".join(f'  "{p}"' for p in qemu_conf_nvram_example()) + "\n]\n"
    with_descriptors = facts(
        firmware_tree(make_tree, {**debian_x86(), "/etc/libvirt/qemu.conf": conf})
    ).get("firmware")
    pairs, origin, certain = with_descriptors.legacy()
    assert pairs == () and "ignores" in origin and certain
    without = facts(firmware_tree(make_tree, {"/etc/libvirt/qemu.conf": conf})).get("firmware")
    pairs, origin, certain = without.legacy()
    assert (len(pairs), origin, certain) == (4, "qemu.conf nvram", True)
    assert without.files["/usr/share/AAVMF/AAVMF_VARS.fd"].exists is False


# --- distribution, packages and loose files ----------------------------------------------------


def test_os_release_ids_of_real_files() -> None:
    assert os_release_ids((OS_RELEASE / ARCH_OS).read_text()) == ("arch",)
    assert os_release_ids((OS_RELEASE / DEBIAN_OS).read_text()) == ("debian",)


def test_dpkgs_list_file_says_ovmf_is_installed(
    make_tree: Callable[..., Path], facts: Callable[..., Any]
) -> None:
    tree = firmware_tree(
        make_tree,
        {
            "/etc/os-release": (OS_RELEASE / DEBIAN_OS).read_text(),
            "/var/lib/dpkg/status": "",
            "/var/lib/dpkg/info/ovmf.list": (LAB / "var-lib-dpkg-info__ovmf.list").read_text(),
        },
    )
    pkg = facts(tree).get("firmware").package
    assert (pkg.family, pkg.name, pkg.installed) == ("debian", "ovmf", True)


def test_aarch64_tree_names_qemu_efi_aarch64_and_finds_aavmf_without_descriptors(
    make_tree: Callable[..., Path], facts: Callable[..., Any]
) -> None:
    tree = firmware_tree(
        make_tree,
        {
            "/proc/cpuinfo": (CPUINFO / ARM64_CPUINFO).read_text(),
            "/etc/os-release": (OS_RELEASE / DEBIAN_OS).read_text(),
            "/usr/share/AAVMF/AAVMF_CODE.fd": b"",
            "/usr/share/AAVMF/AAVMF_VARS.fd": b"",
        },
    )
    inv = facts(tree).get("firmware")
    assert (inv.host_arch, inv.arch_from) == ("aarch64", "/proc/cpuinfo")
    assert inv.package.name == "qemu-efi-aarch64" and inv.package.installed is None
    assert inv.loose_files == ("/usr/share/AAVMF/AAVMF_CODE.fd",)


# --- domain capabilities -----------------------------------------------------------------------


def test_domcapabilities_of_the_lab_list_the_descriptors_loaders() -> None:
    q35 = parse_domcaps_firmware((LAB / "virsh-domcapabilities--machine-q35.xml").read_text())
    assert (q35.arch, q35.machine, q35.supported) == ("x86_64", "pc-q35-7.2", True)
    assert q35.firmware == ("efi",) and q35.secure == ("yes", "no")
    assert q35.loaders == tuple(d.loader for d in descriptors(DEBIAN_X86))
    i440fx = parse_domcaps_firmware((LAB / "virsh-domcapabilities.xml").read_text())
    assert i440fx.machine == "pc-i440fx-7.2"
    assert i440fx.loaders == ("/usr/share/OVMF/OVMF_CODE_4M.fd",)
    assert i440fx.secure == ("no",)


# --- choosing firmware and templates, on definitions libvirt wrote ------------------------------


@pytest.mark.parametrize(
    ("domain", "chosen", "conflict"),
    [
        ("kd-fw-efi-sb-q35", "40-edk2-x86_64-secure-enrolled.json", None),
        (
            "kd-fw-efi-sb-smm-off",
            "40-edk2-x86_64-secure-enrolled.json",
            "domain has SMM turned off but chosen firmware requires it",
        ),
        ("kd-fw-efi-sb-i440fx", None, None),
        ("kd-fw-ovmf4m", "60-edk2-x86_64.json", None),
        ("kd-fw-secure-smm", "50-edk2-x86_64-secure.json", None),
        ("kd-fw-secboot-i440fx", None, None),
        ("kd-fw-custom", None, None),
    ],
)
def test_firmware_selection_matches_what_libvirt_9_0_did_on_the_lab(
    domain: str, chosen: Optional[str], conflict: Optional[str]
) -> None:
    selection = select_firmware(descriptors(DEBIAN_X86), lab_domain(domain))
    assert (selection.wanted, selection.chosen, selection.conflict) == ("uefi", chosen, conflict)


def test_selection_says_why_each_descriptor_was_rejected() -> None:
    selection = select_firmware(descriptors(DEBIAN_X86), lab_domain("kd-fw-efi-sb-i440fx"))
    assert dict(selection.rejected) == {
        "40-edk2-x86_64-secure-enrolled.json": "targets x86_64 ['pc-q35-*'] do not cover "
        "x86_64 pc-i440fx-7.2",
        "50-edk2-x86_64-secure.json": "targets x86_64 ['pc-q35-*'] do not cover x86_64 "
        "pc-i440fx-7.2",
        "60-edk2-x86_64.json": "the domain requests Secure Boot; this firmware has none",
    }


def test_a_bios_domain_selects_nothing() -> None:
    dom = parse_domain(
        (
            REALDATA
            / "domains/insights__etc-libvirt-qemu__i440fx_rhel7.4_virt-manager-persistent.xml"
        ).read_text(),
        active=False,
        persistent=True,
        origin="test",
    )
    assert select_firmware(descriptors(DEBIAN_X86), dom).wanted is None


def test_template_for_a_custom_loader_is_searched_everywhere_and_not_found() -> None:
    inv = inventory(DEBIAN_X86, nvram_configured=False, builtin_known=True)
    dom = lab_domain("kd-fw-custom")
    lookup = find_template(inv, dom, select_firmware(inv.descriptors, dom), never_exists)
    assert lookup.template is None
    assert lookup.searched == (
        "no firmware descriptor maps /var/lib/libvirt/images/kd-fw-custom_CODE.fd "
        "(3 descriptors read)",
        "libvirt's built-in list (compiled into this distribution's build): no entry for "
        "/var/lib/libvirt/images/kd-fw-custom_CODE.fd",
    )


def test_template_for_the_2m_ovmf_comes_from_the_built_in_list_certain_only_on_debian() -> None:
    dom = lab_domain("kd-fw-ovmf2m")
    for known in (True, False):
        inv = inventory(DEBIAN_X86, nvram_configured=False, builtin_known=known)
        lookup = find_template(inv, dom, select_firmware(inv.descriptors, dom), never_exists)
        assert lookup.template is not None
        assert lookup.template.path == "/usr/share/OVMF/OVMF_VARS.fd"
        assert lookup.certain is known


def test_template_for_a_secure_boot_build_on_i440fx_is_not_found() -> None:
    """libvirt 9.0 on the lab: "unable to find any master var store for loader:
    /usr/share/OVMF/OVMF_CODE_4M.secboot.fd" (its descriptors cover pc-q35-* only)."""
    inv = inventory(DEBIAN_X86, nvram_configured=False, builtin_known=True)
    dom = lab_domain("kd-fw-secboot-i440fx")
    lookup = find_template(inv, dom, select_firmware(inv.descriptors, dom), never_exists)
    assert lookup.template is None
    assert lookup.searched[0] == (
        "/usr/share/qemu/firmware/50-edk2-x86_64-secure.json: targets x86_64 ['pc-q35-*'] do "
        "not cover x86_64 pc-i440fx-7.2"
    )


def test_template_for_firmware_efi_comes_from_the_chosen_descriptor() -> None:
    inv = inventory(DEBIAN_X86, nvram_configured=False, builtin_known=True)
    dom = lab_domain("kd-fw-efi-sb-q35")
    lookup = find_template(inv, dom, select_firmware(inv.descriptors, dom), never_exists)
    assert lookup.template is not None
    assert lookup.template.path == "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
    assert lookup.found_by == (
        "firmware descriptor /usr/share/qemu/firmware/40-edk2-x86_64-secure-enrolled.json"
    )


# --- the domain_firmware fact on a tree ------------------------------------------------------


def test_domain_firmware_from_definition_files_in_a_tree(
    make_tree: Callable[..., Path], facts: Callable[..., Any]
) -> None:
    files = debian_x86()
    for name in ("kd-fw-ovmf4m", "kd-fw-efi-sb-q35", "kd-fw-custom"):
        files[f"/etc/libvirt/qemu/{name}.xml"] = (LAB / f"etc-libvirt-qemu__{name}.xml").read_text()
    files["/var/lib/libvirt/qemu/nvram/"] = None
    files["/var/lib/libvirt/qemu/nvram/kd-fw-ovmf4m_VARS.fd"] = b""
    by_name = {
        d.name: d for d in facts(firmware_tree(make_tree, files)).get("domain_firmware").items
    }
    ovmf = by_name["kd-fw-ovmf4m"]
    assert (ovmf.loader.exists, ovmf.nvram.exists, ovmf.nvram_from) == (True, True, "domain XML")
    efi = by_name["kd-fw-efi-sb-q35"]
    assert efi.loader.path == "/usr/share/OVMF/OVMF_CODE_4M.ms.fd"
    assert efi.loader_from.startswith("firmware='efi' selects")
    assert efi.nvram.path == "/var/lib/libvirt/qemu/nvram/kd-fw-efi-sb-q35_VARS.fd"
    assert (efi.nvram.exists, efi.nvram_from, efi.nvram_dir.exists) == (
        False,
        "libvirt's default",
        True,
    )
    custom = by_name["kd-fw-custom"]
    assert custom.loader.exists is False and custom.template.template is None
