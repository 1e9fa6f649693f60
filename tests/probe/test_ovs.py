"""Open vSwitch on the probe's path, on snapshots derived from real captures (this lab's kernel
has no OVS): tests/fixtures/snapshots/ovs-libvirt-vlan193 (a libvirt guest's vnet0 with tag
193 on ovsbr0, uplink enp4s0) and ovs-openstack-patch-tunnels (br-int, whose ways out are
patch ports to br-ex and br-tun's vxlan tunnels); tests/fixtures/ovs/README.md says how they
were derived. Faults are edits of copies of those snapshots' OVSDB tables."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from doctor.facts import FactContext, FactUnavailable
from doctor.facts.ovs import OvsPort, parse
from doctor.probe.path import Path as ProbePath
from doctor.probe.path import RouteAnswer, from_domain
from doctor.probe.predict import predict
from doctor.probe.verdict import predicted
from doctor.sources.snapshot import SnapshotSource

from kdtest import ROOT, kvmdoctor

FIXTURES = ROOT / "tests" / "fixtures"
VLAN193 = FIXTURES / "snapshots" / "ovs-libvirt-vlan193"
OPENSTACK = FIXTURES / "snapshots" / "ovs-openstack-patch-tunnels"


def _no_route(*args: Any, **kw: Any) -> Any:
    raise AssertionError("an Open vSwitch path is not routed by the host")


def path_of(snapshot: Path, domain: str = "kdovs193", to: str = "192.0.2.10") -> ProbePath:
    return from_domain(FactContext(SnapshotSource(str(snapshot))), domain, to, route_get=_no_route)


def _table(snapshot: Path, table: str) -> Path:
    manifest = json.loads((snapshot / "manifest.json").read_text())
    [entry] = [e for e in manifest["answers"] if e["kind"] == "command" and e["argv"][-1] == table]
    return snapshot / entry["stdout"]


def tables(snapshot: Path) -> tuple[str, str, str]:
    return tuple(_table(snapshot, t).read_text() for t in ("Bridge", "Port", "Interface"))  # type: ignore[return-value]


def edit(snapshot: Path, table: str, name: str, **columns: Any) -> None:
    """Set columns (OVSDB JSON values) of the row `name` in a snapshot's table."""
    file = _table(snapshot, table)
    doc = json.loads(file.read_text())
    heads = doc["headings"]
    [row] = [r for r in doc["data"] if r[heads.index("name")] == name]
    for column, value in columns.items():
        row[heads.index(column)] = value
    file.write_text(json.dumps(doc))


@pytest.fixture
def vlan193(tmp_path: Path) -> Iterator[Path]:
    copy = tmp_path / "snap"
    shutil.copytree(VLAN193, copy)
    yield copy


def faults(path: ProbePath) -> list[tuple[str, str, str, str]]:
    return [(p.status, p.hop, p.direction, p.cause) for p in predict(path)]


# --- the fact: OVSDB JSON ------------------------------------------------------------------


def test_the_ovsdb_tables_hold_what_the_real_ovs_vsctl_show_captures_show() -> None:
    found = parse(*tables(VLAN193))
    [bridge] = found.bridges
    assert bridge.name == "ovsbr0"
    ports = {p.name: p for p in bridge.ports}
    assert sorted(ports) == ["enp4s0", "ovsbr0", "vnet0"]
    assert (ports["vnet0"].tag, ports["vnet0"].mode) == (193, "access")
    assert (ports["enp4s0"].tag, ports["enp4s0"].mode, ports["enp4s0"].trunks) == (
        None,
        "trunk",
        (),
    )
    assert ports["ovsbr0"].interfaces[0].type == "internal"
    assert ports["vnet0"].interfaces[0].external_ids["attached-mac"] == "52:54:00:6b:64:93"

    found = parse(*tables(OPENSTACK))
    assert [b.name for b in found.bridges] == ["br-ex", "br-int", "br-tun"]
    assert found.bridge("br-int").fail_mode == "secure"  # type: ignore[union-attr]
    assert found.bridge("br-ex").fail_mode is None  # type: ignore[union-attr]
    tags = {p.name: p.tag for p in found.bridge("br-int").ports}  # type: ignore[union-attr]
    assert tags == {
        "br-int": None,
        "ha-1f423581-cd": 3,
        "int-br-ex": None,
        "patch-tun": None,
        "qr-417e232b-dd": 1,
        "tapdf2d6113-b2": 2,
        "tapfcce898c-ca": 1,
    }
    _, _, patch = found.find("patch-tun")  # type: ignore[misc]
    assert (patch.type, patch.patch_peer) == ("patch", "patch-int")
    remotes = sorted(i.options["remote_ip"] for _, _, i in found.interfaces() if i.tunnel)
    assert remotes == ["172.168.1.22", "172.168.1.23", "172.168.1.24", "172.168.1.25"]
    _, _, vxlan = found.find("vxlan-aca80118")  # type: ignore[misc]
    assert vxlan.options == {
        "df_default": "true",
        "in_key": "flow",
        "local_ip": "172.168.1.26",
        "out_key": "flow",
        "remote_ip": "172.168.1.24",
    }


