"""TLS001-TLS006: a failing and a passing case each, on host trees read through
`LiveSource(root=tree)` (and snapshots recorded from them), with certificates made in the test
by `cryptography` the way libvirt's documentation makes them (tests/kdlab.py `Pki`).

A tree is laid out as an administrator sets TLS up on Debian: LIBVIRTD_ARGS="--listen" in
/etc/default/libvirtd, `listen_tls = 1` in /etc/libvirt/libvirtd.conf, the CA, server
certificate and key at libvirt's default paths, the key mode 0600.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from doctor.facts.tls import (
    DEFAULT_CA,
    DEFAULT_CLIENT_CERT,
    DEFAULT_CLIENT_KEY,
    DEFAULT_CRL,
    DEFAULT_SERVER_CERT,
    DEFAULT_SERVER_KEY,
    canonical_from_hosts,
    daemon_arguments,
    describe_certificate,
    dn_pattern_matches,
    verify_signature,
)

from kdlab import Issued, Pki, write_file
from kdsnap import EditableSnapshot, one, run_checks
from kdtest import REALDATA, TEST_GIDS, TEST_UID, Facl

HOST = "kdhost"
FQDN = "kdhost.example.org"
HOSTS = f"127.0.0.1\tlocalhost\n192.0.2.10\t{FQDN} {HOST}\n"
PASSWD = (
    "root:x:0:0:root:/root:/bin/bash\n"
    f"kdsvc:x:{TEST_UID}:{TEST_GIDS[0]}:kd test daemon:/nonexistent:/usr/sbin/nologin\n"
)
GROUP = f"root:x:0:\nkdsvc:x:{TEST_GIDS[0]}:\nkdpki:x:{TEST_GIDS[1]}:\n"
DEBIAN_CONF = (
    REALDATA / "libvirt" / "libvirtd.conf__debian12_libvirt-daemon-system_9.0.0-4+deb12u2.conf"
).read_text()
# Debian 12's /lib/systemd/system/libvirtd-tls.socket (libvirt-daemon-system 9.0.0-4+deb12u2).
TLS_SOCKET_UNIT = """[Unit]
Description=Libvirt TLS IP socket
Before=libvirtd.service
BindsTo=libvirtd.socket
After=libvirtd.socket


[Socket]
ListenStream=16514
Service=libvirtd.service

[Install]
WantedBy=sockets.target
"""
TLS_CODES = tuple(f"TLS{n:03d}" for n in range(1, 11))


class Host:
    """A host tree; `checks()` runs the TLS checks on it through LiveSource(root=tree)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, path: str, data: Any, mode: int = 0o644) -> Host:
        write_file(self.root / path.lstrip("/"), data, mode)
        return self

    def remove(self, path: str) -> Host:
        (self.root / path.lstrip("/")).unlink()
        return self

    def file(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def conf(self, text: str = "", **values: Any) -> Host:
        """/etc/libvirt/libvirtd.conf: Debian's shipped file (all commented), then `values`."""
        lines = [DEBIAN_CONF, text]
        for key, value in values.items():
            lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}")
        return self.put("/etc/libvirt/libvirtd.conf", "\n".join(lines) + "\n")

    def checks(self, uri: Optional[str] = None) -> dict[str, list[Any]]:
        return run_checks(self.root, select=("TLS",), uri=uri)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="module")
def ca(pki: Pki) -> Issued:
    return pki.ca("kd test CA")


@pytest.fixture(scope="module")
def server(pki: Pki, ca: Issued) -> Issued:
    return pki.issue(ca, FQDN, dns=(FQDN, HOST), ips=("192.0.2.10",))


@pytest.fixture
def host(tmp_path: Path, ca: Issued, server: Issued) -> Callable[..., Host]:
    """host(...) lays out a TLS host: `server_cert`, `ca_cert`, `key` (another certificate's
    key, or PEM bytes), `listen` (LIBVIRTD_ARGS="--listen"), `pki` (install the files)."""
    count = 0

    def make(
        *,
        server_cert: Optional[Issued] = None,
        ca_cert: Optional[Issued] = None,
        key: Any = None,
        listen: bool = True,
        pki: bool = True,
        base: Optional[Path] = None,
    ) -> Host:
        nonlocal count
        count += 1
        made = Host((base or tmp_path) / f"kdhost{count}")
        made.put("/etc/hostname", f"{HOST}\n").put("/etc/hosts", HOSTS)
        made.put("/etc/passwd", PASSWD).put("/etc/group", GROUP)
        made.conf(listen_tls=1, listen_tcp=0)
        if listen:
            made.put("/etc/default/libvirtd", 'LIBVIRTD_ARGS="--listen"\n')
        if pki:
            cert = server_cert or server
            made.put(DEFAULT_CA, (ca_cert or ca).cert_pem)
            made.put(DEFAULT_SERVER_CERT, cert.cert_pem)
            key_pem = key if isinstance(key, bytes) else (key or cert).key_pem()
            made.put(DEFAULT_SERVER_KEY, key_pem, 0o600)
        return made

    return make


def statuses(findings: dict[str, list[Any]]) -> dict[str, list[str]]:
    return {code: [f.status for f in findings[code]] for code in TLS_CODES}


# --- whether TLS is in use --------------------------------------------------------------------


def test_every_tls_check_passes_once_saying_tls_is_not_in_use_on_debians_default_host(
    host: Callable[..., Host],
) -> None:
    plain = host(listen=False, pki=False).conf()  # the shipped libvirtd.conf, nothing set
    found = plain.checks()
    for code in TLS_CODES:
        finding = one(found, code)
        assert finding.status == "pass"
        assert finding.message.startswith("TLS is not in use")
        assert finding.evidence["in_use"] is False
        assert finding.evidence["undetermined"] == []
        looked = " | ".join(finding.evidence["looked_at"])
        assert "no --listen in /etc/default/libvirtd" in looked
        assert f"no {DEFAULT_SERVER_CERT}" in looked
        assert "the URI qemu:///system does not use TLS" in looked


