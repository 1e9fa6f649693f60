"""A real libvirtd listening for TLS on loopback, in a private mount namespace (tests/kdlab.py),
with certificates made in the test: kvmdoctor's TLS verdict must agree with what libvirt itself
does, the daemon when it starts and `virsh -c qemu+tls://localhost:PORT/system?pkipath=DIR`
when it connects. kvmdoctor reads the same files through `--root` on the lab's tree (where
/etc/hostname says "localhost"), and once live from inside the namespace.

The machine's own libvirtd is never touched: the lab daemon has its own /run/libvirt, its own
copies of /etc/libvirt and /var/lib/libvirt, and listens on a free port of 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from kdlab import DaemonStart, Issued, LibvirtLab, Pki, free_port, leftover_daemons, write_file
from kdtest import ROOT, require

pytestmark = pytest.mark.integration
TLS_CODES = tuple(f"TLS{n:03d}" for n in range(1, 11))
PKI = "/etc/libvirt/pki"  # inside the lab's private /etc/libvirt, so the tree holds it too
CA_FILE, CERT_FILE, KEY_FILE = f"{PKI}/cacert.pem", f"{PKI}/servercert.pem", f"{PKI}/serverkey.pem"
REFUSED_BY_NAME = "authentication failed: Failed to verify peer's certificate"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LibvirtLab]:
    require(os.geteuid() == 0, "root (a mount namespace and a second libvirtd)")
    require(shutil.which("libvirtd") is not None, "libvirtd (libvirt-daemon-system, LAB.md)")
    require(shutil.which("virsh") is not None, "virsh (libvirt-clients, LAB.md)")
    require(
        all(shutil.which(t) for t in ("unshare", "nsenter", "mount")),
        "unshare, nsenter and mount (util-linux)",
    )
    with LibvirtLab(tmp_path) as opened:
        yield opened


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="module")
def ca(pki: Pki) -> Issued:
    return pki.ca("kd lab CA")


def machine_names() -> list[str]:
    """The names kvmdoctor finds on this machine when it runs live: uname and hostname --fqdn."""
    fqdn = subprocess.run(["hostname", "--fqdn"], capture_output=True, text=True, check=False)
    names = [os.uname().nodename]
    if fqdn.returncode == 0 and fqdn.stdout.strip():
        names.append(fqdn.stdout.strip())
    return names


@pytest.fixture(scope="module")
def good_server(pki: Pki, ca: Issued) -> Issued:
    return pki.issue(ca, "localhost", dns=("localhost", *machine_names()), ips=("127.0.0.1",))


class TlsLab:
    """The lab set up for TLS: server files in its /etc/libvirt/pki, a client pkipath."""

    def __init__(self, lab: LibvirtLab, pki: Pki, ca: Issued) -> None:
        self.lab = lab
        self.port = free_port()
        self.client_dir = lab.home / "client"
        client = pki.issue(ca, "kd lab client", purpose="client")
        write_file(self.client_dir / "cacert.pem", ca.cert_pem)
        write_file(self.client_dir / "clientcert.pem", client.cert_pem)
        write_file(self.client_dir / "clientkey.pem", client.key_pem(), 0o600)
        # What kvmdoctor --root reads besides /etc/libvirt: this "host" is called localhost.
        write_file(lab.tree / "etc/hostname", "localhost\n")
        write_file(lab.tree / "etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n")
        write_file(lab.tree / "etc/passwd", "root:x:0:0:root:/root:/bin/bash\n")
        write_file(lab.tree / "etc/group", "root:x:0:\n")

    def install(
        self,
        ca: Optional[Issued],
        server: Issued,
        *,
        key: Optional[Issued] = None,
        sanity: bool = True,
    ) -> None:
        if ca is not None:
            write_file(self.lab.path(CA_FILE), ca.cert_pem)
        write_file(self.lab.path(CERT_FILE), server.cert_pem)
        write_file(self.lab.path(KEY_FILE), (key or server).key_pem(), 0o600)
        settings: dict[str, Any] = {
            "listen_tls": 1,
            "listen_tcp": 0,
            "listen_addr": "127.0.0.1",
            "tls_port": str(self.port),
            "ca_file": CA_FILE,
            "cert_file": CERT_FILE,
            "key_file": KEY_FILE,
        }
        if not sanity:
            settings["tls_no_sanity_certificate"] = 1
        self.lab.configure("libvirtd.conf", **settings)

    def start(self) -> DaemonStart:
        return self.lab.start_libvirtd("--listen")

    @property
    def uri(self) -> str:
        return f"qemu+tls://localhost:{self.port}/system?pkipath={self.client_dir}"

    def virsh(self) -> subprocess.CompletedProcess[str]:
        return self.lab.run(["virsh", "-c", self.uri, "version"], timeout=60)

    def kvmdoctor(
        self, *, live: bool = False, uri: Optional[str] = None
    ) -> dict[str, list[dict[str, Any]]]:
        """kvmdoctor's TLS findings by code: on the lab's tree, or live inside the lab."""
        argv = [sys.executable, "-m", "doctor", "run", "--select", "TLS", "--format", "json"]
        if uri is not None:
            argv += ["--uri", uri]
        if live:
            done = self.lab.run(argv, timeout=120, cwd=ROOT)
        else:
            argv[4:4] = ["--root", str(self.lab.tree)]
            done = subprocess.run(
                argv, capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
            )
        assert done.returncode in (0, 1), done.stderr
        report = json.loads(done.stdout)
        return {c["code"]: c["findings"] for c in report["checks"]}


def failing(found: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    return {
        code: [f["message"] for f in findings if f["status"] in ("fail", "error")]
        for code, findings in found.items()
        if any(f["status"] in ("fail", "error") for f in findings)
    }


@pytest.fixture
def tls_lab(lab: LibvirtLab, pki: Pki, ca: Issued) -> TlsLab:
    return TlsLab(lab, pki, ca)


def test_virsh_connects_over_tls_and_every_tls_check_passes(
    tls_lab: TlsLab, ca: Issued, good_server: Issued
) -> None:
    tls_lab.install(ca, good_server)
    started = tls_lab.start()
    assert started.ok, started.stderr + "\n".join(started.errors())
    connected = tls_lab.virsh()
    assert connected.returncode == 0, connected.stderr
    assert "Running hypervisor: QEMU" in connected.stdout

    found = tls_lab.kvmdoctor()
    assert failing(found) == {}
    for code in TLS_CODES:
        assert {f["status"] for f in found[code]} == {"pass"}, (code, found[code])
    reasons = found["TLS001"][0]["evidence"]["tls_in_use_because"]
    assert "ca_file, cert_file, key_file set in /etc/libvirt/libvirtd.conf" in reasons

    # Live, from inside the lab: the running daemon and its --listen are seen in /proc.
    live = tls_lab.kvmdoctor(live=True)
    assert failing(live) == {}
    assert {f["status"] for code in TLS_CODES for f in live[code]} == {"pass"}
    assert (
        f"libvirtd (pid {started.pid}) runs with --listen and listen_tls = 1 in "
        "/etc/libvirt/libvirtd.conf" in live["TLS001"][0]["evidence"]["tls_in_use_because"]
    )


def test_a_certificate_for_another_name_is_refused_by_virsh_and_fails_tls004(
    tls_lab: TlsLab, pki: Pki, ca: Issued
) -> None:
    other = pki.issue(ca, "kd-other.example", dns=("kd-other.example",))
    tls_lab.install(ca, other)
    started = tls_lab.start()
    assert started.ok, started.errors()  # the daemon cannot know what names clients use
    refused = tls_lab.virsh()
    assert refused.returncode != 0
    assert "owner does not match the hostname localhost" in refused.stderr
    assert REFUSED_BY_NAME in refused.stderr

    found = tls_lab.kvmdoctor()
    assert set(failing(found)) == {"TLS004"}
    (message,) = failing(found)["TLS004"]
    assert "covers none of this host's names (localhost)" in message
    assert "owner does not match the hostname" in message


def test_an_expired_certificate_stops_libvirtd_and_fails_tls003_in_the_same_words(
    tls_lab: TlsLab, pki: Pki, ca: Issued
) -> None:
    expired = pki.issue(ca, "localhost", dns=("localhost",), valid=(-90, -1))
    tls_lab.install(ca, expired)
    started = tls_lab.start()
    assert not started.ok
    assert "Unable to initialize network sockets" in started.stderr
    said = f"The server certificate {CERT_FILE} has expired"
    assert any(said in line for line in started.errors()), started.log
    refused = tls_lab.virsh()
    assert refused.returncode != 0
    assert f"unable to connect to server at 'localhost:{tls_lab.port}': Connection refused" in (
        refused.stderr
    )

    found = tls_lab.kvmdoctor()
    assert set(failing(found)) == {"TLS003"}
    (message,) = failing(found)["TLS003"]
    assert message.startswith(said)


def test_with_sanity_checks_off_virsh_itself_refuses_the_expired_certificate(
    tls_lab: TlsLab, pki: Pki, ca: Issued
) -> None:
    expired = pki.issue(ca, "localhost", dns=("localhost",), valid=(-90, -1))
    tls_lab.install(ca, expired, sanity=False)
    started = tls_lab.start()
    assert started.ok, started.errors()
    refused = tls_lab.virsh()
    assert refused.returncode != 0
    assert "Certificate failed validation: The certificate is not trusted." in refused.stderr
    assert REFUSED_BY_NAME in refused.stderr

    found = tls_lab.kvmdoctor()
    assert set(failing(found)) == {"TLS003"}


@pytest.mark.parametrize(
    ("case", "libvirt_says", "code", "kvmdoctor_says"),
    [
        pytest.param(
            "not yet valid",
            f"The server certificate {CERT_FILE} is not yet active",
            "TLS003",
            f"The server certificate {CERT_FILE} is not yet active",
            id="not-yet-valid",
        ),
        pytest.param(
            "issued by another CA",
            f"Our own certificate {CERT_FILE} failed validation against {CA_FILE}: "
            "The certificate hasn't got a known issuer.",
            "TLS005",
            "the certificate hasn't got a known issuer",
            id="other-ca",
        ),
        pytest.param(
            "key of another certificate",
            f"Unable to set x509 key and certificate: {KEY_FILE}, {CERT_FILE}: "
            "The certificate and the given key do not match.",
            "TLS002",
            "The certificate and the given key do not match.",
            id="key-mismatch",
        ),
        pytest.param(
            "CA missing",
            f"Cannot read CA certificate '{CA_FILE}': No such file or directory",
            "TLS001",
            f"Cannot read CA certificate '{CA_FILE}': No such file or directory",
            id="ca-missing",
        ),
    ],
)
def test_libvirtd_refuses_to_start_where_kvmdoctor_fails_one_tls_check(
    tls_lab: TlsLab,
    pki: Pki,
    ca: Issued,
    good_server: Issued,
    case: str,
    libvirt_says: str,
    code: str,
    kvmdoctor_says: str,
) -> None:
    if case == "not yet valid":
        tls_lab.install(ca, pki.issue(ca, "localhost", dns=("localhost",), valid=(5, 100)))
    elif case == "issued by another CA":
        other_ca = pki.ca("kd other lab CA")
        tls_lab.install(ca, pki.issue(other_ca, "localhost", dns=("localhost",)))
    elif case == "key of another certificate":
        tls_lab.install(ca, good_server, key=pki.issue(ca, "kd stray"))
    else:
        tls_lab.install(None, good_server)
    started = tls_lab.start()
    assert not started.ok, f"libvirtd started with: {case}"
    assert any(libvirt_says in line for line in started.errors()), started.log

    found = failing(tls_lab.kvmdoctor())
    assert set(found) == {code}, found
    assert any(kvmdoctor_says in message for message in found[code]), found[code]


def test_the_lab_leaves_the_machines_own_libvirtd_alone(
    tmp_path: Path, pki: Pki, ca: Issued, good_server: Issued
) -> None:
    require(os.geteuid() == 0, "root (a mount namespace and a second libvirtd)")
    main_sock = "/run/libvirt/libvirt-sock"
    require(os.path.exists(main_sock), "the machine's own libvirtd running (LAB.md: libvirtd -d)")
    before = os.stat(main_sock).st_ino
    with LibvirtLab(tmp_path) as lab:
        assert lab.run(["ls", "-A", "/run/libvirt"]).stdout == ""  # empty inside
        tls = TlsLab(lab, pki, ca)
        tls.install(ca, good_server)
        started = tls.start()
        assert started.ok and started.pid is not None
        inside = f"/proc/{started.pid}/root/run/libvirt/libvirt-sock"
        assert os.stat(inside).st_ino != os.stat(main_sock).st_ino
        home, pid = lab.home, started.pid
        assert pid in leftover_daemons()  # what the session-end sweep would stop
    assert os.stat(main_sock).st_ino == before
    main = subprocess.run(
        ["virsh", "-c", "qemu:///system", "version"], capture_output=True, text=True, check=False
    )
    assert main.returncode == 0, main.stderr
    assert not home.exists()
    assert pid not in leftover_daemons()


# --- what libvirt's own sanity check refuses (TLS007-TLS009), and tls_allowed_dn_list (TLS010) --

# Inside the lab's private /etc/libvirt, so the lab's virsh and `kvmdoctor --root lab.tree`
# read the same client files through the same pkipath.
CLIENT_PKI = "/etc/libvirt/kdclient"
LAB_CLIENT_DN = "C=GB,O=kd lab,CN=kd lab client"


def _install_client(tls_lab: TlsLab, ca: Issued, client: Issued) -> str:
    """The client's files at CLIENT_PKI; returns the TLS URI that uses them."""
    lab = tls_lab.lab
    write_file(lab.path(f"{CLIENT_PKI}/cacert.pem"), ca.cert_pem)
    write_file(lab.path(f"{CLIENT_PKI}/clientcert.pem"), client.cert_pem)
    write_file(lab.path(f"{CLIENT_PKI}/clientkey.pem"), client.key_pem(), 0o600)
    return f"qemu+tls://localhost:{tls_lab.port}/system?pkipath={CLIENT_PKI}"


