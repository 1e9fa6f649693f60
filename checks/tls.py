"""TLS checks: the certificates and keys libvirt's daemons and clients use for remote access.

Every check here looks only at the credentials in use (doctor/facts/tls.py decides which:
a daemon that listens for TLS, a TLS URI, certificates configured or present). When TLS is not
in use at all, each check reports one `pass` that says so and lists what was looked at: none
of these problems can occur without TLS, and an operator should not have to wonder about six
skipped checks on every host that never set TLS up (the same reasoning as KVM004 passing on
bare metal). `skip` keeps its meaning, "could not be examined": it is what a check reports
when whether TLS is in use cannot be told (a snapshot recorded without the files it needs).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from typing import Any, Optional

from doctor.facts.accounts import Accounts, access, has_extended_acl, mode_string
from doctor.facts.libvirt import LibvirtUri
from doctor.facts.tls import (
    DEFAULT_CA,
    CertFile,
    CertInfo,
    Endpoint,
    HostClock,
    HostNames,
    Reader,
    TlsState,
    dn_pattern_matches,
    iso_time,
)
from doctor.model import Finding, Status
from doctor.registry import check
from doctor.sources.base import StatInfo

EXPIRY_WARNING_DAYS = 30
DAY = 86400.0
LOCAL_NAMES = ("localhost", "localhost.localdomain", "127.0.0.1", "::1")
NO_ACCOUNTS = Accounts((), ())


def _not_in_use(tls: TlsState) -> Finding:
    if tls.undetermined:
        return Finding(
            "skip",
            "whether TLS is in use could not be told: "
            + "; ".join(tls.undetermined[:3])
            + (f" (and {len(tls.undetermined) - 3} more)" if len(tls.undetermined) > 3 else ""),
            evidence=tls.evidence(),
        )
    return Finding(
        "pass",
        "TLS is not in use: no daemon listens for TLS, the URI does not use TLS, and no "
        "certificates are configured or present",
        evidence=tls.evidence(),
    )


def _severity(ep: Endpoint) -> Status:
    """A client seen only because its files exist (no TLS URI) is not failing anyone yet."""
    return "fail" if ep.required else "warn"


def _users(ep: Endpoint) -> str:
    return f"the {ep.role} ({', '.join(ep.users)})"


def _base(ep: Endpoint, tls: TlsState) -> dict[str, Any]:
    return {"endpoint": ep.summary(), "tls_in_use_because": list(tls.reasons)}


def _readable(st: Optional[StatInfo], reader: Reader, accounts: Accounts) -> tuple[bool, str]:
    if st is None:
        return True, "not examined"
    verdict = access(st, reader.uid, reader.gids, accounts)
    return verdict.read, verdict.detail


def _file_view(st: Optional[StatInfo], accounts: Accounts) -> Optional[dict[str, Any]]:
    if st is None:
        return None
    return {
        "mode": f"{st.mode:04o}",
        "permissions": mode_string(st),
        "owner": accounts.user_name(st.uid),
        "group": accounts.group_name(st.gid),
        "acl": [
            f"{e.tag}:{'' if e.qualifier is None else _acl_name(e.tag, e.qualifier, accounts)}"
            f":{e.perms}"
            for e in st.acl
        ],
    }


def _acl_name(tag: str, qualifier: int, accounts: Accounts) -> str:
    return accounts.user_name(qualifier) if tag == "user" else accounts.group_name(qualifier)


# --- TLS001 ---------------------------------------------------------------------------------


@check(
    "TLS001", "tls-ca-missing", title="The CA certificate is missing or unreadable", tags=("tls",)
)
def tls_ca_missing(tls: TlsState, accounts: Optional[Accounts] = None) -> Iterator[Finding]:
    """What it checks: that the CA certificate each TLS user needs exists, can be read by
    whoever uses it, and holds at least one PEM certificate. The daemon takes `ca_file` from
    libvirtd.conf or virtproxyd.conf (default /etc/pki/CA/cacert.pem; setting `cert_file` or
    `key_file` without `ca_file` is an error); the client takes `pkipath` from the URI, a
    non-root user's ~/.pki/libvirt/cacert.pem, else /etc/pki/CA/cacert.pem. When TLS is not
    in use, it passes once, saying so (it skips when that cannot be told).

    Why it matters: libvirtd refuses to start its listeners ("Cannot read CA certificate
    '/etc/pki/CA/cacert.pem': No such file or directory", then "Unable to initialize network
    sockets"), and a client fails the same way before it connects.

    How to fix: copy the CA certificate that signed the server and client certificates to the
    path named in the finding (`install -m 644 cacert.pem /etc/pki/CA/cacert.pem`), or point
    `ca_file` (server) or `?pkipath=DIR` (client) at it. Restart the daemon.

    References: https://libvirt.org/kbase/tlscerts.html
    https://libvirt.org/remote.html#transport-configuration
    """
    if not tls.in_use:
        yield _not_in_use(tls)
        return
    accts = accounts or NO_ACCOUNTS
    for ep in tls.endpoints:
        ca = ep.ca
        evidence = {
            "ca_file": ca.path,
            "configured": ca.origin,
            "default": DEFAULT_CA,
            "file": _file_view(ca.stat, accts),
            "reader": ep.reader.as_dict(),
            "error": ca.error,
            **_base(ep, tls),
        }
        status = _severity(ep)
        if ca.state == "unset":
            yield Finding(
                status,
                f"{_users(ep)}: {ca.error}: {ca.origin} (libvirt refuses to start the listener)",
                subject=ep.subject,
                evidence=evidence,
            )
        elif ca.state == "unreadable" and ep.reader.uid == 0 and ep.role == "server":
            yield Finding(
                "skip",
                f"{ca.path} could not be read by kvmdoctor ({ca.error}); run it as root to check "
                "what the daemon (root) reads",
                subject=ep.subject,
                evidence=evidence,
            )
        elif ca.state in ("missing", "unreadable"):
            yield Finding(
                status,
                f"Cannot read CA certificate '{ca.path}': {ca.error} (needed by {_users(ep)})",
                subject=ep.subject,
                evidence=evidence,
            )
        elif ca.state in ("invalid", "empty"):
            yield Finding(
                status,
                f"the CA certificate file {ca.path} is unusable: {ca.error}",
                subject=ep.subject,
                evidence=evidence,
            )
        else:
            readable, detail = _readable(ca.stat, ep.reader, accts)
            evidence["decided_by"] = detail
            evidence["certificates"] = [c.subject for c in ca.certs]
            if not readable:
                yield Finding(
                    status,
                    f"{ep.reader.name} cannot read the CA certificate {ca.path}: {detail}",
                    subject=ep.subject,
                    evidence=evidence,
                )
                continue
            count = f" and {len(ca.certs) - 1} more" if len(ca.certs) > 1 else ""
            yield Finding(
                "pass",
                f"CA certificate {ca.path} ({ca.origin}) holds {ca.certs[0].subject}{count}",
                subject=ep.subject,
                evidence=evidence,
            )


# --- TLS002 ---------------------------------------------------------------------------------


def _cert_problem(ep: Endpoint) -> Optional[str]:
    cert = ep.cert
    if cert.state == "unset":
        return f"{cert.error}: {cert.origin}"
    if cert.state == "missing":
        if ep.role == "client":
            return (
                f"no client certificate at {cert.path}: a server that verifies clients (the "
                "default, tls_no_verify_certificate = 0) refuses the connection"
            )
        return f"Cannot read certificate '{cert.path}': {cert.error}"
    if cert.state == "unreadable":
        return f"Cannot read certificate '{cert.path}': {cert.error}"
    if cert.state in ("invalid", "empty"):
        return f"the certificate file {cert.path} is unusable: {cert.error}"
    return None


@check(
    "TLS002",
    "tls-cert-or-key-missing",
    title="A TLS certificate or key is missing, or the key does not match the certificate",
    tags=("tls",),
)
def tls_cert_or_key_missing(tls: TlsState) -> Iterator[Finding]:
    """What it checks: that the server's (or the client's) certificate and private key both
    exist, that the certificate file holds a PEM certificate, that the key loads without a
    passphrase, and that the key belongs to the certificate: the SHA-256 of the public key in
    the certificate (its SubjectPublicKeyInfo) equals that of the key's public half. The key
    is loaded only inside the source; neither it nor any part of it but the public half
    enters the report. When TLS is not in use, it passes once, saying so (it skips when
    that cannot be told).

    Why it matters: libvirtd does not start its listeners: "Cannot read certificate
    '/etc/pki/libvirt/servercert.pem': No such file or directory", "Unable to set x509 key and
    certificate: ... The certificate and the given key do not match." or "... Decryption has
    failed." for a key with a passphrase. A client without a certificate is refused by a
    server that verifies its clients (the default).

    How to fix: install the certificate and the key that was used to make its request
    (compare `openssl x509 -in CERT -noout -pubkey | openssl sha256` with `openssl pkey -in
    KEY -pubout | openssl sha256`); remove a passphrase with `openssl pkey -in KEY -out KEY`;
    or point `cert_file`/`key_file` (server) or `?pkipath=DIR` (client) at the right pair.

    References: https://libvirt.org/kbase/tlscerts.html
    https://libvirt.org/remote.html#transport-configuration
    """
    if not tls.in_use:
        yield _not_in_use(tls)
        return
    for ep in tls.endpoints:
        cert, key = ep.cert, ep.key
        leaf = cert.leaf
        evidence: dict[str, Any] = {
            "cert_file": cert.path,
            "cert_origin": cert.origin,
            "key_file": key.path,
            "key_origin": key.origin,
            "certificate_public_sha256": leaf.public_sha256 if leaf else None,
            "certificate_public_key": leaf.public_key if leaf else None,
            "certificate_sha256": leaf.sha256 if leaf else None,
            "key_public_sha256": key.info.public_sha256 if key.info else None,
            "key_type": (
                f"{key.info.key_type} {key.info.bits or ''}".strip()
                if key.info and key.info.key_type
                else None
            ),
            **_base(ep, tls),
        }
        problems = []
        cert_problem = _cert_problem(ep)
        if cert_problem:
            problems.append(cert_problem)
        if key.state == "unset":
            problems.append(f"{key.error}: {key.origin}")
        elif key.state == "missing":
            problems.append(f"Cannot read private key '{key.path}': {key.error}")
        elif key.state == "unusable":
            problems.append(f"the private key {key.path} cannot be loaded: {key.error}")
        if problems:
            yield Finding(
                _severity(ep), f"{_users(ep)}: {'; '.join(problems)}", ep.subject, evidence
            )
            continue
        if key.info is None or leaf is None:
            yield Finding(
                "skip",
                f"whether {key.path} belongs to {cert.path} is unknown: the key could not be "
                f"examined ({key.error})",
                ep.subject,
                evidence,
            )
            continue
        if key.info.public_sha256 != leaf.public_sha256:
            yield Finding(
                _severity(ep),
                f"the key {key.path} does not belong to the certificate {cert.path}: the "
                f"certificate's public key has SHA-256 {leaf.public_sha256[:16]}..., the key's "
                f'{(key.info.public_sha256 or "")[:16]}... (libvirt: "The certificate and the '
                'given key do not match.")',
                ep.subject,
                evidence,
            )
            continue
        yield Finding(
            "pass",
            f"{cert.path} and {key.path} are present and belong together "
            f"({leaf.public_key}, public key SHA-256 {leaf.public_sha256[:16]}...)",
            ep.subject,
            evidence,
        )


# --- TLS003 ---------------------------------------------------------------------------------


def _cert_kind(ep: Endpoint, which: str, index: int) -> str:
    if which == "ca":
        return "CA"
    if index > 0:
        return "intermediate CA"
    return ep.role


def _days(seconds: float) -> str:
    days = seconds / DAY
    return f"{days:.0f} days" if abs(days) >= 2 else f"{seconds / 3600:.0f} hours"


@check(
    "TLS003",
    "tls-cert-expired",
    title="A TLS certificate has expired, is not yet valid, or expires soon",
    tags=("tls",),
)
def tls_cert_expired(tls: TlsState, host_clock: HostClock) -> Iterator[Finding]:
    """What it checks: the validity period (notBefore, notAfter) of every certificate in use:
    the server's or the client's, intermediates in the certificate file, and the CAs in the
    CA file, against the host's clock. Expired or not yet valid is a failure; expiring within
    30 days a warning (a client certificate that no TLS URI uses only warns). Under `--root`
    the host's clock cannot be read: the time of the run is used, and the evidence says so.
    When TLS is not in use, it passes once, saying so (it skips when that cannot be told).

    Why it matters: libvirtd refuses to start its listeners with an expired or future
    certificate ("The server certificate /etc/pki/libvirt/servercert.pem has expired", "...
    is not yet active"), and clients refuse such a server ("Certificate failed validation:
    The certificate is not trusted."). A certificate that is not yet valid often means the
    host's clock is wrong, not the certificate.

    How to fix: issue a new certificate from the same CA with the same names and key
    usage, install it, and restart the daemon (`systemctl restart libvirtd`). For "not yet
    valid", check the clock first (`timedatectl`, NTP) on both the host and the machine that
    issued the certificate.

    References: https://libvirt.org/kbase/tlscerts.html
    https://www.rfc-editor.org/rfc/rfc5280#section-4.1.2.5
    """
    if not tls.in_use:
        yield _not_in_use(tls)
        return
    clock = host_clock.as_dict()
    seen: set[tuple[str, int]] = set()
    found = False
    for ep in tls.endpoints:
        files: tuple[tuple[str, CertFile], ...] = (("cert", ep.cert), ("ca", ep.ca))
        for which, cert_file in files:
            for index, cert in enumerate(cert_file.certs):
                assert cert_file.path is not None
                if (cert_file.path, index) in seen:
                    continue
                seen.add((cert_file.path, index))
                found = True
                kind = _cert_kind(ep, which, index)
                yield _validity(ep, cert_file.path, index, cert, kind, host_clock)
    if not found:
        yield Finding(
            "skip",
            "no certificate in use could be read (see TLS001 and TLS002)",
            evidence={**tls.evidence(), "host_clock": clock},
        )


def _validity(
    ep: Endpoint, path: str, index: int, cert: CertInfo, kind: str, clock: HostClock
) -> Finding:
    now = clock.time
    subject = f"cert:{path}" if index == 0 else f"cert:{path}#{index + 1}"
    evidence: dict[str, Any] = {
        "file": path,
        "position_in_file": index + 1,
        "kind": kind,
        "used_by": list(ep.users),
        "subject": cert.subject,
        "serial": cert.serial,
        "not_before": cert.not_before,
        "not_after": cert.not_after,
        "host_clock": clock.iso,
        "clock_source": clock.source,
        "clock_note": clock.note,
    }
    label = f"The {kind} certificate {path}" + (f" (#{index + 1})" if index else "")
    if now < cert.not_before_ts:
        return Finding(
            _severity(ep),
            f"{label} is not yet active: valid from {cert.not_before}, and the clock says "
            f"{iso_time(now)} ({_days(cert.not_before_ts - now)} earlier); a clock that is "
            "behind gives the same failure",
            subject,
            evidence,
        )
    if now > cert.not_after_ts:
        return Finding(
            _severity(ep),
            f"{label} has expired: valid until {cert.not_after}, {_days(now - cert.not_after_ts)} "
            f"before the clock's {iso_time(now)}",
            subject,
            evidence,
        )
    left = cert.not_after_ts - now
    evidence["days_left"] = round(left / DAY, 1)
    if left < EXPIRY_WARNING_DAYS * DAY:
        return Finding(
            "warn",
            f"{label} expires in {_days(left)}, on {cert.not_after}",
            subject,
            evidence,
        )
    return Finding(
        "pass", f"{label} is valid until {cert.not_after} ({_days(left)} left)", subject, evidence
    )


# --- TLS004 ---------------------------------------------------------------------------------


def _match_dns(pattern: str, name: str) -> bool:
    """RFC 6125 as GnuTLS applies it: case-insensitive, a `*` only in the leftmost label and
    matching within that label, never a wildcard over the last two labels."""
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if "*" not in pattern:
        return pattern == name
    first, _, rest = pattern.partition(".")
    name_first, _, name_rest = name.partition(".")
    if "*" in rest or rest.count(".") < 1 or rest != name_rest:
        return False
    prefix, _, suffix = first.partition("*")
    return (
        len(name_first) >= len(prefix) + len(suffix)
        and name_first.startswith(prefix)
        and name_first.endswith(suffix)
    )


def name_covered(cert: CertInfo, name: str) -> Optional[str]:
    """The certificate entry that covers `name`, as a client checks it: IP addresses against
    the IP SANs; DNS names against the DNS SANs, or the CN when there are none."""
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    if address is not None:
        for ip in cert.san_ip:
            if ipaddress.ip_address(ip) == address:
                return f"SAN IP:{ip}"
        return None
    if cert.san_dns:
        for entry in cert.san_dns:
            if _match_dns(entry, name):
                return f"SAN DNS:{entry}"
        return None
    if cert.common_name and _match_dns(cert.common_name, name):
        return f"CN={cert.common_name}"
    return None


def _uri_host(uri: Optional[LibvirtUri], names: HostNames) -> Optional[str]:
    """The host a TLS URI names when it is this host (localhost, or one of its names)."""
    if uri is None or uri.parts.implied_transport != "tls" or not uri.parts.host:
        return None
    host = uri.parts.host
    local = {n.lower() for n in (*LOCAL_NAMES, *names.names)}
    local |= {n.split(".")[0].lower() for n in names.names}
    return host if host.lower() in local else None


@check(
    "TLS004",
    "tls-cert-name-mismatch",
    title="The server certificate does not cover the host's names",
    tags=("tls",),
)
def tls_cert_name_mismatch(
    tls: TlsState, host_names: HostNames, uri: Optional[LibvirtUri] = None
) -> Iterator[Finding]:
    """What it checks: that the server certificate names this host as clients name it: the
    hostname (uname, or /etc/hostname under `--root`), the FQDN (`hostname --fqdn`, or the
    canonical name /etc/hosts gives), and the host of a TLS URI that points at this host
    (localhost, say). Names are matched as a client matches them: IP addresses against IP
    SANs; DNS names against the DNS SANs, or against the CN only when there is no DNS SAN;
    `*` only in the leftmost label. None of the names covered, or the URI's host not
    covered, is a failure; some names uncovered is a warning. Client certificates carry no
    host name requirement and are not checked. When TLS is not in use, it passes once,
    saying so (it skips when that cannot be told).

    Why it matters: the daemon starts, but every client connecting by an uncovered name is
    refused: virsh prints "Certificate check failed Certificate [session] owner does not
    match the hostname HOST" and "authentication failed: Failed to verify peer's
    certificate".

    How to fix: issue a server certificate whose subjectAltName lists every name clients
    use (`DNS:host.example.com,DNS:host,IP:192.0.2.10`; with certtool: `dns_name` and
    `ip_address` lines in the template), install it, restart the daemon; or connect with a
    name the certificate holds.

    References: https://libvirt.org/kbase/tlscerts.html
    https://www.rfc-editor.org/rfc/rfc6125#section-6.4
    """
    if not tls.in_use:
        yield _not_in_use(tls)
        return
    servers = [ep for ep in tls.endpoints if ep.role == "server"]
    if not servers:
        yield Finding(
            "skip",
            "no server certificate is in use here (TLS is used as a client only)",
            evidence=tls.evidence(),
        )
        return
    uri_host = _uri_host(uri, host_names)
    for ep in servers:
        leaf = ep.cert.leaf
        evidence: dict[str, Any] = {
            "cert_file": ep.cert.path,
            "common_name": leaf.common_name if leaf else None,
            "san_dns": list(leaf.san_dns) if leaf else [],
            "san_ip": list(leaf.san_ip) if leaf else [],
            "host_names": host_names.as_dict(),
            "uri_host": uri_host,
            **_base(ep, tls),
        }
        if leaf is None:
            yield Finding(
                "skip",
                f"the server certificate {ep.cert.path} could not be read (see TLS002)",
                ep.subject,
                evidence,
            )
            continue
        names = list(host_names.names)
        if uri_host and uri_host not in names:
            names.append(uri_host)
        if not names:
            yield Finding("skip", "this host's names are unknown", ep.subject, evidence)
            continue
        covered = {n: name_covered(leaf, n) for n in names}
        evidence["covered"] = covered
        if not leaf.san_dns:
            evidence["note"] = "no DNS subjectAltName: clients compare DNS names with the CN"
        holds = (
            ", ".join([f"DNS:{d}" for d in leaf.san_dns] + [f"IP:{i}" for i in leaf.san_ip])
            or f"CN={leaf.common_name}"
        )
        missing = [n for n, by in covered.items() if by is None]
        refusal = (
            'clients connecting by {} get "Certificate [session] owner does not match the hostname"'
        )
        if uri_host and covered[uri_host] is None:
            yield Finding(
                "fail",
                f"the server certificate {ep.cert.path} ({holds}) does not cover {uri_host}, "
                f"the host of the URI {tls.uri}: " + refusal.format(uri_host),
                ep.subject,
                evidence,
            )
        elif len(missing) == len(names):
            yield Finding(
                "fail",
                f"the server certificate {ep.cert.path} ({holds}) covers none of this host's "
                f"names ({', '.join(names)}): " + refusal.format("any of them"),
                ep.subject,
                evidence,
            )
        elif missing:
            yield Finding(
                "warn",
                f"the server certificate {ep.cert.path} ({holds}) does not cover "
                f"{', '.join(missing)}: " + refusal.format("that name"),
                ep.subject,
                evidence,
            )
        else:
            yield Finding(
                "pass",
                f"the server certificate {ep.cert.path} covers {', '.join(names)} "
                f"({', '.join(f'{n} by {by}' for n, by in covered.items())})",
                ep.subject,
                evidence,
            )


# --- TLS005 ---------------------------------------------------------------------------------


@check(
    "TLS005",
    "tls-cert-not-signed-by-ca",
    title="A TLS certificate does not verify against the configured CA",
    tags=("tls",),
)
def tls_cert_not_signed_by_ca(tls: TlsState) -> Iterator[Finding]:
    """What it checks: that the server's (or client's) certificate chains to a certificate in
    the configured CA file, as GnuTLS verifies it: the issuer's name matches a CA's subject,
    that CA's key verifies the signature (through intermediates in the certificate file, if
    any), the CA's basic constraints show a CA and its key usage permits certificate signing,
    and the CA's revocation list (`crl_file`, default /etc/pki/CA/cacrl.pem), when present,
    does not list the certificate. When TLS is not in use, it passes once, saying so (it
    skips when that cannot be told).

    Why it matters: libvirtd refuses to start its listeners ("Our own certificate
    /etc/pki/libvirt/servercert.pem failed validation against /etc/pki/CA/cacert.pem: The
    certificate hasn't got a known issuer."), and with `tls_no_sanity_certificate = 1` it
    starts but clients refuse it ("Certificate failed validation: The certificate hasn't got
    a known issuer."). The usual cause is a certificate issued by another CA, or a CA that was
    re-created with a new key under the same name.

    How to fix: install the CA certificate that issued this certificate (`openssl x509 -in
    CERT -noout -issuer` names it), or issue a new certificate from the configured CA; add any
    intermediate CA to the CA file. All hosts must share the CA.

    References: https://libvirt.org/kbase/tlscerts.html
    https://www.rfc-editor.org/rfc/rfc5280#section-6.1
    """
    if not tls.in_use:
        yield _not_in_use(tls)
        return
    for ep in tls.endpoints:
        leaf = ep.cert.leaf
        evidence: dict[str, Any] = {
            "cert_file": ep.cert.path,
            "ca_file": ep.ca.path,
            "issuer": leaf.issuer if leaf else None,
            "serial": leaf.serial if leaf else None,
            "ca_subjects": [c.subject for c in ep.ca.certs],
            "crl_file": ep.crl,
            "chain": ep.chain.as_dict() if ep.chain else None,
            **_base(ep, tls),
        }
        if ep.chain is None:
            missing = [f"{f.path or 'unset'} ({f.state})" for f in (ep.ca, ep.cert) if not f.ok]
            yield Finding(
                "skip",
                f"nothing to verify: {', '.join(missing)} (see TLS001 and TLS002)",
                ep.subject,
                evidence,
            )
            continue
        if ep.chain.verified:
            yield Finding(
                "pass",
                f"{ep.cert.path} verifies against {ep.ca.path}: "
                f"{' -> '.join(ep.chain.path)} (signatures checked)",
                ep.subject,
                evidence,
            )
            continue
        yield Finding(
            _severity(ep),
            f"{ep.cert.path} does not verify against the CA in {ep.ca.path}: {ep.chain.problem}",
            ep.subject,
            evidence,
        )


# --- TLS006 ---------------------------------------------------------------------------------


def _acl_readers(st: StatInfo, accounts: Accounts) -> list[str]:
    """Named ACL entries that grant read (after the mask)."""
    if not has_extended_acl(st):
        return []
    mask = next((e.perms for e in st.acl if e.tag == "mask"), "rwx")
    return [
        f"{e.tag}:{_acl_name(e.tag, e.qualifier, accounts)}"
        for e in st.acl
        if e.qualifier is not None and e.perms[0] == "r" and mask[0] == "r"
    ]


@check(
    "TLS006",
    "tls-key-permissions",
    title="A TLS private key is readable by others, or not by the daemon",
    tags=("tls",),
)
def tls_key_permissions(tls: TlsState, accounts: Optional[Accounts] = None) -> Iterator[Finding]:
    """What it checks: the mode, owner, group and ACL of each private key in use. Readable by
    every user fails; readable by a group other than root's, or through named ACL entries,
    warns. It also fails when the one who must read the key cannot: the running daemon with
    its real uid and groups (/proc/PID/status); the system daemon runs as root, which the
    mode does not restrict; a client is the user running kvmdoctor. Only the key's metadata
    is looked at here. When TLS is not in use, it passes once, saying so (it skips when
    that cannot be told).

    Why it matters: anyone who can read the server's key can impersonate the host to every
    libvirt client, and a client's key lets them manage the hypervisor remotely. A key the
    daemon cannot read stops its listeners ("Unable to set x509 key and certificate ...").

    How to fix: `chown root:root KEY && chmod 600 KEY` for the system daemon's key (a
    client's key: owned by the user who connects, mode 600), and remove extra ACL entries
    with `setfacl -b KEY`. If the key was readable by others, consider it disclosed: make a
    new key and certificate.

    References: https://libvirt.org/kbase/tlscerts.html
    https://man7.org/linux/man-pages/man5/acl.5.html
    """
    if not tls.in_use:
        yield _not_in_use(tls)
        return
    accts = accounts or NO_ACCOUNTS
    for ep in tls.endpoints:
        key = ep.key
        st = key.stat
        evidence: dict[str, Any] = {
            "key_file": key.path,
            "file": _file_view(st, accts),
            "reader": ep.reader.as_dict(),
            **_base(ep, tls),
        }
        if st is None:
            yield Finding(
                "skip",
                f"the private key {key.path or '(unset)'} is not there to examine (see TLS002)",
                ep.subject,
                evidence,
            )
            continue
        view = evidence["file"]
        described = f"{view['permissions']} {view['owner']}:{view['group']}"
        problems: list[tuple[Status, str]] = []
        if st.mode & 0o004:
            problems.append(("fail", f"every user can read it ({described})"))
        if st.mode & 0o040 and st.gid != 0:
            problems.append(("warn", f"group {view['group']} can read it ({described})"))
        named = _acl_readers(st, accts)
        if named:
            problems.append(("warn", f"ACL entries let {', '.join(named)} read it"))
        readable, detail = _readable(st, ep.reader, accts)
        evidence["decided_by"] = detail
        if not readable:
            problems.append(("fail", f"{ep.reader.name} cannot read it: {detail}"))
        if problems:
            status: Status = "fail" if any(s == "fail" for s, _ in problems) else "warn"
            yield Finding(
                status,
                f"the private key {key.path}: {'; '.join(t for _, t in problems)}",
                ep.subject,
                evidence,
            )
            continue
        yield Finding(
            "pass",
            f"the private key {key.path} is {described}, readable by {ep.reader.name} "
            f"({detail}) and not by others",
            ep.subject,
            evidence,
        )


# --- what libvirt's own sanity check holds against a certificate (TLS007-TLS009) -------------


def _sanity_off(ep: Endpoint) -> Optional[str]:
    """Where libvirt's own certificate sanity check is switched off for `ep`, if it is: it
    then starts (or connects) with a certificate these checks would fail."""
    if ep.role == "server":
        value = ep.settings.get("tls_no_sanity_certificate")
        if isinstance(value, int) and not isinstance(value, bool) and value != 0:
            return "tls_no_sanity_certificate = 1 in the daemon's configuration"
        return None
    if str(ep.settings.get("no_sanity", "0")) not in ("", "0"):
        return "no_sanity=1 in the URI"
    return None


def _leaves(
    tls: TlsState, fields: Callable[[Optional[CertInfo]], dict[str, Any]]
) -> Iterator[tuple[Endpoint, Optional[CertInfo], dict[str, Any]]]:
    """Each endpoint, its certificate's leaf (None when it could not be read: `_unread`)
    and the evidence on it: the file, the leaf's subject, `fields(leaf)`, whether libvirt's
    sanity check is off, and the endpoint."""
    for ep in tls.endpoints:
        leaf = ep.cert.leaf
        evidence: dict[str, Any] = {
            "cert_file": ep.cert.path,
            "subject": leaf.subject if leaf else None,
            **fields(leaf),
            "sanity_check_off": _sanity_off(ep),
            **_base(ep, tls),
        }
        yield ep, leaf, evidence


def _unread(ep: Endpoint, evidence: dict[str, Any]) -> Finding:
    return Finding(
        "skip",
        f"the {ep.role} certificate {ep.cert.path or '(unset)'} could not be read (see TLS002)",
        ep.subject,
        evidence,
    )


def _refusal(ep: Endpoint) -> str:
    """What happens when libvirt's sanity check refuses the certificate of `ep`."""
    if ep.role == "server":
        return 'libvirtd does not start its TLS listener ("Unable to initialize network sockets")'
    return "the client refuses to connect before any TLS handshake"


@check(
    "TLS007",
    "tls-cert-marked-as-ca",
    title="The server or client certificate is marked as a CA",
    tags=("tls",),
)
def tls_cert_marked_as_ca(tls: TlsState) -> Iterator[Finding]:
    """What it checks: that the server's (or the client's) own certificate is not a CA
    certificate: its basicConstraints extension must not say CA:TRUE. libvirt checks this
    for its own certificate before it uses it (the daemon when it starts, the client when it
    connects); a certificate without the extension is accepted. Intermediate CAs that follow
    the certificate in its file are not concerned. When TLS is not in use, it passes once,
    saying so (it skips when that cannot be told).

    Why it matters: libvirtd does not start its TLS listener: "The certificate
    /etc/pki/libvirt/servercert.pem basic constraints show a CA, but we need one for a
    server", then "Unable to initialize network sockets"; a client fails with "... basic
    constraints show a CA, but we need one for a client". It happens when the CA's own
    certificate (or a copy of the CA template) is installed as the server certificate, or
    when a certificate was signed with the CA's extensions (`openssl x509 -req -extfile`
    naming the CA section, certtool's `ca` line left in the template).

    How to fix: issue a new certificate from the CA with `cA` false: with certtool, a
    template without the `ca` line and with `tls_www_server` (or `tls_www_client`),
    `encryption_key` and `signing_key`; with openssl, `basicConstraints = critical,CA:FALSE`
    in the extensions used to sign it. Install it and restart the daemon.

    References: https://libvirt.org/kbase/tlscerts.html
    https://www.rfc-editor.org/rfc/rfc5280#section-4.2.1.9
    """
    if not tls.in_use:
        yield _not_in_use(tls)
        return
    for ep, leaf, evidence in _leaves(
        tls, lambda leaf: {"basic_constraints_ca": leaf.is_ca if leaf else None}
    ):
        if leaf is None:
            yield _unread(ep, evidence)
            continue
        if not leaf.is_ca:
            said = "CA:FALSE" if leaf.is_ca is False else "no basicConstraints"
            yield Finding(
                "pass",
                f"the {ep.role} certificate {ep.cert.path} is not a CA ({said})",
                ep.subject,
                evidence,
            )
            continue
        text = (
            f"The certificate {ep.cert.path} basic constraints show a CA, but we need one for "
            f"a {ep.role}"
        )
        off = _sanity_off(ep)
        if off:
            yield Finding(
                "warn",
                f"{text}: libvirt accepts it only because {off} switches its sanity check off",
                ep.subject,
                evidence,
            )
            continue
        yield Finding(
            _severity(ep),
            f"{text} ({leaf.subject} says CA:TRUE): {_refusal(ep)}",
            ep.subject,
            evidence,
        )


def purposes_allow(purposes: Optional[tuple[str, ...]], role: str) -> bool:
    """Whether the extended key usage lets a certificate serve `role` as libvirt decides it
    (virNetTLSContextCheckCertKeyPurpose): no extension allows both roles; serverAuth allows
    a server, clientAuth a client; any other purpose allows both, except
    anyExtendedKeyUsage, which libvirt does not count for either."""
    if purposes is None:
        return True
    wanted = "serverAuth" if role == "server" else "clientAuth"
    return any(p == wanted or p not in PURPOSES_FOR_ONE_ROLE for p in purposes)


PURPOSES_FOR_ONE_ROLE = ("serverAuth", "clientAuth", "anyExtendedKeyUsage")


@check(
    "TLS008",
    "tls-cert-wrong-purpose",
    title="The certificate's purpose does not allow a TLS server (or client)",
    tags=("tls",),
)
def tls_cert_wrong_purpose(tls: TlsState) -> Iterator[Finding]:
    """What it checks: the extended key usage (purpose) of the server's and the client's own
    certificate, as libvirt reads it: a server certificate must list TLS WWW server
    (serverAuth, 1.3.6.1.5.5.7.3.1), a client certificate TLS WWW client (clientAuth,
    1.3.6.1.5.5.7.3.2). A certificate without the extension passes; libvirt also counts any
    other purpose as allowing both, but not anyExtendedKeyUsage alone. When the extension is
    critical libvirt refuses the certificate (fail); when it is not, libvirt only logs a
    warning and goes on (warn: other TLS software may still refuse it). When TLS is not in
    use, it passes once, saying so (it skips when that cannot be told).

    Why it matters: libvirtd does not start its TLS listener: "Certificate
    /etc/pki/libvirt/servercert.pem purpose does not allow use for with a TLS server", then
    "Unable to initialize network sockets"; a client fails with "... purpose does not allow
    use for with a TLS client". The usual cause is a client certificate installed as the
    server's (or the reverse), or a template with only `tls_www_client`.

    How to fix: issue the certificate with the purpose of its role: certtool's
    `tls_www_server` (server) or `tls_www_client` (client) line, or openssl's
    `extendedKeyUsage = serverAuth` (`clientAuth`); a host that is both server and client
    (migration) needs both certificates, or one certificate with both purposes. Install it
    and restart the daemon.

    References: https://libvirt.org/kbase/tlscerts.html
    https://www.rfc-editor.org/rfc/rfc5280#section-4.2.1.12
    """
    if not tls.in_use:
        yield _not_in_use(tls)
        return
    for ep, leaf, evidence in _leaves(
        tls,
        lambda leaf: {
            "purposes": list(leaf.purposes) if leaf and leaf.purposes is not None else None,
            "purposes_critical": leaf.purposes_critical if leaf else None,
        },
    ):
        if leaf is None:
            yield _unread(ep, evidence)
            continue
        listed = ", ".join(leaf.purposes or ()) or "none"
        if leaf.purposes is None:
            yield Finding(
                "pass",
                f"the {ep.role} certificate {ep.cert.path} has no extended key usage, which "
                f"allows any purpose",
                ep.subject,
                evidence,
            )
            continue
        if purposes_allow(leaf.purposes, ep.role):
            yield Finding(
                "pass",
                f"the {ep.role} certificate {ep.cert.path} allows a TLS {ep.role} "
                f"(purposes: {listed})",
                ep.subject,
                evidence,
            )
            continue
        text = f"Certificate {ep.cert.path} purpose does not allow use for with a TLS {ep.role}"
        wanted = "serverAuth" if ep.role == "server" else "clientAuth"
        held = f"its purposes are {listed}, without {wanted}"
        off = _sanity_off(ep)
        if not leaf.purposes_critical or off:
            why = (
                f"{off} switches libvirt's sanity check off"
                if off
                else "the extension is not critical, so libvirt only logs this as a warning"
            )
            yield Finding(
                "warn",
                f"{text} ({held}): {why}; other TLS software may refuse it",
                ep.subject,
                evidence,
            )
            continue
        yield Finding(
            _severity(ep),
            f"{text} ({held}; the extension is critical): " + _refusal(ep),
            ep.subject,
            evidence,
        )


# Public key types that libvirt 9.0 (Debian 12, seen in the lab) also requires keyEncipherment
# for, and that libvirt's current source exempts (RFC 8813: an EC key cannot encipher).
EC_KEYS = ("EC", "X25519", "X448")


@check(
    "TLS009",
    "tls-cert-key-usage-insufficient",
    title="The certificate's key usage lacks digitalSignature or keyEncipherment",
    tags=("tls",),
)
def tls_cert_key_usage_insufficient(tls: TlsState) -> Iterator[Finding]:
    """What it checks: the key usage extension of the server's and the client's own
    certificate, as libvirt and GnuTLS use it. It must allow digitalSignature: without it
    the TLS handshake cannot be signed, so it fails whether or not the extension is critical
    (when it is critical libvirt refuses the certificate before that). It should allow
    keyEncipherment: libvirt refuses a certificate without it when the extension is critical
    (fail); when it is not critical libvirt only logs a warning (warn). For an EC key
    libvirt releases such as 9.0 demand keyEncipherment too, while libvirt's current source
    follows RFC 8813, which forbids it for EC keys: that case warns. A certificate without
    the extension passes. When TLS is not in use, it passes once, saying so (it skips when
    that cannot be told).

    Why it matters: libvirtd does not start its TLS listener: "Certificate
    /etc/pki/libvirt/servercert.pem usage does not permit digital signature" (or "... does
    not permit key encipherment"), then "Unable to initialize network sockets"; a client
    fails the same way. With a non-critical extension the daemon starts but every handshake
    fails ("TLS handshake failed No supported cipher suites have been found." in the
    daemon's log, "The TLS connection was non-properly terminated." for the client); a
    client certificate without digitalSignature is not even sent ("Unable to verify TLS
    peer: No certificate was found." in the daemon's log, "Unable to read TLS confirmation:
    Input/output error" for the client).

    How to fix: issue the certificate again with both usages: certtool's `signing_key` and
    `encryption_key` lines, or openssl's `keyUsage = critical, digitalSignature,
    keyEncipherment`. For an EC key on a libvirt that demands it (9.0 does), add
    keyEncipherment or make the extension non-critical. Install it and restart the daemon.

    References: https://libvirt.org/kbase/tlscerts.html
    https://www.rfc-editor.org/rfc/rfc5280#section-4.2.1.3
    https://www.rfc-editor.org/rfc/rfc8813
    """
    if not tls.in_use:
        yield _not_in_use(tls)
        return
    for ep, leaf, evidence in _leaves(
        tls,
        lambda leaf: {
            "key_usage": list(leaf.key_usage) if leaf and leaf.key_usage is not None else None,
            "key_usage_critical": leaf.key_usage_critical if leaf else None,
            "public_key": leaf.public_key if leaf else None,
        },
    ):
        if leaf is None:
            yield _unread(ep, evidence)
            continue
        if leaf.key_usage is None:
            yield Finding(
                "pass",
                f"the {ep.role} certificate {ep.cert.path} has no key usage extension, which "
                "allows every usage",
                ep.subject,
                evidence,
            )
            continue
        usage = ", ".join(leaf.key_usage) or "none"
        critical = leaf.key_usage_critical
        off = _sanity_off(ep)
        refused = critical and not off
        problems: list[tuple[Status, str]] = []
        if "digital_signature" not in leaf.key_usage:
            text = f"Certificate {ep.cert.path} usage does not permit digital signature"
            if refused:
                problems.append(("fail", f"{text} (key usage: {usage}): {_refusal(ep)}"))
            else:
                seen = (
                    'the daemon logs "No supported cipher suites have been found."'
                    if ep.role == "server"
                    else 'the client sends no certificate, and the daemon logs "Unable to '
                    'verify TLS peer: No certificate was found."'
                )
                problems.append(
                    (
                        "fail",
                        f"{text} (key usage: {usage}): the TLS handshake cannot be signed with "
                        f"it, so every connection fails ({seen})",
                    )
                )
        if "key_encipherment" not in leaf.key_usage:
            text = f"Certificate {ep.cert.path} usage does not permit key encipherment"
            ec = leaf.public_key.split()[0] in EC_KEYS
            if refused and not ec:
                problems.append(("fail", f"{text} (key usage: {usage}): {_refusal(ep)}"))
            elif refused:
                problems.append(
                    (
                        "warn",
                        f"{text} (key usage: {usage}, {leaf.public_key} key): libvirt releases "
                        "such as 9.0 refuse it; releases that follow RFC 8813 accept an EC key "
                        "without keyEncipherment",
                    )
                )
            else:
                why = f"{off} switches libvirt's sanity check off" if off else "not critical"
                problems.append(
                    ("warn", f"{text} (key usage: {usage}; {why}): libvirt logs a warning")
                )
        if not problems:
            yield Finding(
                "pass",
                f"the {ep.role} certificate {ep.cert.path} allows digital signature and key "
                f"encipherment (key usage: {usage})",
                ep.subject,
                evidence,
            )
            continue
        worst: Status = "fail" if any(s == "fail" for s, _ in problems) else "warn"
        if worst == "fail":
            worst = _severity(ep)
        yield Finding(worst, "; ".join(t for _, t in problems), ep.subject, evidence)


# --- TLS010 ---------------------------------------------------------------------------------


@check(
    "TLS010",
    "tls-client-dn-not-allowed",
    title="tls_allowed_dn_list refuses the client certificate",
    tags=("tls",),
)
def tls_client_dn_not_allowed(
    tls: TlsState, host_names: Optional[HostNames] = None, uri: Optional[LibvirtUri] = None
) -> Iterator[Finding]:
    """What it checks: a daemon's `tls_allowed_dn_list` (libvirtd.conf, virtproxyd.conf)
    against the client certificate on this host: libvirt matches the certificate's
    Distinguished Name, as GnuTLS prints it (the attributes in the order the certificate
    holds them: `C=GB,O=Example,CN=client`, what `virt-pki-query-dn` shows), against each
    entry, where `*` stands for any run of characters and `?` for one. It fails when a TLS
    URI of this host connects to this host with a certificate no entry matches, and warns
    when the client certificate here is not used by such a URI. An empty list refuses every
    client (fail); a list that `tls_no_verify_certificate = 1` keeps from being enforced
    warns. An entry written in RFC 4514 order (`CN=...,O=...,C=...`), which never matches,
    is named. When TLS is not in use, it passes once, saying so (it skips when that cannot
    be told).

    Why it matters: the daemon accepts the TLS connection and then drops it; the client
    only says "Unable to read TLS confirmation: Input/output error", and the daemon logs
    "Client's Distinguished Name is not on the list of allowed clients
    (tls_allowed_dn_list)" followed by "authentication failed: Failed to verify peer's
    certificate".

    How to fix: add the client's DN, exactly as `virt-pki-query-dn clientcert.pem` prints
    it (or a pattern such as `C=GB,O=Example,CN=*`), to `tls_allowed_dn_list` in the
    daemon's configuration and restart the daemon; or issue the client a certificate whose
    DN an entry matches.

    References: https://libvirt.org/remote.html#libvirtd-configuration-file
    https://libvirt.org/kbase/tlscerts.html
    """
    if not tls.in_use:
        yield _not_in_use(tls)
        return
    servers = [ep for ep in tls.endpoints if ep.role == "server"]
    client = next((ep for ep in tls.endpoints if ep.role == "client"), None)
    client_leaf = client.cert.leaf if client is not None else None
    names = host_names or HostNames(None, "unknown", None, "unknown")
    to_here = _uri_host(uri, names) is not None or (
        uri is not None
        and uri.parts.implied_transport == "tls"
        and (uri.parts.host or "").lower() in LOCAL_NAMES
    )
    if not servers:
        yield Finding(
            "pass",
            "no daemon here uses TLS, so no tls_allowed_dn_list applies",
            evidence=tls.evidence(),
        )
        return
    for ep in servers:
        allowed = ep.settings.get("tls_allowed_dn_list")
        conf = next((d.conf_path for d in tls.daemons if d.daemon == ep.users[0]), None)
        evidence: dict[str, Any] = {
            "tls_allowed_dn_list": allowed,
            "daemon_conf": conf or "/etc/libvirt/libvirtd.conf",
            "client_cert_file": client.cert.path if client is not None else None,
            "client_dn": client_leaf.dn if client_leaf else None,
            "client_uri_to_this_host": to_here,
            **_base(ep, tls),
        }
        if allowed is None:
            yield Finding(
                "pass",
                f"{', '.join(ep.users)}: tls_allowed_dn_list is not set, so every client "
                "certificate the CA issued is accepted",
                ep.subject,
                evidence,
            )
            continue
        entries = [str(e) for e in allowed] if isinstance(allowed, list) else [str(allowed)]
        no_verify = ep.settings.get("tls_no_verify_certificate")
        if isinstance(no_verify, int) and not isinstance(no_verify, bool) and no_verify != 0:
            yield Finding(
                "warn",
                f"{', '.join(ep.users)}: tls_allowed_dn_list is set but "
                "tls_no_verify_certificate = 1 keeps it from being enforced: every client is "
                'accepted whatever its DN (libvirt logs "Ignoring bad certificate at user '
                'request")',
                ep.subject,
                evidence,
            )
            continue
        if not entries:
            yield Finding(
                "fail",
                f"{', '.join(ep.users)}: tls_allowed_dn_list is empty, so every client is "
                "refused (\"Client's Distinguished Name is not on the list of allowed "
                'clients (tls_allowed_dn_list)")',
                ep.subject,
                evidence,
            )
            continue
        if client_leaf is None or client is None:
            yield Finding(
                "pass",
                f"{', '.join(ep.users)}: tls_allowed_dn_list allows {'; '.join(entries)}; "
                "there is no client certificate on this host to compare with it",
                ep.subject,
                evidence,
            )
            continue
        dn = client_leaf.dn
        match = next((e for e in entries if dn_pattern_matches(e, dn)), None)
        if match is not None:
            evidence["matched_by"] = match
            yield Finding(
                "pass",
                f"{', '.join(ep.users)}: the client certificate {client.cert.path} "
                f"({dn}) is allowed by tls_allowed_dn_list entry {match!r}",
                ep.subject,
                evidence,
            )
            continue
        reversed_dn = ",".join(reversed(dn.split(",")))
        hint = next(
            (
                f"; the entry {e!r} is written in RFC 4514 order, which libvirt never matches:"
                " write it in the certificate's order"
                for e in entries
                if dn_pattern_matches(e, reversed_dn)
            ),
            "",
        )
        status: Status = "fail" if to_here and client.required else "warn"
        used = (
            f"the URI {tls.uri} connects to this host with it"
            if status == "fail"
            else "clients connecting to this host with it are refused"
        )
        yield Finding(
            status,
            f"Client's Distinguished Name is not on the list of allowed clients "
            f"(tls_allowed_dn_list): {', '.join(ep.users)} refuses the client certificate "
            f"{client.cert.path}, whose DN {dn} matches none of {entries}; {used}{hint}",
            ep.subject,
            evidence,
        )
