"""`--redact`: a host with TLS keys, graphics passwords, addresses, MACs and users everywhere.

Its report in every format, `report convert --redact` of its plain report, and a snapshot
`collect --redact` made of it (file contents, manifest and archive member names) hold none of
its identifying or secret values -- searched byte for byte, base64- and URL-encoded; two runs
give the same tokens; the redacted report, and the replay of the redacted snapshot, give the
same diagnoses as the plain run. Then the token mapping itself (doctor/redaction.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import stat
import tarfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from doctor.facts.tls import DEFAULT_CA, DEFAULT_SERVER_CERT, DEFAULT_SERVER_KEY
from doctor.redaction import Redactor
from doctor.render import FORMATS

from kdlab import Pki
from kdtest import kvmdoctor, write_tree

NOW = dt.datetime(2026, 11, 26, 7, 0, tzinfo=dt.timezone.utc)
AT = ("--at", "2026-11-26T08:00:00Z")

HOST, FQDN = "orion", "orion.corp.example.net"
HOST_IP, NET_GW, GUEST_IP, PUBLIC_IP = "10.20.30.40", "172.20.5.1", "172.20.5.77", "81.2.69.142"
SHARED_MAC, OTHER_MAC = "52:54:00:6b:3c:58", "52:54:00:19:a2:7e"
USER = "quentinr"  # a name no check's documentation uses (SARIF carries it)
GUESTS = ("web1", "dbserver2")
WILDCARD = "*.corp.example.net"  # the certificate's: a wildcard name hides its domain too
IDENTIFYING = [HOST, FQDN, "corp.example.net", HOST_IP, NET_GW, GUEST_IP, PUBLIC_IP]
IDENTIFYING += [SHARED_MAC, OTHER_MAC, SHARED_MAC.upper(), USER, *GUESTS]
SECRETS = [f"kdsecret{letter}" for letter in "ABCDEFG"]


def domain_xml(name: str, mac: str, uuid: str, password: str) -> str:
    return f"""<domain type='kvm'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='KiB'>131072</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='network'>
      <mac address='{mac}'/>
      <source network='lan'/>
      <model type='virtio'/>
    </interface>
    <graphics type='vnc' port='-1' autoport='yes' listen='{HOST_IP}' passwd='{password}'>
      <listen type='address' address='{HOST_IP}'/>
    </graphics>
  </devices>
</domain>
"""


NETWORK_XML = f"""<network>
  <name>lan</name>
  <uuid>0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0</uuid>
  <bridge name='virbr7' stp='on' delay='0'/>
  <mac address='{OTHER_MAC}'/>
  <ip address='{NET_GW}' netmask='255.255.255.0'>
    <dhcp>
      <range start='172.20.5.2' end='172.20.5.254'/>
      <host mac='{SHARED_MAC}' name='{GUESTS[0]}' ip='{GUEST_IP}'/>
    </dhcp>
  </ip>