def _virsh(tls_lab: TlsLab, uri: str) -> subprocess.CompletedProcess[str]:
    return tls_lab.lab.run(["virsh", "-c", uri, "version"], timeout=60)


@pytest.mark.parametrize(
    ("case", "libvirt_says", "code"),
    [
        pytest.param(
            "marked as CA",
            f"The certificate {CERT_FILE} basic constraints show a CA, but we need one for a "
            "server",
            "TLS007",
            id="ca-true",
        ),
        pytest.param(
            "client purpose only",
            f"Certificate {CERT_FILE} purpose does not allow use for with a TLS server",
            "TLS008",
            id="client-purpose",
        ),
        pytest.param(
            "no digitalSignature",
            f"Certificate {CERT_FILE} usage does not permit digital signature",
            "TLS009",
            id="no-digital-signature",
        ),
        pytest.param(
            "RSA without keyEncipherment",
            f"Certificate {CERT_FILE} usage does not permit key encipherment",
            "TLS009",
            id="rsa-no-key-encipherment",
        ),
    ],
)
def test_libvirtd_refuses_the_server_certificate_where_a_new_tls_check_fails(
    tls_lab: TlsLab, pki: Pki, ca: Issued, case: str, libvirt_says: str, code: str
) -> None:
    names = {"dns": ("localhost", *machine_names()), "ips": ("127.0.0.1",)}
    if case == "marked as CA":
        server = pki.issue(ca, "localhost", **names, is_ca=True)
    elif case == "client purpose only":
        server = pki.issue(ca, "localhost", **names, purposes=("client",), purposes_critical=True)
    elif case == "no digitalSignature":
        server = pki.issue(ca, "localhost", **names, usage=("key_encipherment",))
    else:
        server = pki.issue(
            ca, "localhost", **names, usage=("digital_signature",), key=pki.new_key("rsa")
        )
    tls_lab.install(ca, server)
    started = tls_lab.start()
    assert not started.ok, f"libvirtd started with: {case}"
    assert "Unable to initialize network sockets" in started.stderr
    assert any(libvirt_says in line for line in started.errors()), started.log
    refused = tls_lab.virsh()
    assert f"unable to connect to server at 'localhost:{tls_lab.port}': Connection refused" in (
        refused.stderr
    )

    found = failing(tls_lab.kvmdoctor())
    assert set(found) == {code}, found
    (message,) = found[code]
    assert message.startswith(libvirt_says)