def test_every_tls_check_skips_on_a_snapshot_that_cannot_tell_whether_tls_is_used(
    edit_snapshot: Any,
) -> None:
    """A snapshot recorded before the TLS checks existed holds no answer about libvirtd.conf,
    so "not in use" cannot be claimed."""
    snap = edit_snapshot().drop("file", path="/etc/libvirt/libvirtd.conf")
    (snap.path / "files/etc/libvirt/libvirtd.conf").unlink(missing_ok=True)
    found = run_checks(snap.save(), select=("TLS",))
    for code in TLS_CODES:
        finding = one(found, code)
        assert finding.status == "skip"
        assert finding.message.startswith("whether TLS is in use could not be told: ")
        assert (
            "/etc/libvirt/libvirtd.conf: not recorded in the snapshot"
            in (finding.evidence["undetermined"])
        )


def test_listen_tls_0_keeps_a_listening_daemon_off_tls(host: Callable[..., Host]) -> None:
    tcp_only = host(pki=False).conf(listen_tls=0, listen_tcp=1)
    finding = one(tcp_only.checks(), "TLS001")
    assert finding.status == "pass"
    assert finding.message.startswith("TLS is not in use")
    assert (
        "libvirtd: /etc/default/libvirtd starts libvirtd with --listen but listen_tls = 0 in "
        "/etc/libvirt/libvirtd.conf" in finding.evidence["looked_at"]
    )


def test_an_enabled_tls_socket_unit_puts_tls_in_use(host: Callable[..., Host]) -> None:
    socket_host = host(listen=False)
    socket_host.put("/lib/systemd/system/libvirtd-tls.socket", TLS_SOCKET_UNIT)
    wants = socket_host.file("/etc/systemd/system/sockets.target.wants/libvirtd-tls.socket")
    wants.parent.mkdir(parents=True)
    wants.symlink_to("/lib/systemd/system/libvirtd-tls.socket")
    finding = one(socket_host.checks(), "TLS001")
    assert finding.status == "pass"
    assert any(
        "libvirtd-tls.socket is enabled" in r for r in finding.evidence["tls_in_use_because"]
    )


@pytest.mark.parametrize(
    ("argv", "listen", "config"),
    [
        (("/usr/sbin/libvirtd", "--listen"), True, None),
        (("libvirtd", "-dl"), True, None),
        (("libvirtd", "--lis", "-f", "/etc/kd/libvirtd.conf"), True, "/etc/kd/libvirtd.conf"),
        (("libvirtd", "-f/etc/kd/l.conf", "-d"), False, "/etc/kd/l.conf"),
        (("libvirtd", "--config=/etc/kd/l.conf", "-l"), True, "/etc/kd/l.conf"),
        (("libvirtd", "-d", "-p", "/run/kdl.pid", "--timeout", "120"), False, None),
        (("virtproxyd", "--daemon", "--pid-file", "/run/l"), False, None),
    ],
)
def test_daemon_command_lines_are_read_as_getopt_reads_them(
    argv: tuple[str, ...], listen: bool, config: Optional[str]
) -> None:
    assert daemon_arguments(argv) == (listen, config)


# --- TLS001 tls-ca-missing ----------------------------------------------------------------------


def test_tls001_passes_with_the_ca_at_the_default_path(host: Callable[..., Host]) -> None:
    finding = one(host().checks(), "TLS001")
    assert finding.status == "pass"
    assert "CN=kd test CA" in finding.message
    assert finding.evidence["ca_file"] == DEFAULT_CA


def test_tls001_fails_in_libvirts_words_when_the_ca_is_missing(host: Callable[..., Host]) -> None:
    finding = one(host().remove(DEFAULT_CA).checks(), "TLS001")
    assert finding.status == "fail"
    assert finding.message.startswith(
        "Cannot read CA certificate '/etc/pki/CA/cacert.pem': No such file or directory"
    )
    assert finding.evidence["default"] == DEFAULT_CA
    assert finding.evidence["configured"] == "libvirt's default"


def test_tls001_fails_when_cert_file_is_set_without_ca_file(
    host: Callable[..., Host], server: Issued
) -> None:
    configured = host(pki=False).conf(
        listen_tls=1, cert_file="/etc/libvirt/pki/server.pem", key_file="/etc/libvirt/pki/key.pem"
    )
    configured.put("/etc/libvirt/pki/server.pem", server.cert_pem)
    configured.put("/etc/libvirt/pki/key.pem", server.key_pem(), 0o600)
    found = configured.checks()
    ca_finding = one(found, "TLS001")
    assert ca_finding.status == "fail"
    assert "No CA certificate path set to match server key/cert" in ca_finding.message
    assert one(found, "TLS002").status == "pass"  # the pair itself is fine


def test_tls001_follows_ca_file_from_libvirtd_conf(host: Callable[..., Host], ca: Issued) -> None:
    configured = host(pki=False).conf(
        listen_tls=1,
        ca_file="/etc/libvirt/pki/ca.pem",
        cert_file="/etc/libvirt/pki/server.pem",
        key_file="/etc/libvirt/pki/key.pem",
    )
    finding = one(configured.checks(), "TLS001")
    assert finding.status == "fail"
    assert "Cannot read CA certificate '/etc/libvirt/pki/ca.pem'" in finding.message
    configured.put("/etc/libvirt/pki/ca.pem", ca.cert_pem)
    finding = one(configured.checks(), "TLS001")
    assert finding.status == "pass"
    assert finding.evidence["configured"] == "ca_file in /etc/libvirt/libvirtd.conf"


def test_tls001_fails_when_the_ca_file_holds_no_certificate(host: Callable[..., Host]) -> None:
    broken = host().put(DEFAULT_CA, "this is not a certificate\n")
    finding = one(broken.checks(), "TLS001")
    assert finding.status == "fail"
    assert "holds no PEM certificate" in finding.message