@pytest.mark.parametrize(
    ("mode", "tag", "trunks", "vlan", "carried"),
    [
        ("access", 193, (), 193, True),
        ("access", 100, (), 193, False),
        ("trunk", None, (), 193, True),  # no trunks: every VLAN
        ("trunk", None, (10, 20), 193, False),
        ("trunk", None, (10, 193), 193, True),
        ("native-untagged", 193, (10,), 193, True),
        ("native-tagged", 5, (10,), 193, False),
    ],
)
def test_which_vlans_a_port_carries_follows_ovs_vlan_modes(
    mode: str, tag: Any, trunks: tuple[int, ...], vlan: int, carried: bool
) -> None:
    port = OvsPort("p", (), tag=tag, trunks=trunks, vlan_mode=mode)
    assert port.carries(vlan) is carried


def test_the_fact_is_unavailable_with_the_reason_on_a_host_without_ovs(tmp_path: Path) -> None:
    from kdsnap import EditableSnapshot

    snap = EditableSnapshot(VLAN193, tmp_path / "snap")
    for table in ("Bridge", "Port", "Interface"):
        argv = next(
            e["argv"]
            for e in snap.manifest["answers"]
            if e["kind"] == "command" and e["argv"][-1] == table
        )
        snap.set_error(
            "command", {"type": "not-found", "message": "ovs-vsctl is not installed"}, argv=argv
        )
    snap.save()
    facts = FactContext(SnapshotSource(str(snap.path)))
    with pytest.raises(FactUnavailable, match="ovs-vsctl is not installed"):
        facts.get("ovs")
    path = from_domain(facts, "kdovs193", "192.0.2.10", route_get=_no_route)
    assert [h.role for h in path.hops] == ["tap"]
    assert any("Open vSwitch port, and OVSDB could not be read" in p for p in path.problems)


# --- the path and its predictions -----------------------------------------------------------


def test_a_libvirt_guest_on_ovs_has_the_ovs_bridge_hop_with_its_port_tag_and_uplink() -> None:
    path = path_of(VLAN193)
    assert [(h.role, h.name) for h in path.hops] == [
        ("tap", "vnet0"),
        ("ovs-bridge", "ovsbr0"),
        ("uplink", "enp4s0"),
    ]
    tap, bridge, uplink = path.hops
    assert tap.ovs is not None and bridge.ovs is not None and uplink.ovs is not None
    assert (tap.ovs["bridge"], tap.ovs["port"], tap.ovs["tag"]) == ("ovsbr0", "vnet0", 193)
    assert bridge.ovs["guest_port"]["tag"] == 193
    assert [u["port"] for u in bridge.ovs["uplinks"]] == ["enp4s0"]
    assert (uplink.ovs["vlan_mode"], uplink.ovs["trunks"]) == ("trunk", [])
    assert uplink.ovs["interfaces"][0]["ofport"] >= 1
    # Healthy: the uplink trunks every VLAN; OVS's internal device reporting operstate DOWN
    # (as the real capture's br-ex does) is not a fault.
    assert faults(path) == []
    [finding] = predicted(path, predict(path))[:1]
    assert finding.status == "pass"
    assert "vnet0 -> ovsbr0 -> enp4s0" in finding.message


def test_the_libvirt_xml_names_the_openvswitch_virtualport() -> None:
    facts = FactContext(SnapshotSource(str(VLAN193)))
    [dom] = facts.get("domains").items
    [nic] = dom.interfaces
    assert (nic.type, nic.virtualport, nic.target) == ("bridge", "openvswitch", "vnet0")


def test_a_tap_that_left_ovs_though_its_xml_asks_for_it_is_told(vlan193: Path) -> None:
    file = vlan193 / "netlink" / "host" / "links.json"
    rows = json.loads(file.read_text())
    [tap] = [r for r in rows if r["attrs"]["IFLA_IFNAME"] == "vnet0"]
    del tap["attrs"]["IFLA_MASTER"]
    del tap["attrs"]["IFLA_LINKINFO"]["attrs"]["IFLA_INFO_SLAVE_KIND"]
    file.write_text(json.dumps(rows))
    facts = FactContext(SnapshotSource(str(vlan193)))

    def unreachable(dst: str, **kw: Any) -> RouteAnswer:  # no longer OVS: routed by the host
        return RouteAnswer(dst, type="unreachable")

    path = from_domain(facts, "kdovs193", "192.0.2.10", route_get=unreachable)
    assert [h.role for h in path.hops] == ["tap"]
    assert any(
        "asks for Open vSwitch" in p and "vnet0 is not an OVS port (master: none)" in p
        for p in path.problems
    )