def test_an_ec_server_key_without_key_encipherment_stops_libvirt_9_and_tls009_warns(
    tls_lab: TlsLab, pki: Pki, ca: Issued
) -> None:
    """libvirt 9.0 (Debian 12) refuses an EC certificate whose critical key usage lacks
    keyEncipherment; newer releases accept it (RFC 8813), so kvmdoctor warns and says so."""
    server = pki.issue(
        ca, "localhost", dns=("localhost", *machine_names()), usage=("digital_signature",)
    )
    tls_lab.install(ca, server)
    started = tls_lab.start()
    said = f"Certificate {CERT_FILE} usage does not permit key encipherment"
    version = subprocess.run(["libvirtd", "--version"], capture_output=True, text=True).stdout
    if " 9." in version or " 8." in version:
        assert not started.ok
        assert any(said in line for line in started.errors()), started.log
    found = tls_lab.kvmdoctor()
    assert failing(found) == {}
    (tls009,) = found["TLS009"]
    assert tls009["status"] == "warn"
    assert tls009["message"].startswith(said)
    assert "libvirt releases such as 9.0 refuse it" in tls009["message"]


def test_a_server_key_usage_that_is_not_critical_lets_libvirtd_start_but_no_handshake_succeeds(
    tls_lab: TlsLab, pki: Pki, ca: Issued
) -> None:
    server = pki.issue(
        ca,
        "localhost",
        dns=("localhost", *machine_names()),
        usage=("key_encipherment",),
        usage_critical=False,
    )
    tls_lab.install(ca, server)
    started = tls_lab.start()
    assert started.ok, started.errors()
    refused = tls_lab.virsh()
    assert refused.returncode != 0
    assert "TLS handshake failed" in refused.stderr
    assert "No supported cipher suites have been found." in tls_lab.lab.log()

    found = failing(tls_lab.kvmdoctor())
    assert set(found) == {"TLS009"}, found
    assert "No supported cipher suites" in found["TLS009"][0]