# --- TLS002 tls-cert-or-key-missing ----------------------------------------------------------


def test_tls002_passes_when_the_key_belongs_to_the_certificate(
    host: Callable[..., Host], server: Issued
) -> None:
    finding = one(host().checks(), "TLS002")
    assert finding.status == "pass"
    assert finding.evidence["certificate_public_sha256"] == server.public_sha256
    assert finding.evidence["key_public_sha256"] == server.public_sha256


def test_tls002_fails_for_a_key_that_does_not_match_and_never_reports_the_key(
    host: Callable[..., Host], pki: Pki, server: Issued
) -> None:
    stray = Issued(server.cert, pki.new_key())
    mismatched = host(key=stray.key_pem())
    found = mismatched.checks()
    finding = one(found, "TLS002")
    assert finding.status == "fail"
    assert "does not belong to the certificate" in finding.message
    assert finding.evidence["certificate_public_sha256"] == server.public_sha256
    assert finding.evidence["key_public_sha256"] == stray.public_sha256
    report = json.dumps([f.as_dict() for fs in found.values() for f in fs])
    key_body = [line for line in stray.key_pem().decode().splitlines() if "-----" not in line]
    assert key_body and not any(line in report for line in key_body)


def test_tls002_fails_for_a_key_with_a_passphrase(
    host: Callable[..., Host], server: Issued
) -> None:
    finding = one(host(key=server.key_pem(password=b"kd-passphrase")).checks(), "TLS002")
    assert finding.status == "fail"
    assert "encrypted with a passphrase" in finding.message


def test_tls002_fails_in_libvirts_words_when_the_key_is_missing(
    host: Callable[..., Host],
) -> None:
    finding = one(host().remove(DEFAULT_SERVER_KEY).checks(), "TLS002")
    assert finding.status == "fail"
    assert (
        "Cannot read private key '/etc/pki/libvirt/private/serverkey.pem': "
        "No such file or directory" in finding.message
    )


def test_tls002_fails_for_a_tls_uri_without_a_client_certificate(
    host: Callable[..., Host], pki: Pki, ca: Issued
) -> None:
    client_host = host(listen=False, pki=False).put(DEFAULT_CA, ca.cert_pem)
    uri = "qemu+tls://kdremote.example.org/system"
    finding = one(client_host.checks(uri=uri), "TLS002", "tls:client")
    assert finding.status == "fail"
    assert f"no client certificate at {DEFAULT_CLIENT_CERT}" in finding.message

    client = pki.issue(ca, "kd client", purpose="client")
    client_host.put(DEFAULT_CLIENT_CERT, client.cert_pem)
    client_host.put(DEFAULT_CLIENT_KEY, client.key_pem(), 0o600)
    found = client_host.checks(uri=uri)
    assert one(found, "TLS002", "tls:client").status == "pass"
    assert one(found, "TLS004").status == "skip"  # a client has no host name to match


def test_tls002_reads_the_client_files_from_pkipath_in_the_uri(
    host: Callable[..., Host], pki: Pki, ca: Issued
) -> None:
    client = pki.issue(ca, "kd client", purpose="client")
    client_host = host(listen=False, pki=False)
    client_host.put("/srv/kdpki/cacert.pem", ca.cert_pem)
    client_host.put("/srv/kdpki/clientcert.pem", client.cert_pem)
    client_host.put("/srv/kdpki/clientkey.pem", client.key_pem(), 0o600)
    found = client_host.checks(uri="qemu+tls://kdremote.example.org/system?pkipath=/srv/kdpki")
    finding = one(found, "TLS002", "tls:client")
    assert finding.status == "pass"
    assert finding.evidence["key_file"] == "/srv/kdpki/clientkey.pem"
    assert one(found, "TLS005", "tls:client").status == "pass"


# --- TLS003 tls-cert-expired --------------------------------------------------------------------


def test_tls003_passes_for_valid_certificates_and_names_the_clock_it_used(
    host: Callable[..., Host],
) -> None:
    found = host().checks()
    server_finding = one(found, "TLS003", f"cert:{DEFAULT_SERVER_CERT}")
    assert server_finding.status == "pass"
    assert one(found, "TLS003", f"cert:{DEFAULT_CA}").status == "pass"
    # Under --root the host's clock cannot be read: the finding says which clock judged it.
    assert server_finding.evidence["clock_source"] == "the examining machine's clock"
    assert "unavailable" in server_finding.evidence["clock_note"]


def test_tls003_fails_for_an_expired_server_certificate(
    host: Callable[..., Host], pki: Pki, ca: Issued
) -> None:
    expired = pki.issue(ca, FQDN, dns=(FQDN, HOST), valid=(-60, -1))
    finding = one(host(server_cert=expired).checks(), "TLS003", f"cert:{DEFAULT_SERVER_CERT}")
    assert finding.status == "fail"
    assert f"The server certificate {DEFAULT_SERVER_CERT} has expired" in finding.message
    assert finding.evidence["not_after"] == describe_certificate(expired.cert).not_after


def test_tls003_fails_for_a_certificate_that_is_not_yet_valid(
    host: Callable[..., Host], pki: Pki, ca: Issued
) -> None:
    future = pki.issue(ca, FQDN, dns=(FQDN, HOST), valid=(10, 100))
    finding = one(host(server_cert=future).checks(), "TLS003", f"cert:{DEFAULT_SERVER_CERT}")
    assert finding.status == "fail"
    assert "is not yet active" in finding.message and "clock" in finding.message


def test_tls003_warns_thirty_days_before_expiry(
    host: Callable[..., Host], pki: Pki, ca: Issued
) -> None:
    ending = pki.issue(ca, FQDN, dns=(FQDN, HOST), valid=(-300, 10))
    finding = one(host(server_cert=ending).checks(), "TLS003", f"cert:{DEFAULT_SERVER_CERT}")
    assert finding.status == "warn"
    assert "expires in 10 days" in finding.message


