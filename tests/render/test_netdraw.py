"""The HTML report's drawings of the network (doctor/render/netdraw.py) on reports of real runs:
a shared MAC marks both guests and their taps, a bonded bridge from real `ip -d link` and
/proc/net/bonding captures is drawn column by column (in headless Chromium), and a probe report
carries the host's network its path discovery read and draws it with the probe's hops."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_formats import Page, chromium_dom, classes_of

from doctor.render import render_as

import kdnet
from kdnet import derived_rows, lab_capture, lab_rows, row
from kdsnap import realdata
from kdtest import ROOT, kvmdoctor, require

BOND_AB = "insights__ip-d-s-link__bond-active-backup-with-slaves"
GUEST_LIVE = lab_capture("guest/run-libvirt-qemu__kd-cap-guest.xml")


def nodes(text: str, svg_id: str) -> dict[str, dict[str, str]]:
    """The nodes of one drawing by the name they show: their classes, the finding they link
    to ("" for none) and their x position."""
    svg = text[text.index(f'id="{svg_id}"') :]
    svg = svg[: svg.index("</svg>")]
    found = {}
    for match in re.finditer(
        r'(?:<a href="#([^"]*)">)?<g class="([^"]*)" id="[^"]*"><title>[^<]*</title>'
        r'<rect x="([0-9.]+)"[^>]*/><text [^>]*>([^<]*)</text>',
        svg,
    ):
        link, classes, x, name = match.groups()
        found[name] = {"classes": classes, "link": link or "", "x": x}
    return found


# --- NET010: a MAC two guests share ----------------------------------------------------------


def test_a_shared_mac_marks_both_guests_and_their_taps_and_links_them_to_the_finding() -> None:
    """sample_reports/duplicate-mac: kdweb1 and kdweb2 both run with 52:54:00:00:02:01 on
    kdbr0 (a real run on the lab's recording)."""
    data = json.loads((ROOT / "sample_reports" / "duplicate-mac.json").read_text())
    (net010,) = [c for c in data["checks"] if c["code"] == "NET010"]
    (shared,) = [f for f in net010["findings"] if f["subject"].startswith("mac:")]
    assert shared["status"] == "fail"
    guests = data["host"]["network"]["guests"]
    taps = {nic["target"] for g in guests for nic in g["nics"]}
    assert len(guests) == 2 and len(taps) == 2

    text = render_as("html", data)
    drawn = nodes(text, "network-drawing")
    page = Page(text)
    ids = {a["id"]: a for _, a in page.tags if "id" in a}
    for name in [g["name"] for g in guests] + sorted(taps):
        assert "st-fail" in drawn[name]["classes"].split(), (name, drawn[name])
        target = drawn[name]["link"]
        assert target in ids  # the node links to a finding on the page...
        anchor = text[text.index(f'id="{target}"') :]
        assert anchor[: anchor.index("</p>")].count(shared["subject"]) == 1  # ...the MAC's
    # The bridge and the others carry no problem of their own.
    assert "st-fail" not in drawn["kdbr0"]["classes"]


def test_a_guest_whose_mac_is_not_shared_is_not_marked() -> None:
    data = json.loads((ROOT / "sample_reports" / "duplicate-mac.json").read_text())
    for check in data["checks"]:
        if check["code"] == "NET010":
            for finding in check["findings"]:
                finding["status"] = "pass"
    drawn = nodes(render_as("html", data), "network-drawing")
    assert not any("st-fail" in n["classes"] for n in drawn.values())


# --- bonds and VLANs from real captures ------------------------------------------------------


def vlan_row(lower: dict[str, Any], vlan_id: int, index: int) -> dict[str, Any]:
    """An 802.1Q VLAN on `lower` as netlink gives it. No real `ip -d link` capture of a VLAN
    link exists in tests/fixtures/realdata (and this kernel cannot make one): the row is the
    real bond row with what makes a VLAN of it (kind, IFLA_LINK, the VLAN id); the bond, its
    slaves and /proc/net/bonding are real captures."""
    made = copy.deepcopy(lower)
    made["index"] = index
    attrs = made["attrs"]
    attrs["IFLA_IFNAME"] = f"{attrs['IFLA_IFNAME']}.{vlan_id}"
    attrs["IFLA_LINK"] = lower["index"]
    attrs["IFLA_LINKINFO"] = {
        "attrs": {"IFLA_INFO_KIND": "vlan", "IFLA_INFO_DATA": {"attrs": {"IFLA_VLAN_ID": vlan_id}}}
    }
    attrs.pop("IFLA_MASTER", None)
    return made


def bonded_bridge_with_vlan(edit_snapshot: Any) -> Path:
    """The real active-backup bond0 (slaves enp1s0, enp2s0) carrying VLAN 100, bond0.100 a
    port of bridge br0 (the lab's kdbr0 row renamed), a running guest on br0; the snapshot's
    /proc/net/bonding/bond0 the real active-backup capture."""
    rows = derived_rows(BOND_AB)
    bridge = copy.deepcopy(row(lab_rows("bridges/links.json"), "kdbr0"))
    bridge["index"] = 9
    bridge["attrs"]["IFLA_IFNAME"] = "br0"
    vlan = vlan_row(row(rows, "bond0"), 100, 10)
    vlan["attrs"]["IFLA_MASTER"] = 9
    port = copy.deepcopy(row(lab_rows("bridges/links.json"), "kdve0"))
    vlan["attrs"]["IFLA_LINKINFO"]["attrs"].update(
        {
            k: v
            for k, v in port["attrs"]["IFLA_LINKINFO"]["attrs"].items()
            if k.startswith("IFLA_INFO_SLAVE")
        }
    )
    snap = edit_snapshot()
    kdnet.set_netlink(snap, "links", [*rows, bridge, vlan])
    kdnet.set_netlink(snap, "addresses", [])
    nic = "<interface type='bridge'><source bridge='br0'/><model type='virtio'/></interface>"
    start, end = GUEST_LIVE.index("<interface"), GUEST_LIVE.index("</interface>") + 12
    kdnet.set_domains(
        snap, [kdnet.domain_entry(GUEST_LIVE[:start] + nic + GUEST_LIVE[end:], active=False)]
    )
    snap.set_file("/proc/net/bonding/bond0", realdata("bonding/insights__active-backup__bond0.txt"))
    saved: Path = snap.save()
    return saved


@pytest.mark.integration
def test_a_vlan_on_a_real_bond_under_a_bridge_is_drawn_column_by_column_in_chromium(
    edit_snapshot: Any, tmp_path: Path
) -> None:
    snapshot = bonded_bridge_with_vlan(edit_snapshot)
    page_file = tmp_path / "bond.html"
    result = kvmdoctor("run", "--snapshot", str(snapshot), "-f", "html", "-o", str(page_file))
    assert result.exit_code in (0, 1), result.stderr
    text = page_file.read_text()
    drawn = nodes(text, "network-drawing")
    # Left to right: the guest, the bridge, the VLAN, the bond, the bond's slaves.
    x = {name: float(drawn[name]["x"]) for name in ("kd-cap-guest", "br0", "bond0.100", "bond0")}
    assert x["kd-cap-guest"] < x["br0"] < x["bond0.100"] < x["bond0"]
    for slave in ("enp1s0", "enp2s0"):
        assert float(drawn[slave]["x"]) > x["bond0"]
        assert "link" in drawn[slave]["classes"].split()
    assert "bond" in drawn["bond0"]["classes"].split()
    assert "bond" in drawn["bond0.100"]["classes"].split()
    assert "bridge" in drawn["br0"]["classes"].split()
    svg = text[text.index('id="network-drawing"') :]
    svg = svg[: svg.index("</svg>")]
    heads = re.findall(r'<text class="head"[^>]*>([^<]*)</text>', svg)
    assert heads == ["guests", "bridges", "VLANs", "bonds", "uplinks"]
    # One line each: guest -> br0 (defined: dashed), bond0.100 -> br0, bond0.100 -> bond0,
    # two slaves -> bond0.
    assert svg.count("<path ") == 5
    assert svg.count('stroke-dasharray="4 3"') == 1

    dom, console = chromium_dom(page_file, tmp_path)
    assert console == [], console
    parsed = Page(dom)
    kinds = {word for c in classes_of(parsed, "network-drawing") for word in c.split()}
    assert {"guest", "bridge", "bond", "link"} <= kinds
    ids = {a["id"] for _, a in parsed.tags if "id" in a}
    inner = {a["href"][1:] for _, a in parsed.tags if a.get("href", "").startswith("#")}
    assert inner <= ids, inner - ids


def test_a_vlan_on_a_nic_stays_in_the_one_middle_column() -> None:
    """Without a VLAN on a bond the columns stay as they were: a VLAN on an uplink sits in
    "bonds and VLANs" left of its NIC."""
    data = json.loads((ROOT / "sample_reports" / "lab-host.json").read_text())
    links = data["host"]["network"]["links"]
    nic = next(link for link in links if link["kind"] is None and link["name"] != "lo")
    links.append({**nic, "name": f"{nic['name']}.7", "kind": "vlan", "lower": nic["name"]})
    text = render_as("html", data)
    svg = text[text.index('id="network-drawing"') :]
    heads = re.findall(r'<text class="head"[^>]*>([^<]*)</text>', svg[: svg.index("</svg>")])
    assert "bonds and VLANs" in heads and "VLANs" not in heads
    drawn = nodes(text, "network-drawing")
    assert float(drawn[f"{nic['name']}.7"]["x"]) < float(drawn[nic["name"]]["x"])


# --- a probe report draws the host it probed -------------------------------------------------


@pytest.mark.integration
def test_a_probe_report_carries_the_hosts_network_and_draws_its_hops_on_it() -> None:
    require(os.geteuid() == 0, "root (namespaces)")
    sys.path.insert(0, str(ROOT / "tests" / "probe"))
    from probelab import BRIDGE, GATEWAY_NIC, PEER, UPLINK, ProbeLab

    with ProbeLab(tag="d") as lab:
        done = subprocess.run(
            ["ip", "netns", "exec", lab.host.name, sys.executable, "-m", "doctor", "probe",
             *lab.probe_args("--static", "--format", "json")],
            capture_output=True, text=True, cwd=ROOT, timeout=90, check=False,
        )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    network = report["host"]["network"]
    assert network["origin"] == "netlink"
    names = {link["name"] for link in network["links"]}
    assert {BRIDGE, PEER, UPLINK} <= names  # the host namespace's links, as the probe read them
    assert GATEWAY_NIC not in names  # the far end is in another namespace
    assert {link["name"]: link["master"] for link in network["links"]}[PEER] == BRIDGE

    text = render_as("html", report)
    assert 'id="probe-drawing"' in text and 'id="network-drawing"' in text
    drawn = nodes(text, "network-drawing")
    hops = next(
        f["evidence"]["hops"] for c in report["checks"] if c["code"] == "PRB001"
        for f in c["findings"] if isinstance(f.get("evidence"), dict) and f["evidence"].get("hops")
    )  # fmt: skip
    on_path = {name for name, n in drawn.items() if "path" in n["classes"].split()}
    assert on_path == {BRIDGE, PEER, UPLINK} and on_path <= set(hops)