@pytest.mark.parametrize(
    ("case", "virsh_says", "code"),
    [
        pytest.param(
            "marked as CA",
            f"The certificate {CLIENT_PKI}/clientcert.pem basic constraints show a CA, but we "
            "need one for a client",
            "TLS007",
            id="ca-true",
        ),
        pytest.param(
            "server purpose only",
            f"Certificate {CLIENT_PKI}/clientcert.pem purpose does not allow use for with a "
            "TLS client",
            "TLS008",
            id="server-purpose",
        ),
        pytest.param(
            "no digitalSignature",
            f"Certificate {CLIENT_PKI}/clientcert.pem usage does not permit digital signature",
            "TLS009",
            id="no-digital-signature",
        ),
    ],
)
def test_virsh_refuses_its_own_client_certificate_where_a_new_tls_check_fails(
    tls_lab: TlsLab,
    pki: Pki,
    ca: Issued,
    good_server: Issued,
    case: str,
    virsh_says: str,
    code: str,
) -> None:
    if case == "marked as CA":
        client = pki.issue(ca, "kd lab client", purpose="client", is_ca=True)
    elif case == "server purpose only":
        client = pki.issue(ca, "kd lab client", purposes=("server",), purposes_critical=True)
    else:
        client = pki.issue(ca, "kd lab client", purpose="client", usage=("key_encipherment",))
    tls_lab.install(ca, good_server)
    uri = _install_client(tls_lab, ca, client)
    started = tls_lab.start()
    assert started.ok, started.errors()
    refused = _virsh(tls_lab, uri)
    assert refused.returncode != 0
    assert f"error: {virsh_says}" in refused.stderr

    found = failing(tls_lab.kvmdoctor(uri=uri))
    assert set(found) == {code}, found
    (message,) = found[code]
    assert message.startswith(virsh_says)