def test_tls003_fails_for_an_expired_ca(host: Callable[..., Host], pki: Pki) -> None:
    old_ca = pki.ca("kd old CA", valid=(-3650, -2))
    cert = pki.issue(old_ca, FQDN, dns=(FQDN, HOST), valid=(-10, 300))
    found = host(server_cert=cert, ca_cert=old_ca).checks()
    finding = one(found, "TLS003", f"cert:{DEFAULT_CA}")
    assert finding.status == "fail"
    assert f"The CA certificate {DEFAULT_CA} has expired" in finding.message
    assert one(found, "TLS003", f"cert:{DEFAULT_SERVER_CERT}").status == "pass"


def test_tls003_fails_an_expired_client_certificate_only_when_a_tls_uri_uses_it(
    host: Callable[..., Host], pki: Pki, ca: Issued
) -> None:
    client = pki.issue(ca, "kd client", purpose="client", valid=(-60, -1))
    client_host = host(listen=False, pki=False).put(DEFAULT_CA, ca.cert_pem)
    client_host.put(DEFAULT_CLIENT_CERT, client.cert_pem)
    client_host.put(DEFAULT_CLIENT_KEY, client.key_pem(), 0o600)
    unused = one(client_host.checks(), "TLS003", f"cert:{DEFAULT_CLIENT_CERT}")
    assert unused.status == "warn"
    assert f"The client certificate {DEFAULT_CLIENT_CERT} has expired" in unused.message
    used = client_host.checks(uri="qemu+tls://kdremote.example.org/system")
    assert one(used, "TLS003", f"cert:{DEFAULT_CLIENT_CERT}").status == "fail"


def _record(tree: Path, dest: Path) -> Path:
    from doctor import engine
    from doctor.registry import load_registry
    from doctor.sources.live import LiveSource
    from doctor.sources.snapshot import RecordingSource

    recorder = RecordingSource(LiveSource(str(tree)))
    engine.run(load_registry(), recorder, selected=["TLS"])
    recorder.write(str(dest))
    return dest


def test_tls003_judges_a_snapshot_by_the_hosts_recorded_clock(
    host: Callable[..., Host], tmp_path: Path, pki: Pki
) -> None:
    snap = EditableSnapshot(_record(host().root, tmp_path / "recorded"), tmp_path / "edited")
    # The host's clock said five days ago: the certificate (valid from yesterday) was not yet
    # valid there and then.
    behind = pki.now.timestamp() - 5 * 86400
    snap.set_value("clock", behind, path="").save()
    finding = one(run_checks(snap.path, select=("TLS",)), "TLS003", f"cert:{DEFAULT_SERVER_CERT}")
    assert finding.status == "fail"
    assert "is not yet active" in finding.message
    assert finding.evidence["clock_source"] == "the host's clock"


# --- TLS004 tls-cert-name-mismatch -------------------------------------------------------------


def test_tls004_passes_when_the_certificate_names_hostname_and_fqdn(
    host: Callable[..., Host],
) -> None:
    finding = one(host().checks(), "TLS004")
    assert finding.status == "pass"
    assert finding.evidence["covered"] == {HOST: f"SAN DNS:{HOST}", FQDN: f"SAN DNS:{FQDN}"}
    assert finding.evidence["host_names"]["hostname_from"] == "/etc/hostname"
    assert finding.evidence["host_names"]["fqdn_from"] == "/etc/hosts"


def test_tls004_fails_when_the_certificate_is_for_another_host(
    host: Callable[..., Host], pki: Pki, ca: Issued
) -> None:
    other = pki.issue(ca, "kd-other.example", dns=("kd-other.example",))
    finding = one(host(server_cert=other).checks(), "TLS004")
    assert finding.status == "fail"
    assert "covers none of this host's names (kdhost, kdhost.example.org)" in finding.message
    assert finding.evidence["san_dns"] == ["kd-other.example"]


def test_tls004_warns_when_only_the_fqdn_is_covered(
    host: Callable[..., Host], pki: Pki, ca: Issued
) -> None:
    fqdn_only = pki.issue(ca, FQDN, dns=(FQDN,))
    finding = one(host(server_cert=fqdn_only).checks(), "TLS004")
    assert finding.status == "warn"
    assert "does not cover kdhost:" in finding.message


def test_tls004_ignores_the_cn_when_the_certificate_has_dns_names(
    host: Callable[..., Host], pki: Pki, ca: Issued
) -> None:
    cn_says_fqdn = pki.issue(ca, FQDN, dns=("kd-other.example",))
    assert one(host(server_cert=cn_says_fqdn).checks(), "TLS004").status == "fail"
    cn_only = pki.issue(ca, FQDN)
    finding = one(host(server_cert=cn_only).checks(), "TLS004")
    assert finding.evidence["covered"][FQDN] == f"CN={FQDN}"


def test_tls004_fails_when_a_tls_uri_to_this_host_names_what_the_certificate_lacks(
    host: Callable[..., Host],
) -> None:
    finding = one(host().checks(uri="qemu+tls://localhost/system"), "TLS004", "tls:server")
    assert finding.status == "fail"
    assert "does not cover localhost, the host of the URI" in finding.message