</network>
"""


def lab_host(root: Path) -> Path:
    """A host tree: names, addresses, a person's account, two guests sharing a MAC with VNC
    passwords, TLS with a CA, a server certificate naming the host and its key, logs and a
    QEMU command line with all of it."""
    pki = Pki(NOW)
    ca = pki.ca("Orion Lab CA")
    server = pki.issue(ca, FQDN, dns=(FQDN, HOST, WILDCARD), ips=(HOST_IP,))
    qemu_log = (
        "2026-11-26 07:00:00.000+0000: starting up libvirt version: 9.0.0\n"
        f"LC_ALL=C HOME=/home/{USER} /usr/bin/qemu-system-x86_64 -name guest={GUESTS[0]} "
        f"-netdev tap,id=hostnet0 -device virtio-net-pci,netdev=hostnet0,mac={SHARED_MAC} "
        f'-vnc {HOST_IP}:0,password="kdsecretA" -spice port=5901,password=kdsecretB\n'
        f"2026-11-26T07:00:00.100000Z qemu-system-x86_64: failed to reach {PUBLIC_IP} from "
        f"{HOST}: Could not open '/var/lib/libvirt/images/{GUESTS[0]}.qcow2': "
        "Permission denied\n"
    )
    libvirtd_log = (
        "2026-11-26 07:00:01.000+0000: 1234: error : virPortAllocatorSetUsed:274 : internal "
        f"error: Failed to reserve port 5900 for <graphics passwd='kdsecretC'/> on {FQDN} "
        f"for {USER}@{HOST}\n"
    )
    cmdline = [
        "/usr/bin/qemu-system-x86_64",
        "-name",
        f"guest={GUESTS[0]},debug-threads=on",
        "-vnc",
        f'{HOST_IP}:0,password="kdsecretD"',
        "--password",
        "kdsecretE",
        "-device",
        f"virtio-net-pci,mac={SHARED_MAC}",
    ]
    status = "Name:\tqemu-system-x86\nPPid:\t1\nUid:\t64055\t64055\t64055\t64055\n"
    status += "Gid:\t64055\t64055\t64055\t64055\n"
    tree = write_tree(
        root,
        {
            "/etc/hostname": f"{HOST}\n",
            "/etc/hosts": f"127.0.0.1\tlocalhost\n{HOST_IP}\t{FQDN} {HOST}\n",
            "/etc/passwd": "root:x:0:0:root:/root:/bin/bash\n"
            "libvirt-qemu:x:64055:108:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin\n"
            f"{USER}:x:1000:1000:Quentin R:/home/{USER}:/bin/bash\n",
            "/etc/group": f"root:x:0:\nkvm:x:108:libvirt-qemu\nlibvirt:x:109:{USER}\n"
            f"{USER}:x:1000:\n",
            "/etc/default/libvirtd": 'LIBVIRTD_ARGS="--listen"\n',
            "/etc/libvirt/libvirtd.conf": "listen_tls = 1\nlisten_tcp = 0\n"
            f'listen_addr = "{HOST_IP}"\n',
            "/etc/libvirt/qemu.conf": 'vnc_password = "kdsecretF"\n',
            f"/etc/libvirt/qemu/{GUESTS[0]}.xml": domain_xml(
                GUESTS[0], SHARED_MAC, "6c1e5a52-3f4b-4d7e-9a8b-0c1d2e3f4a5b", "kdsecretG"
            ),
            f"/etc/libvirt/qemu/{GUESTS[1]}.xml": domain_xml(
                GUESTS[1], SHARED_MAC, "7d2f6b63-405c-4e8f-ab9c-1d2e3f405b6c", "kdsecretG"
            ),
            "/etc/libvirt/qemu/networks/lan.xml": NETWORK_XML,
            f"/var/log/libvirt/qemu/{GUESTS[0]}.log": qemu_log,
            "/var/log/libvirt/libvirtd.log": libvirtd_log,
            "/proc/4242/status": status,
            "/proc/4242/cmdline": "\0".join(cmdline) + "\0",
            DEFAULT_CA: ca.cert_pem,
            DEFAULT_SERVER_CERT: server.cert_pem,
        },
    )
    key = tree / DEFAULT_SERVER_KEY.lstrip("/")
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_bytes(server.key_pem())
    os.chmod(key, 0o600)
    SECRETS.append(_key_body(server.key_pem()))
    return tree


def _key_body(pem: bytes) -> str:
    """A line from the middle of the private key's PEM: in nothing kvmdoctor writes."""
    lines = [line for line in pem.decode().splitlines() if not line.startswith("-----")]
    return lines[len(lines) // 2]


def encodings(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, base64.b64encode(raw), urllib.parse.quote(value, safe="").encode()]


def leaks(blob: bytes, values: list[str]) -> list[str]:
    return [v for v in values for form in encodings(v) if form in blob]


def assert_clean(blob: bytes, where: str) -> None:
    found = leaks(blob, IDENTIFYING + SECRETS)
    assert not found, f"{found} in {where}"


def diagnoses(report: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((d["playbook"], d["status"]) for d in report["diagnoses"])


def statuses(report: dict[str, Any]) -> list[tuple[str, str, int]]:
    return sorted((c["code"], c["status"], len(c["findings"])) for c in report["checks"])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("redact")
    tree = str(lab_host(base / "tree"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KVMDOCTOR_STATE_DIR", str(base / "state"))  # the per-host key
        plain = kvmdoctor("run", "--root", tree, "-f", "json", *AT)
        assert plain.exit_code in (0, 1), plain.stderr
        yield {"base": base, "tree": tree, "plain": json.loads(plain.stdout)}


def test_the_plain_report_shows_what_redaction_must_hide(lab: dict[str, Any]) -> None:
    """Without --redact the values are there (so the searches below can fail), the secrets
    are not, and the host is a patient: the shared MAC and the password'd log diagnosed."""
    blob = json.dumps(lab["plain"]).encode()
    assert {HOST, FQDN, HOST_IP, SHARED_MAC, USER, GUESTS[0]} <= set(leaks(blob, IDENTIFYING))
    assert not leaks(blob, SECRETS)
    codes = {(c["code"], c["status"]) for c in lab["plain"]["checks"]}
    assert ("NET010", "warn") in codes  # two defined guests with one MAC
    assert lab["plain"]["diagnoses"]
    assert lab["plain"]["run"]["redacted"] is False


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_of_a_redacted_run_holds_no_identifying_or_secret_value(
    lab: dict[str, Any], fmt: str
) -> None:
    map_file = lab["base"] / f"map-{fmt}.json"
    args = ["run", "--root", lab["tree"], "--redact", "--redact-map", str(map_file), "-f", fmt]
    result = kvmdoctor(*args, "-v", *AT) if fmt == "text" else kvmdoctor(*args, *AT)
    assert result.exit_code == lab["plain"]["exit_code"], result.stderr
    assert_clean(result.stdout.encode() + result.stderr.encode(), f"run --redact -f {fmt}")
    assert "host-" in result.stdout and "guest-" in result.stdout


def test_the_map_file_is_private_and_says_what_each_token_stands_for(lab: dict[str, Any]) -> None:
    map_file = lab["base"] / "map-json.json"
    if not map_file.exists():
        kvmdoctor("run", "--root", lab["tree"], "--redact-map", str(map_file), "-f", "json", *AT)
    assert stat.S_IMODE(map_file.stat().st_mode) == 0o600
    data = json.loads(map_file.read_text())
    pairs = {(e["kind"], e["value"]): e["token"] for e in data["tokens"]}
    assert pairs[("host", FQDN)].startswith(pairs[("host", HOST)] + ".")
    assert ("guest", GUESTS[0]) in pairs and ("user", USER) in pairs
    assert ("user", "libvirt-qemu") not in pairs  # a system account is not identifying
    assert len(bytes.fromhex(data["key"])) == 32


def test_a_redacted_report_gives_the_same_diagnoses_and_keeps_the_shared_mac_shared(
    lab: dict[str, Any],
) -> None:
    result = kvmdoctor("run", "--root", lab["tree"], "--redact", "-f", "json", *AT)
    report = json.loads(result.stdout)
    assert report["run"]["redacted"] is True
    from jsonschema import Draft202012Validator

    schema = json.loads((Path(__file__).parent.parent / "docs/report.schema.json").read_text())
    assert not list(Draft202012Validator(schema).iter_errors(report))
    assert diagnoses(report) == diagnoses(lab["plain"])
    assert statuses(report) == statuses(lab["plain"])
    (net010,) = [f for c in report["checks"] if c["code"] == "NET010" for f in c["findings"]]
    (before,) = [f for c in lab["plain"]["checks"] if c["code"] == "NET010" for f in c["findings"]]
    assert net010["status"] == before["status"] == "warn"
    assert net010["evidence"].keys() == before["evidence"].keys()
    assert set(_macs(json.dumps(before))) == {SHARED_MAC}
    (token,) = set(_macs(json.dumps(net010)))  # one MAC for both guests: one token
    assert json.dumps(net010).count(token) == json.dumps(before).count(SHARED_MAC)
    assert net010["subject"] == f"mac:{token}"
    guests = [g for g in json.dumps(net010["evidence"]).split('"') if g.startswith("guest-")]
    assert len(set(guests)) == 2


def test_two_runs_give_the_same_tokens_with_and_without_a_map(lab: dict[str, Any]) -> None:
    def tokens(*extra: str) -> tuple[str, str]:
        out = json.loads(kvmdoctor("run", "--root", lab["tree"], "-f", "json", *extra, *AT).stdout)
        return out["host"]["hostname"], json.dumps([c["findings"] for c in out["checks"]])

    map_file = str(lab["base"] / "twice.json")
    first, second = tokens("--redact-map", map_file), tokens("--redact-map", map_file)
    assert first[0] == second[0] and first[0].startswith("host-")
    keyed_1, keyed_2 = tokens("--redact"), tokens("--redact")  # the per-host key
    assert keyed_1[0] == keyed_2[0] == first[0]  # the map took the host key it found
    assert (lab["base"] / "state" / "redact.key").stat().st_mode & 0o077 == 0


def test_report_convert_redact_of_a_plain_report_gives_the_runs_tokens(
    lab: dict[str, Any],
) -> None:
    saved = lab["base"] / "plain.json"
    saved.write_text(json.dumps(lab["plain"]))
    map_file = str(lab["base"] / "convert-map.json")
    direct = json.loads(
        kvmdoctor("run", "--root", lab["tree"], "--redact-map", map_file, "-f", "json", *AT).stdout
    )
    for fmt in FORMATS:
        result = kvmdoctor("report", "convert", str(saved), "--to", fmt, "--redact-map", map_file)
        assert result.exit_code == 0, result.stderr
        assert_clean(result.stdout.encode(), f"report convert --redact --to {fmt}")
        assert direct["host"]["hostname"] in result.stdout or fmt == "prometheus"
    # A user named only inside a log line is known from the map (a plain report alone does
    # not say it is a user name: docs/redaction.md).
    shown = kvmdoctor("report", "show", str(saved), "--redact-map", map_file, "-v")
    assert_clean(shown.stdout.encode(), "report show --redact")


def test_collect_redact_leaves_no_value_in_the_archive_and_replays_to_the_same_diagnoses(
    lab: dict[str, Any],
) -> None:
    archive = lab["base"] / "snap.tar.gz"
    result = kvmdoctor("collect", "--root", lab["tree"], "--redact", "-o", str(archive))
    assert result.exit_code == 0, result.stderr
    assert_clean(result.stderr.encode(), "collect's messages")
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        names = "\n".join(m.name for m in members)
        assert_clean(names.encode(), "archive member names")
        assert any(m.name.endswith(".log") for m in members)
        for member in members:
            if member.isfile():
                handle = tar.extractfile(member)
                assert handle is not None
                assert_clean(handle.read(), member.name)
    assert_clean(archive.read_bytes(), "the archive's bytes")  # what tar itself adds
    # The certificate's names live in its DER, where no text search finds them: it was
    # issued again with tokens, and a replay still verifies its chain and its key (the TLS
    # checks' statuses below are the plain run's).
    from cryptography import x509

    with tarfile.open(archive) as tar:
        handle = tar.extractfile(f"./files{DEFAULT_SERVER_CERT}")
        assert handle is not None
        cert = x509.load_pem_x509_certificate(handle.read())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = san.get_values_for_type(x509.DNSName)
    assert len(names) == 3 and all(n.startswith("host-") for n in names[:2])
    assert names[2].startswith("*.dom-") and names[0].endswith(names[2][1:])  # still covered
    assert str(san.get_values_for_type(x509.IPAddress)[0]) not in (HOST_IP, "")
    assert FQDN not in cert.subject.rfc4514_string()
    replay = kvmdoctor("run", "--snapshot", str(archive), "-f", "json", *AT)
    report = json.loads(replay.stdout)
    assert_clean(replay.stdout.encode(), "the replay's report")
    assert diagnoses(report) == diagnoses(lab["plain"])
    assert statuses(report) == statuses(lab["plain"])
    assert report["run"]["source"]["recorded_from"]["redacted"] is True


# --- the token mapping ------------------------------------------------------------------------


def _r(key: bytes = b"k" * 32) -> Redactor:
    return Redactor(key)


def test_addresses_in_one_subnet_stay_in_one_token_subnet_and_distinct() -> None:
    r = _r()
    net = ipaddress.ip_network("172.20.5.0/24")
    hosts = [net.network_address + n for n in (0, 1, 77, 255)]
    tokens = [r.address(h) for h in hosts]
    assert len(set(tokens)) == 4
    token_net = ipaddress.ip_network(f"{tokens[0]}/24")
    assert all(t in token_net for t in tokens) and token_net != net
    assert [int(t) & 0xFF for t in tokens] == [0, 1, 77, 255]  # network, gateway, broadcast
    assert tokens[0] in ipaddress.ip_network("172.16.0.0/12")  # private stays private
    # a /16 and a /20 keep their shape too: a shared prefix of n bits stays shared
    a, b = r.address(ipaddress.ip_address("10.1.2.3")), r.address(ipaddress.ip_address("10.1.15.9"))
    assert ipaddress.ip_network(f"{a}/20", strict=False) == ipaddress.ip_network(
        f"{b}/20", strict=False
    )
    c = r.address(ipaddress.ip_address("10.1.16.9"))
    assert c not in ipaddress.ip_network(f"{a}/20", strict=False)


def test_public_addresses_stay_public_and_kept_ones_stay() -> None:
    r = _r()
    for text in ("81.2.69.142", "8.8.8.8", "1.1.1.1"):
        token = r.address(ipaddress.ip_address(text))
        assert token.is_global and str(token) != text
    for kept in ("127.0.0.1", "0.0.0.0", "255.255.255.0", "224.0.0.251", "192.0.2.10", "::1"):
        assert str(r.address(ipaddress.ip_address(kept))) == kept


def test_ipv6_keeps_its_prefix_relations_and_its_scope() -> None:
    r = _r()
    a = r.address(ipaddress.ip_address("2a01:4f8:c17:1::10"))
    b = r.address(ipaddress.ip_address("2a01:4f8:c17:1::11"))
    c = r.address(ipaddress.ip_address("2a01:4f8:c17:2::10"))
    assert ipaddress.ip_network(f"{a}/64", strict=False) == ipaddress.ip_network(
        f"{b}/64", strict=False
    )
    assert c not in ipaddress.ip_network(f"{a}/64", strict=False)
    assert a in ipaddress.ip_network("2000::/3") and a != ipaddress.ip_address("2a01:4f8:c17:1::10")
    link = r.address(ipaddress.ip_address("fe80::5054:ff:fe6b:3c58"))
    # Its interface identifier is the MAC's (libvirt's 52:54:00 kept, the rest mapped).
    assert link in ipaddress.ip_network("fe80::/64") and "fe6b:3c58" not in str(link)
    assert (
        r.text("x ::ffff:10.20.30.40 y") == f"x ::ffff:{r.address(ipaddress.ip_address(HOST_IP))} y"
    )


def test_a_shared_mac_shares_its_token_and_a_guest_mac_stays_related_to_its_tap() -> None:
    r = _r()
    assert r.mac(SHARED_MAC) == r.mac(SHARED_MAC) != r.mac(OTHER_MAC)
    guest, tap = r.mac(SHARED_MAC), r.mac("fe" + SHARED_MAC[2:])
    assert guest.startswith("52:54:00:") and tap == "fe" + guest[2:]
    assert r.mac(SHARED_MAC.upper()) == guest.upper()
    vendor = r.mac("3c:ec:ef:12:34:56")  # a vendor's OUI is kept, the NIC part is not
    assert vendor.startswith("3c:ec:ef:") and vendor != "3c:ec:ef:12:34:56"
    local = r.mac("2a:7b:01:02:03:04")  # another locally administered prefix is mapped
    assert int(local[:2], 16) & 0x03 == 0x02 and not local.startswith("2a:7b:01")
    for kept in ("ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:fb", "00:00:00:00:00:00"):
        assert r.mac(kept) == kept


def test_an_fqdn_and_its_short_name_share_the_host_token() -> None:
    r = _r()
    r.learn_host("Orion.Corp.Example.NET")
    text = r.text(f"{HOST}, {FQDN}, Orion.Corp.Example.NET and /var/lib/{HOST}.d/{HOST}.xml")
    short, fqdn = r.host(HOST), r.host(FQDN)
    assert fqdn.startswith(short + ".") and fqdn.endswith(".invalid")
    assert text == f"{short}, {fqdn}, {fqdn} and /var/lib/{short}.d/{short}.xml"
    assert "orion" not in text.lower()


def test_names_are_replaced_as_whole_words_and_system_accounts_are_kept() -> None:
    r = _r()
    r.learn_user("alice", 1000)
    r.learn_user("libvirt-qemu", 64055)
    r.learn_guest("web1")
    out = r.text("alice ran web1 as libvirt-qemu; web10 and malice stay; /home/alice/web1.log")
    user, guest = r.user("alice"), r.guest("web1")
    assert out == (
        f"{user} ran {guest} as libvirt-qemu; web10 and malice stay; /home/{user}/{guest}.log"
    )


def test_tokens_depend_on_the_key_and_cannot_be_computed_without_it() -> None:
    one, other = _r(b"a" * 32), _r(b"b" * 32)
    assert one.guest("web1") != other.guest("web1")
    assert one.mac(SHARED_MAC) != other.mac(SHARED_MAC)
    addrs = [ipaddress.ip_address(f"81.2.69.{n}") for n in range(256)]
    assert [one.address(a) for a in addrs] != [other.address(a) for a in addrs]


def _macs(text: str) -> list[str]:
    import re

    return re.findall(r"52:54:00:[0-9a-f]{2}:[0-9a-f]{2}:[0-9a-f]{2}", text)


def test_an_existing_map_gives_its_tokens_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVMDOCTOR_STATE_DIR", str(tmp_path / "state"))
    path = str(tmp_path / "map.json")
    first, _ = Redactor.open(path)
    first.learn_guest("web1")
    text = first.text(f"web1 at {HOST_IP} {SHARED_MAC}")
    first.save(path)
    again, warning = Redactor.open(path)
    assert warning is None
    assert again.text(f"web1 at {HOST_IP} {SHARED_MAC}") == text  # it knows web1 from the map
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_file_that_is_not_a_map_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVMDOCTOR_STATE_DIR", str(tmp_path / "state"))
    bad = tmp_path / "map.json"
    bad.write_text('{"format": "something else"}')
    result = kvmdoctor("report", "convert", "x.json", "--to", "json", "--redact-map", str(bad))
    assert result.exit_code == 2
    assert "cannot use" in result.stderr and "redaction map" in result.stderr


def test_a_key_file_that_holds_no_key_is_left_alone_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An emptied key file (a full disk, a crash while it was written) used to send every
    --redact run into endless recursion (exit 3)."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "redact.key").write_text("")
    monkeypatch.setenv("KVMDOCTOR_STATE_DIR", str(state))
    sample = Path(__file__).parent.parent / "sample_reports" / "duplicate-mac.json"
    result = kvmdoctor("report", "convert", str(sample), "--to", "json", "--redact")
    assert result.exit_code == 0, result.stderr
    assert "cannot use the redaction key" in result.stderr and "remove the file" in result.stderr
    assert json.loads(result.stdout)["host"]["hostname"].startswith("host-")
    assert (state / "redact.key").read_text() == ""


# --- the gaps: EUI-64, versions, wildcard names, the network drawing ------------------------


def test_a_link_local_address_made_of_a_mac_carries_that_macs_token() -> None:
    r = _r()
    mac = r.mac(SHARED_MAC)  # 52:54:00:6b:3c:58 -> 52:54:00:xx:yy:zz
    link = r.address(ipaddress.ip_address("fe80::5054:ff:fe6b:3c58"))
    octets = bytes.fromhex(mac.replace(":", ""))
    # RFC 4291's modified EUI-64 of the MAC's token, written out by hand.
    eui64 = bytes([octets[0] ^ 0x02, octets[1], octets[2], 0xFF, 0xFE, *octets[3:]])
    assert int(link) == int(ipaddress.ip_address("fe80::")) | int.from_bytes(eui64, "big")
    # A global SLAAC address: the NIC part is the MAC's, the /64 the one of its other tokens.
    slaac = r.address(ipaddress.ip_address("2a01:4f8:c17:1:5054:ff:fe6b:3c58"))
    other = r.address(ipaddress.ip_address("2a01:4f8:c17:1::10"))
    assert int(slaac) >> 64 == int(other) >> 64 and int(slaac) & ((1 << 64) - 1) == int(link) & (
        (1 << 64) - 1
    )
    assert slaac in ipaddress.ip_network("2000::/3")
    # In text, with a scope: the same.
    assert r.text("fe80::5054:ff:fe6b:3c58%vnet0 is " + SHARED_MAC) == f"{link}%vnet0 is {mac}"
    # An interface identifier that is not an EUI-64 is mapped as any address is.
    privacy = r.address(ipaddress.ip_address("fe80::1c2d:3e4f:5a6b:7c8d"))
    assert privacy in ipaddress.ip_network("fe80::/64") and "5a6b" not in str(privacy)


def test_a_version_field_keeps_its_four_part_version_and_text_elsewhere_is_mapped() -> None:
    r = _r()
    data = {
        "libvirt_version": "1.2.3.4",
        "driver": {"name": "e1000e", "version": "3.2.6.8", "peer": "81.2.69.142"},
        "versions": {"orion": "10.0.0.1"},
        "message": "bus 1.2.3.4 at 81.2.69.142",
    }
    out = r.value(data)
    assert out["libvirt_version"] == "1.2.3.4" and out["driver"]["version"] == "3.2.6.8"
    assert out["versions"] == {"orion": "10.0.0.1"}  # a fleet's versions by host (LIB009)
    assert out["driver"]["peer"] != "81.2.69.142"  # beside a version, an address is one
    assert "81.2.69.142" not in out["message"] and "1.2.3.4" not in out["message"]
    r.learn_host("orion")
    assert list(r.value(data)["versions"]) == [r.host("orion")]  # names still go


def test_a_wildcard_certificate_name_hides_its_domain_and_still_covers_the_hosts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVMDOCTOR_STATE_DIR", str(tmp_path / "state"))
    path = str(tmp_path / "map.json")
    r, _ = Redactor.open(path)
    r.learn_host(WILDCARD)
    r.learn_host(FQDN)
    text = f"DNS:{WILDCARD}, {FQDN}, kvm9.corp.example.net and corp.example.net"
    out = r.text(text)
    assert "corp.example.net" not in out and "example" not in out
    wildcard, fqdn = r.wildcard("corp.example.net"), r.host(FQDN)
    assert wildcard.startswith("*.dom-") and fqdn.endswith(wildcard[1:])  # still covered
    assert r.host("kvm9.corp.example.net").endswith(wildcard[1:])  # never learned, still hidden
    assert out == (f"DNS:{wildcard}, {fqdn}, {r.host('kvm9.corp.example.net')} and {wildcard[2:]}")
    r.save(path)
    again, _ = Redactor.open(path)
    assert again.text(text) == out  # the map teaches the wildcard's domain to the next run


def test_the_redacted_certificate_keeps_a_wildcard_that_covers_the_hosts_token(
    lab: dict[str, Any],
) -> None:
    """The lab's server certificate names *.corp.example.net: the redacted report shows its
    token, under which the host's token still falls, and TLS004 judges the same."""
    map_file = lab["base"] / "map-wildcard.json"
    args = ("run", "--root", lab["tree"], "--redact-map", str(map_file), "-f", "json")
    report = json.loads(kvmdoctor(*args, *AT).stdout)
    assert_clean(json.dumps(report).encode(), "run --redact -f json")
    blob = json.dumps(report)
    tokens = {e["kind"]: e["token"] for e in json.loads(map_file.read_text())["tokens"]}
    assert tokens["wildcard"] in blob
    assert statuses(report) == statuses(lab["plain"])


def network_snapshot(edit_snapshot: Any) -> Path:
    """The lab's captured guest and its links (bridge kdbrcap, tap vnet3) as host `orion`'s
    guest `web1`, whose definition names its tap `web1-eth0`."""
    import kdnet

    snap = edit_snapshot()
    snap.set_value("uname", {**snap.value("uname"), "nodename": HOST})
    rows = kdnet.lab_rows("guest/links.json")
    for link in rows:
        if link["attrs"]["IFLA_IFNAME"] == "vnet3":
            link["attrs"]["IFLA_IFNAME"] = "web1-eth0"
    kdnet.set_netlink(snap, "links", rows)
    kdnet.set_netlink(snap, "addresses", [])
    xml = kdnet.lab_capture("guest/run-libvirt-qemu__kd-cap-guest.xml")
    xml = xml.replace("<name>kd-cap-guest</name>", "<name>web1</name>")
    xml = xml.replace("<target dev='vnet3'/>", "<target dev='web1-eth0'/>")
    kdnet.set_domains(snap, [kdnet.domain_entry(xml, active=True)])
    saved: Path = snap.save()
    return saved


def test_a_redacted_html_drawing_shows_no_mac_guest_or_guest_interface_name(
    edit_snapshot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVMDOCTOR_STATE_DIR", str(tmp_path / "state"))
    snapshot = network_snapshot(edit_snapshot)
    values = [HOST, "web1", "web1-eth0", "52:54:00:8e:d6:ee", "fe:54:00:8e:d6:ee"]
    plain = kvmdoctor("run", "--snapshot", str(snapshot), "-f", "json")
    report = json.loads(plain.stdout)
    network = report["host"]["network"]
    assert {link["name"] for link in network["links"]} == {"kdbrcap", "web1-eth0"}
    assert network["guests"][0]["nics"][0]["target"] == "web1-eth0"
    page = kvmdoctor("run", "--snapshot", str(snapshot), "-f", "html").stdout
    assert 'id="network-drawing"' in page and set(leaks(page.encode(), values)) == set(values)

    for args in (
        ("run", "--snapshot", str(snapshot), "--redact", "-f", "html"),
        ("run", "--snapshot", str(snapshot), "--redact", "-f", "json"),
    ):
        result = kvmdoctor(*args)
        assert result.exit_code == plain.exit_code, result.stderr
        assert 'id="network-drawing"' in result.stdout or '"network"' in result.stdout
        found = leaks(result.stdout.encode(), values)
        assert not found, f"{found} in {args}"
    # A saved plain report redacted afterwards learns the names from its host section.
    saved = tmp_path / "plain.json"
    saved.write_text(plain.stdout)
    late = kvmdoctor("report", "convert", str(saved), "--to", "html", "--redact")
    assert late.exit_code == 0, late.stderr
    assert not leaks(late.stdout.encode(), values)
    redacted = json.loads(kvmdoctor(*args).stdout)
    (nic,) = redacted["host"]["network"]["guests"][0]["nics"]
    assert nic["target"].startswith("nic-") and len(nic["target"]) <= 15  # still an ifname
    assert nic["target"] in {link["name"] for link in redacted["host"]["network"]["links"]}