def test_a_client_certificate_without_digital_signature_is_never_sent_and_tls009_fails(
    tls_lab: TlsLab, pki: Pki, ca: Issued, good_server: Issued
) -> None:
    """Key usage not critical: virsh only warns about its own certificate, GnuTLS will not
    sign with it, so the daemon sees no client certificate and drops the connection."""
    client = pki.issue(
        ca,
        "kd lab client",
        purpose="client",
        usage=("key_encipherment",),
        usage_critical=False,
    )
    tls_lab.install(ca, good_server)
    uri = _install_client(tls_lab, ca, client)
    started = tls_lab.start()
    assert started.ok, started.errors()
    refused = _virsh(tls_lab, uri)
    assert refused.returncode != 0
    assert f"{CLIENT_PKI}/clientcert.pem usage does not permit digital signature" in (
        refused.stderr
    )
    assert "Unable to read TLS confirmation: Input/output error" in refused.stderr
    assert "Unable to verify TLS peer: No certificate was found." in tls_lab.lab.log()

    found = failing(tls_lab.kvmdoctor(uri=uri))
    assert set(found) == {"TLS009"}, found
    (message,) = found["TLS009"]
    assert "usage does not permit digital signature" in message
    assert "No certificate was found." in message


def _lab_client(pki: Pki, ca: Issued) -> Issued:
    return pki.issue(
        ca,
        "kd lab client",
        purpose="client",
        subject=(("C", "GB"), ("O", "kd lab"), ("CN", "kd lab client")),
    )