@pytest.mark.parametrize(
    ("dns", "ips", "name", "covered"),
    [
        (("*.example.org",), (), "kdhost.example.org", True),
        (("*.example.org",), (), "a.kdhost.example.org", False),
        (("*.example.org",), (), "example.org", False),
        (("*.org",), (), "example.org", False),
        (("kd*.example.org",), (), "kdhost.example.org", True),
        (("KDHOST.Example.org",), (), "kdhost.example.org.", True),
        ((), ("192.0.2.10",), "192.0.2.10", True),
        ((), ("2001:db8::1",), "2001:db8:0::1", True),
        (("192.0.2.10",), (), "192.0.2.10", False),  # an IP is checked against IP SANs only
    ],
)
def test_tls004_matches_names_as_a_tls_client_does(
    pki: Pki,
    ca: Issued,
    dns: tuple[str, ...],
    ips: tuple[str, ...],
    name: str,
    covered: bool,
) -> None:
    from checks.tls import name_covered

    cert = describe_certificate(pki.issue(ca, "kd name test", dns=dns, ips=ips).cert)
    assert (name_covered(cert, name) is not None) == covered


def test_the_fqdn_is_the_canonical_name_etc_hosts_gives() -> None:
    hosts = "127.0.0.1 localhost\n# 192.0.2.9 kdhost.old.example kdhost\n" + HOSTS
    assert canonical_from_hosts(hosts, "KDHOST") == FQDN
    assert canonical_from_hosts(hosts, "kdnowhere") is None


# --- TLS005 tls-cert-not-signed-by-ca ----------------------------------------------------------


def test_tls005_passes_when_the_ca_signed_the_certificate(host: Callable[..., Host]) -> None:
    finding = one(host().checks(), "TLS005")
    assert finding.status == "pass"
    assert finding.evidence["chain"]["path"] == [f"CN={FQDN}", "CN=kd test CA"]


def test_tls005_fails_for_a_certificate_from_another_ca(
    host: Callable[..., Host], pki: Pki
) -> None:
    other_ca = pki.ca("kd other CA")
    foreign = pki.issue(other_ca, FQDN, dns=(FQDN, HOST))
    finding = one(host(server_cert=foreign).checks(), "TLS005")
    assert finding.status == "fail"
    assert "hasn't got a known issuer" in finding.message
    assert finding.evidence["issuer"] == "CN=kd other CA"
    assert finding.evidence["ca_subjects"] == ["CN=kd test CA"]


def test_tls005_fails_when_a_ca_of_the_same_name_has_another_key(
    host: Callable[..., Host], pki: Pki, server: Issued
) -> None:
    recreated = pki.ca("kd test CA")  # same name, new key: the old certificates do not verify
    finding = one(host(ca_cert=recreated).checks(), "TLS005")
    assert finding.status == "fail"
    assert "that CA's key did not sign it" in finding.message


def test_tls005_fails_when_the_ca_certificate_is_not_a_ca(
    host: Callable[..., Host], pki: Pki
) -> None:
    key = pki.new_key()
    not_ca = pki.ca("kd not a CA", key=key, is_ca=False)
    cert = pki.issue(not_ca, FQDN, dns=(FQDN, HOST))
    finding = one(host(server_cert=cert, ca_cert=not_ca).checks(), "TLS005")
    assert finding.status == "fail"
    assert "basic constraints that do not show a CA" in finding.message


def test_tls005_follows_an_intermediate_ca_in_the_certificate_file(
    host: Callable[..., Host], pki: Pki, ca: Issued
) -> None:
    intermediate = pki.ca("kd intermediate CA", issuer=ca)
    cert = pki.issue(intermediate, FQDN, dns=(FQDN, HOST))
    chained = host(server_cert=cert).put(DEFAULT_SERVER_CERT, cert.cert_pem + intermediate.cert_pem)
    finding = one(chained.checks(), "TLS005")
    assert finding.status == "pass"
    assert finding.evidence["chain"]["path"] == [
        f"CN={FQDN}",
        "CN=kd intermediate CA",
        "CN=kd test CA",
    ]


def test_tls005_fails_for_a_certificate_the_crl_revokes(
    host: Callable[..., Host], pki: Pki, ca: Issued, server: Issued
) -> None:
    revoked = host().put(DEFAULT_CRL, pki.crl(ca, [server]))
    finding = one(revoked.checks(), "TLS005")
    assert finding.status == "fail"
    assert f"is revoked by {DEFAULT_CRL}" in finding.message
    unrelated = host().put(DEFAULT_CRL, pki.crl(ca, [pki.issue(ca, "kd someone else")]))
    assert one(unrelated.checks(), "TLS005").status == "pass"


@pytest.mark.parametrize("kind", ["ec", "rsa", "ed25519"])
def test_the_signature_check_for_old_cryptography_agrees_with_cryptography(
    pki: Pki, kind: str
) -> None:
    from cryptography.exceptions import InvalidSignature

    issuer = pki.ca("kd sig CA", key=pki.new_key(kind))
    cert = pki.issue(issuer, "kd sig leaf").cert
    verify_signature(cert, issuer.cert)  # no exception: signed by it
    cert.verify_directly_issued_by(issuer.cert)
    impostor = pki.ca("kd sig CA", key=pki.new_key(kind))
    with pytest.raises(InvalidSignature):
        verify_signature(cert, impostor.cert)
    with pytest.raises(InvalidSignature):
        cert.verify_directly_issued_by(impostor.cert)


# --- TLS006 tls-key-permissions ---------------------------------------------------------------


def test_tls006_passes_for_a_root_key_of_mode_0600(host: Callable[..., Host]) -> None:
    finding = one(host().checks(), "TLS006")
    assert finding.status == "pass"
    assert finding.evidence["file"]["mode"] == "0600"
    assert finding.evidence["reader"]["known_from"] == "the system daemon runs as root"


def test_tls006_fails_for_a_key_every_user_can_read(host: Callable[..., Host]) -> None:
    readable = host()
    os.chmod(readable.file(DEFAULT_SERVER_KEY), 0o644)
    finding = one(readable.checks(), "TLS006")
    assert finding.status == "fail"
    assert "every user can read it (-rw-r--r--" in finding.message