@pytest.mark.parametrize(
    ("columns", "shown"),
    [
        ({"tag": 100}, "access port of VLAN 100"),
        ({"trunks": ["set", [10, 20]]}, "trunk port (10, 20)"),
        ({"tag": 5, "trunks": ["set", [10]], "vlan_mode": "native-untagged"}, "native VLAN 5"),
    ],
    ids=["access-100", "trunks-10-20", "native-5"],
)
def test_the_guests_vlan_not_carried_by_the_uplink_is_predicted_at_the_uplink(
    vlan193: Path, columns: dict[str, Any], shown: str
) -> None:
    edit(vlan193, "Port", "enp4s0", **columns)
    [item] = predict(path_of(vlan193))
    assert (item.status, item.hop, item.cause) == ("fail", "enp4s0", "ovs-vlan-not-carried")
    assert "access port of VLAN 193" in item.message and shown in item.message


def test_an_uplink_trunk_that_lists_the_guests_vlan_predicts_nothing(vlan193: Path) -> None:
    edit(vlan193, "Port", "enp4s0", trunks=["set", [10, 193]])
    assert faults(path_of(vlan193)) == []


def test_an_interface_ovs_could_not_set_up_is_predicted_at_its_hop(vlan193: Path) -> None:
    error = "could not open network device enp4s0 (No such device)"
    edit(vlan193, "Interface", "enp4s0", error=error, ofport=-1, link_state=["set", []])
    [item] = predict(path_of(vlan193))
    assert (item.hop, item.cause, item.direction) == ("enp4s0", "ovs-interface-error", "both")
    assert error in item.message


def test_the_guests_port_down_in_ovsdb_is_predicted_for_the_reply(vlan193: Path) -> None:
    edit(vlan193, "Interface", "vnet0", link_state="down")
    assert faults(path_of(vlan193)) == [("fail", "vnet0", "reply", "link-down")]


def test_a_bridge_without_any_way_out_is_a_warning(vlan193: Path) -> None:
    file = _table(vlan193, "Bridge")
    doc = json.loads(file.read_text())
    ports = json.loads(_table(vlan193, "Port").read_text())
    keep = [r[0] for r in ports["data"] if r[1] != "enp4s0"]  # every port but the uplink
    doc["data"][0][doc["headings"].index("ports")] = ["set", keep]
    file.write_text(json.dumps(doc))
    path = path_of(vlan193)
    assert [h.role for h in path.hops] == ["tap", "ovs-bridge"]
    assert faults(path) == [("warn", "ovsbr0", "request", "ovs-no-uplink")]


def test_a_bridge_left_through_patch_ports_and_tunnels_is_told_not_predicted_as_a_drop() -> None:
    path = path_of(OPENSTACK, "kdovstun", "198.51.100.20")
    roles = [(h.role, h.name) for h in path.hops]
    assert roles[:3] == [
        ("veth-peer", "tapdf2d6113-b2"),
        ("ovs-bridge", "br-int"),
        ("uplink", "eth0"),
    ]
    assert sorted(n for r, n in roles if r == "tunnel") == [
        "vxlan-aca80116",
        "vxlan-aca80117",
        "vxlan-aca80118",
        "vxlan-aca80119",
    ]
    eth0 = path.hops[2]
    assert eth0.ovs is not None and eth0.ovs["bridge"] == "br-ex"
    [item] = predict(path)
    assert (item.status, item.hop, item.cause) == ("info", "br-int", "ovs-tunnel-exit")
    assert "leaves through patch port int-br-ex to phy-br-ex" in item.message
    assert "vxlan tunnel vxlan-aca80118 to 172.168.1.24" in item.message
    assert "physical uplinks beyond the patch ports: eth0" in item.message
    found = predicted(path, [item])
    assert [f.status for f in found][:2] == ["info", "pass"]


# --- the command: the static part runs, sending is refused -------------------------------------


def test_probe_refuses_to_send_across_ovs_runs_the_static_part_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, vlan193: Path
) -> None:
    import doctor.probe.kernel
    import doctor.sources

    edit(vlan193, "Port", "enp4s0", tag=100)
    monkeypatch.setattr(doctor.sources, "open_source", lambda **kw: SnapshotSource(str(vlan193)))
    monkeypatch.setattr(doctor.probe.kernel, "route_get", _no_route)
    result = kvmdoctor("probe", "--domain", "kdovs193", "--to", "192.0.2.10")
    out = result.stdout + result.stderr
    assert result.exit_code == 2, out
    assert "does not send probes across Open vSwitch" in out
    assert "Open vSwitch bridge ovsbr0: guest port vnet0 (tag 193), uplinks enp4s0 (tag 100)" in out
    assert "FAIL  PRB001 iface:enp4s0" in out and "does not carry VLAN 193" in out


# --- the fixtures ------------------------------------------------------------------------------


def test_the_ovs_snapshots_are_what_derive_py_makes_of_the_captures(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("kd_ovs_derive", FIXTURES / "ovs" / "derive.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    make: dict[str, Callable[[Path], None]] = module.SCENARIOS
    for name, build in make.items():
        fresh = tmp_path / name
        build(fresh)
        stored = FIXTURES / "snapshots" / name
        files = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(stored) for p in stored.rglob("*") if p.is_file())
        for rel in files:
            assert (fresh / rel).read_text() == (stored / rel).read_text(), f"{name}/{rel} is stale"