@pytest.mark.parametrize(
    "entries",
    [
        pytest.param(["C=GB,O=kd ops,CN=*"], id="another-organisation"),
        pytest.param(["CN=kd lab client,O=kd lab,C=GB"], id="rfc4514-order"),
        pytest.param([], id="empty"),
    ],
)
def test_tls_allowed_dn_list_refuses_the_client_and_tls010_fails(
    tls_lab: TlsLab, pki: Pki, ca: Issued, good_server: Issued, entries: list[str]
) -> None:
    tls_lab.install(ca, good_server)
    tls_lab.lab.configure("libvirtd.conf", tls_allowed_dn_list=entries)
    client = _lab_client(pki, ca)
    uri = _install_client(tls_lab, ca, client)
    started = tls_lab.start()
    assert started.ok, started.errors()
    refused = _virsh(tls_lab, uri)
    assert refused.returncode != 0
    assert "Unable to read TLS confirmation: Input/output error" in refused.stderr
    log = tls_lab.lab.log()
    assert (
        "Client's Distinguished Name is not on the list of allowed clients "
        "(tls_allowed_dn_list)" in log
    )
    assert "authentication failed: Failed to verify peer's certificate" in log

    found = tls_lab.kvmdoctor(uri=uri)
    assert set(failing(found)) == {"TLS010"}, failing(found)
    (finding,) = found["TLS010"]
    assert (
        "Client's Distinguished Name is not on the list of allowed clients (tls_allowed_dn_list)"
        in finding["message"]
    )
    if not entries:
        assert "tls_allowed_dn_list is empty, so every client is refused" in finding["message"]
    # The DN kvmdoctor compared is the one libvirt's own tool prints for the certificate.
    query = subprocess.run(
        ["virt-pki-query-dn", str(tls_lab.lab.path(f"{CLIENT_PKI}/clientcert.pem"))],
        capture_output=True,
        text=True,
        check=True,
    )
    assert finding["evidence"]["client_dn"] == query.stdout.strip() == LAB_CLIENT_DN
    if entries and entries[0].startswith("CN="):
        assert "is written in RFC 4514 order" in finding["message"]


def test_a_matching_tls_allowed_dn_list_lets_virsh_in_and_tls010_passes(
    tls_lab: TlsLab, pki: Pki, ca: Issued, good_server: Issued
) -> None:
    tls_lab.install(ca, good_server)
    tls_lab.lab.configure("libvirtd.conf", tls_allowed_dn_list=["C=GB,O=kd lab,CN=*"])
    uri = _install_client(tls_lab, ca, _lab_client(pki, ca))
    started = tls_lab.start()
    assert started.ok, started.errors()
    connected = _virsh(tls_lab, uri)
    assert connected.returncode == 0, connected.stderr

    found = tls_lab.kvmdoctor(uri=uri)
    assert failing(found) == {}
    (finding,) = found["TLS010"]
    assert finding["status"] == "pass"
    assert finding["evidence"]["matched_by"] == "C=GB,O=kd lab,CN=*"