def test_tls006_warns_for_a_key_readable_by_a_group_other_than_roots(
    host: Callable[..., Host], as_root: None
) -> None:
    shared = host()
    key = shared.file(DEFAULT_SERVER_KEY)
    os.chown(key, 0, TEST_GIDS[1])
    os.chmod(key, 0o640)
    finding = one(shared.checks(), "TLS006")
    assert finding.status == "warn"
    assert "group kdpki can read it" in finding.message


def test_tls006_warns_for_an_acl_that_lets_someone_else_read_the_key(
    host: Callable[..., Host], acl_dir: Path
) -> None:
    made = host(base=acl_dir)
    Facl.set(made.file(DEFAULT_SERVER_KEY), f"u::rw-,u:{TEST_UID}:r--,g::---,m::r--,o::---")
    finding = one(made.checks(), "TLS006")
    assert finding.status == "warn"
    assert "ACL entries let user:kdsvc read it" in finding.message
    assert finding.evidence["file"]["acl"][1] == "user:kdsvc:r--"


def _daemon_in_tree(made: Host, run_as: Callable[..., int], uid: int, gid: int) -> int:
    """A /proc copy in the tree for a libvirtd started with --listen: its status file is that
    of a real process running with those credentials and named libvirtd."""
    pid = run_as(uid, gid, (gid,), "libvirtd")
    made.put(f"/proc/{pid}/status", Path(f"/proc/{pid}/status").read_text())
    made.put(f"/proc/{pid}/cmdline", b"/usr/sbin/libvirtd\0--listen\0")
    return pid


def test_tls006_fails_when_a_non_root_daemon_cannot_read_the_key(
    host: Callable[..., Host], run_as: Callable[..., int], as_root: None
) -> None:
    made = host(listen=False)
    pid = _daemon_in_tree(made, run_as, TEST_UID, TEST_GIDS[0])
    found = made.checks()
    finding = one(found, "TLS006")
    assert finding.status == "fail"
    assert f"libvirtd (pid {pid}) cannot read it" in finding.message
    assert finding.evidence["reader"]["uid"] == TEST_UID
    assert any(
        f"libvirtd (pid {pid}) runs with --listen" in reason
        for reason in finding.evidence["tls_in_use_because"]
    )

    os.chown(made.file(DEFAULT_SERVER_KEY), TEST_UID, TEST_GIDS[0])  # the daemon's own key
    assert one(made.checks(), "TLS006").status == "pass"


# --- the key stays out of snapshots -------------------------------------------------------------


def test_a_snapshot_of_a_tls_host_holds_no_key_even_one_inside_the_certificate_file(
    host: Callable[..., Host], tmp_path: Path, server: Issued
) -> None:
    combined = host(pki=False).conf(
        listen_tls=1,
        ca_file=DEFAULT_CA,
        cert_file="/etc/libvirt/pki/server.pem",
        key_file="/etc/libvirt/pki/server.pem",
    )
    combined.put(DEFAULT_CA, host().file(DEFAULT_CA).read_bytes())
    combined.put("/etc/libvirt/pki/server.pem", server.cert_pem + server.key_pem(), 0o600)
    snap = _record(combined.root, tmp_path / "kd-snapshot")
    everything = b"".join(p.read_bytes() for p in snap.rglob("*") if p.is_file())
    key_body = [line for line in server.key_pem().splitlines() if b"-----" not in line]
    assert b"PRIVATE KEY" not in everything
    assert not any(line in everything for line in key_body)
    assert server.public_sha256.encode() in everything  # its public half is what is kept
    manifest = json.loads((snap / "manifest.json").read_text())
    pem = next(
        a
        for a in manifest["answers"]
        if a["kind"] == "file" and a.get("path") == "/etc/libvirt/pki/server.pem"
    )
    assert pem["redacted"] == ["private key"]
    replayed = run_checks(snap, select=("TLS",))
    assert one(replayed, "TLS002").status == "pass"
    assert one(replayed, "TLS005").status == "pass"


# --- TLS007-TLS009: what libvirt's own sanity check refuses --------------------------------------


def _client_host(host: Callable[..., Host], ca: Issued, client: Issued) -> Host:
    """A host whose TLS URI reads its client files from /srv/kdpki (pkipath)."""
    made = host()
    made.put("/srv/kdpki/cacert.pem", ca.cert_pem)
    made.put("/srv/kdpki/clientcert.pem", client.cert_pem)
    made.put("/srv/kdpki/clientkey.pem", client.key_pem(), 0o600)
    return made


CLIENT_URI = "qemu+tls://kdremote.example.org/system?pkipath=/srv/kdpki"
TO_HERE_URI = f"qemu+tls://{HOST}/system?pkipath=/srv/kdpki"


def test_tls007_to_tls009_skip_a_certificate_that_cannot_be_read_pointing_at_tls002(
    host: Callable[..., Host],
) -> None:
    broken = host().put(DEFAULT_SERVER_CERT, "this is not a certificate\n")
    found = broken.checks()
    for code, field in (
        ("TLS007", "basic_constraints_ca"),
        ("TLS008", "purposes"),
        ("TLS009", "key_usage"),
    ):
        finding = one(found, code)
        assert finding.status == "skip", code
        assert finding.message == (
            f"the server certificate {DEFAULT_SERVER_CERT} could not be read (see TLS002)"
        )
        assert finding.evidence["cert_file"] == DEFAULT_SERVER_CERT
        assert finding.evidence[field] is None and finding.evidence["subject"] is None
    assert one(found, "TLS002").status == "fail"


def test_tls007_passes_for_a_server_certificate_with_ca_false(host: Callable[..., Host]) -> None:
    finding = one(host().checks(), "TLS007")
    assert finding.status == "pass"
    assert finding.message.endswith("is not a CA (CA:FALSE)")


def test_tls007_fails_for_a_server_certificate_marked_as_ca_in_libvirts_words(
    host: Callable[..., Host], pki: Pki, ca: Issued
) -> None:
    marked = pki.issue(ca, FQDN, dns=(FQDN, HOST), is_ca=True)
    found = host(server_cert=marked).checks()
    finding = one(found, "TLS007")
    assert finding.status == "fail"
    assert finding.message.startswith(
        f"The certificate {DEFAULT_SERVER_CERT} basic constraints show a CA, but we need one "
        "for a server"
    )
    assert "Unable to initialize network sockets" in finding.message
    assert finding.evidence["basic_constraints_ca"] is True
    assert one(found, "TLS005").status == "pass"  # the CA did sign it: only TLS007 fails


def test_tls007_only_warns_when_the_sanity_check_is_off(
    host: Callable[..., Host], pki: Pki, ca: Issued
) -> None:
    marked = pki.issue(ca, FQDN, dns=(FQDN, HOST), is_ca=True)
    made = host(server_cert=marked).conf(listen_tls=1, tls_no_sanity_certificate=1)
    finding = one(made.checks(), "TLS007")
    assert finding.status == "warn"
    assert "tls_no_sanity_certificate = 1" in finding.message


def test_tls007_fails_for_a_client_certificate_marked_as_ca(
    host: Callable[..., Host], pki: Pki, ca: Issued
) -> None:
    client = pki.issue(ca, "kd client", purpose="client", is_ca=True)
    found = _client_host(host, ca, client).checks(uri=CLIENT_URI)
    finding = one(found, "TLS007", "tls:client")
    assert finding.status == "fail"
    assert finding.message.startswith(
        "The certificate /srv/kdpki/clientcert.pem basic constraints show a CA, but we need "
        "one for a client"
    )
    assert one(found, "TLS007", "tls:server").status == "pass"


def test_tls008_passes_for_a_server_certificate_with_server_auth(
    host: Callable[..., Host],
) -> None:
    finding = one(host().checks(), "TLS008")
    assert finding.status == "pass"
    assert "(purposes: serverAuth)" in finding.message


def test_tls008_fails_for_a_client_certificate_installed_as_the_servers(
    host: Callable[..., Host], pki: Pki, ca: Issued
) -> None:
    wrong = pki.issue(ca, FQDN, dns=(FQDN, HOST), purposes=("client",), purposes_critical=True)
    finding = one(host(server_cert=wrong).checks(), "TLS008")
    assert finding.status == "fail"
    assert finding.message.startswith(
        f"Certificate {DEFAULT_SERVER_CERT} purpose does not allow use for with a TLS server"
    )
    assert "without serverAuth" in finding.message
    assert finding.evidence["purposes"] == ["clientAuth"]


def test_tls008_warns_when_the_purpose_extension_is_not_critical(
    host: Callable[..., Host], pki: Pki, ca: Issued
) -> None:
    wrong = pki.issue(ca, FQDN, dns=(FQDN, HOST), purposes=("client",))
    finding = one(host(server_cert=wrong).checks(), "TLS008")
    assert finding.status == "warn"
    assert "libvirt only logs this as a warning" in finding.message


@pytest.mark.parametrize(
    ("purposes", "status"),
    [
        pytest.param(("any",), "fail", id="anyExtendedKeyUsage-alone-counts-for-neither"),
        pytest.param(("1.3.6.1.5.5.7.3.3",), "pass", id="another-purpose-counts-for-both"),
        pytest.param(("client", "server"), "pass", id="both"),
        pytest.param((), "pass", id="no-extension"),
    ],
)
def test_tls008_reads_purposes_as_libvirt_does(
    host: Callable[..., Host], pki: Pki, ca: Issued, purposes: tuple[str, ...], status: str
) -> None:
    cert = pki.issue(ca, FQDN, dns=(FQDN, HOST), purposes=purposes, purposes_critical=True)
    assert one(host(server_cert=cert).checks(), "TLS008").status == status


def test_tls008_fails_for_a_server_certificate_used_as_the_client_certificate(
    host: Callable[..., Host], pki: Pki, ca: Issued
) -> None:
    wrong = pki.issue(ca, "kd client", purposes=("server",), purposes_critical=True)
    finding = one(_client_host(host, ca, wrong).checks(uri=CLIENT_URI), "TLS008", "tls:client")
    assert finding.status == "fail"
    assert "purpose does not allow use for with a TLS client" in finding.message


def test_tls009_passes_with_digital_signature_and_key_encipherment(
    host: Callable[..., Host],
) -> None:
    finding = one(host().checks(), "TLS009")
    assert finding.status == "pass"
    assert finding.evidence["key_usage"] == ["digital_signature", "key_encipherment"]


@pytest.mark.parametrize("critical", [True, False], ids=["critical", "not-critical"])
def test_tls009_fails_without_digital_signature_critical_or_not(
    host: Callable[..., Host], pki: Pki, ca: Issued, critical: bool
) -> None:
    """Critical: libvirt refuses it at start; not critical: libvirtd starts, and every
    handshake fails (seen in the lab: "No supported cipher suites have been found.")."""
    cert = pki.issue(
        ca, FQDN, dns=(FQDN, HOST), usage=("key_encipherment",), usage_critical=critical
    )
    finding = one(host(server_cert=cert).checks(), "TLS009")
    assert finding.status == "fail"
    assert finding.message.startswith(
        f"Certificate {DEFAULT_SERVER_CERT} usage does not permit digital signature"
    )
    said = "Unable to initialize network sockets" if critical else "No supported cipher suites"
    assert said in finding.message


def test_tls009_fails_for_an_rsa_key_without_key_encipherment(
    host: Callable[..., Host], pki: Pki, ca: Issued
) -> None:
    cert = pki.issue(
        ca, FQDN, dns=(FQDN, HOST), usage=("digital_signature",), key=pki.new_key("rsa")
    )
    finding = one(host(server_cert=cert).checks(), "TLS009")
    assert finding.status == "fail"
    assert finding.message.startswith(
        f"Certificate {DEFAULT_SERVER_CERT} usage does not permit key encipherment"
    )


def test_tls009_warns_for_an_ec_key_without_key_encipherment_or_a_non_critical_extension(
    host: Callable[..., Host], pki: Pki, ca: Issued
) -> None:
    ec = pki.issue(ca, FQDN, dns=(FQDN, HOST), usage=("digital_signature",))
    finding = one(host(server_cert=ec).checks(), "TLS009")
    assert finding.status == "warn"
    assert "libvirt releases such as 9.0 refuse it" in finding.message
    assert "RFC 8813" in finding.message
    rsa = pki.issue(
        ca,
        FQDN,
        dns=(FQDN, HOST),
        usage=("digital_signature",),
        usage_critical=False,
        key=pki.new_key("rsa"),
    )
    finding = one(host(server_cert=rsa).checks(), "TLS009")
    assert finding.status == "warn"
    assert "not critical" in finding.message


def test_tls009_passes_a_certificate_without_key_usage(
    host: Callable[..., Host], pki: Pki, ca: Issued
) -> None:
    cert = pki.issue(ca, FQDN, dns=(FQDN, HOST), usage=None)
    finding = one(host(server_cert=cert).checks(), "TLS009")
    assert finding.status == "pass"
    assert "no key usage extension" in finding.message


# --- TLS010 tls-client-dn-not-allowed -----------------------------------------------------------

CLIENT_NAME = (("C", "GB"), ("O", "kd lab"), ("CN", "kd client"))
CLIENT_DN = "C=GB,O=kd lab,CN=kd client"


def test_the_dn_is_the_subject_in_certificate_order_as_gnutls_prints_it(
    pki: Pki, ca: Issued
) -> None:
    client = pki.issue(ca, "kd client", purpose="client", subject=CLIENT_NAME)
    assert describe_certificate(client.cert).dn == CLIENT_DN
    odd = pki.issue(ca, "x", subject=(("O", 'kd, "lab" <1>; a+b'), ("CN", "x")))
    assert describe_certificate(odd.cert).dn == 'O=kd\\, \\"lab\\" \\<1\\>\\; a\\+b,CN=x'


@pytest.mark.parametrize(
    ("pattern", "matches"),
    [
        (CLIENT_DN, True),
        ("C=GB,O=kd lab,CN=*", True),
        ("C=GB,O=kd la?,CN=kd client", True),
        ("*", True),
        ("C=GB,O=kd lab,CN=kd", False),  # the whole DN must match
        ("CN=kd client,O=kd lab,C=GB", False),  # RFC 4514 order
        ("C=GB,O=kd [l]ab,CN=kd client", False),  # no character classes
    ],
)
def test_dn_patterns_match_as_g_pattern_match_simple(pattern: str, matches: bool) -> None:
    assert dn_pattern_matches(pattern, CLIENT_DN) is matches


def test_tls010_passes_when_no_list_is_set(host: Callable[..., Host]) -> None:
    finding = one(host().checks(), "TLS010")
    assert finding.status == "pass"
    assert "tls_allowed_dn_list is not set" in finding.message


def test_tls010_passes_when_an_entry_matches_the_client_certificate(
    host: Callable[..., Host], pki: Pki, ca: Issued
) -> None:
    client = pki.issue(ca, "kd client", purpose="client", subject=CLIENT_NAME)
    made = _client_host(host, ca, client)
    made.conf(listen_tls=1, tls_allowed_dn_list=["C=GB,O=other,CN=*", "C=GB,O=kd lab,CN=*"])
    finding = one(made.checks(uri=TO_HERE_URI), "TLS010")
    assert finding.status == "pass"
    assert finding.evidence["matched_by"] == "C=GB,O=kd lab,CN=*"
    assert finding.evidence["client_dn"] == CLIENT_DN


def test_tls010_fails_in_libvirts_words_when_the_list_refuses_the_client_of_this_host(
    host: Callable[..., Host], pki: Pki, ca: Issued
) -> None:
    client = pki.issue(ca, "kd client", purpose="client", subject=CLIENT_NAME)
    made = _client_host(host, ca, client)
    made.conf(listen_tls=1, tls_allowed_dn_list=["C=GB,O=kd ops,CN=*"])
    finding = one(made.checks(uri=TO_HERE_URI), "TLS010")
    assert finding.status == "fail"
    assert finding.message.startswith(
        "Client's Distinguished Name is not on the list of allowed clients (tls_allowed_dn_list)"
    )
    assert CLIENT_DN in finding.message
    assert finding.evidence["client_uri_to_this_host"] is True
    # The same certificate, used for another host: this host's list only warns.
    assert one(made.checks(uri=CLIENT_URI), "TLS010").status == "warn"


def test_tls010_names_an_entry_written_in_rfc4514_order(
    host: Callable[..., Host], pki: Pki, ca: Issued
) -> None:
    client = pki.issue(ca, "kd client", purpose="client", subject=CLIENT_NAME)
    made = _client_host(host, ca, client)
    made.conf(listen_tls=1, tls_allowed_dn_list=["CN=kd client,O=kd lab,C=GB"])
    finding = one(made.checks(uri=TO_HERE_URI), "TLS010")
    assert finding.status == "fail"
    assert "is written in RFC 4514 order" in finding.message


def test_tls010_fails_for_an_empty_list_and_warns_when_verification_is_off(
    host: Callable[..., Host],
) -> None:
    empty = host().conf(listen_tls=1, tls_allowed_dn_list=[])
    finding = one(empty.checks(), "TLS010")
    assert finding.status == "fail"
    assert "tls_allowed_dn_list is empty, so every client is refused" in finding.message
    unenforced = host().conf(
        listen_tls=1, tls_allowed_dn_list=["C=GB,*"], tls_no_verify_certificate=1
    )
    finding = one(unenforced.checks(), "TLS010")
    assert finding.status == "warn"
    assert "keeps it from being enforced" in finding.message
