"""TLS for libvirt's remote access: which certificates the daemons and the client use, whether
TLS is in use at all, the certificates parsed with `cryptography`, and the host's names and
clock that they are judged against.

Where libvirt looks (src/rpc/virnettlsconfig.c, src/remote/remote_daemon.c):

- a daemon (libvirtd, virtproxyd) takes `ca_file`, `cert_file`, `key_file`, `crl_file` from
  its configuration file; when none of the first three is set it uses /etc/pki/CA/cacert.pem,
  /etc/pki/libvirt/servercert.pem and /etc/pki/libvirt/private/serverkey.pem. Setting one
  without the others stops it ("No CA certificate path set to match server key/cert").
- a client uses `pkipath=DIR` from the URI (DIR/cacert.pem, DIR/clientcert.pem,
  DIR/clientkey.pem), else, when not root, each of ~/.pki/libvirt/cacert.pem, clientcert.pem,
  clientkey.pem that exists, else /etc/pki/CA/cacert.pem, /etc/pki/libvirt/clientcert.pem and
  /etc/pki/libvirt/private/clientkey.pem.

A private key is never read here: `source.key_info(path)` loads it inside the source and
answers with its public half only; its mode and owner come from `source.stat`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import shlex
from collections.abc import Sequence
from dataclasses import asdict, field
from typing import TYPE_CHECKING, Any, Optional

from doctor.facts import FactContext, fact
from doctor.facts.util import read_optional, read_text
from doctor.record import record
from doctor.sources.base import (
    AccessDenied,
    KeyInfo,
    NotFound,
    ProcessInfo,
    SourceError,
    StatInfo,
)

if TYPE_CHECKING:
    from cryptography import x509

DEFAULT_CA = "/etc/pki/CA/cacert.pem"
DEFAULT_CRL = "/etc/pki/CA/cacrl.pem"
DEFAULT_SERVER_CERT = "/etc/pki/libvirt/servercert.pem"
DEFAULT_SERVER_KEY = "/etc/pki/libvirt/private/serverkey.pem"
DEFAULT_CLIENT_CERT = "/etc/pki/libvirt/clientcert.pem"
DEFAULT_CLIENT_KEY = "/etc/pki/libvirt/private/clientkey.pem"
DEFAULT_TLS_PORT = "16514"
# The daemons that accept remote connections. Both read the same settings.
SERVER_DAEMONS = ("libvirtd", "virtproxyd")
CERT_SETTINGS = ("ca_file", "cert_file", "key_file", "crl_file")
TLS_SETTINGS = (
    "listen_tls",
    "listen_tcp",
    "listen_addr",
    "tls_port",
    *CERT_SETTINGS,
    "tls_no_verify_certificate",
    "tls_no_sanity_certificate",
    "tls_allowed_dn_list",
    "tls_priority",
)
# Where distributions keep the daemons' start-up arguments (LIBVIRTD_ARGS="--listen").
ARGS_FILES = ("/etc/default/{daemon}", "/etc/sysconfig/{daemon}")
SOCKET_WANTS = "/etc/systemd/system/sockets.target.wants/{daemon}-tls.socket"
# libvirt's remote daemons parse their options with getopt_long("hvdlf:p:t:").
_LONG_OPTIONS = ("help", "version", "daemon", "listen", "config", "timeout", "pid-file")
_WITH_VALUE = {"config", "timeout", "pid-file", "f", "t", "p"}
_PEM_CERT = re.compile(
    rb"-----BEGIN (?:X509 )?CERTIFICATE-----.+?-----END (?:X509 )?CERTIFICATE-----", re.DOTALL
)
MAX_CHAIN = 8
# URI parameters that change how the client handles TLS.
CLIENT_PARAMS = ("pkipath", "no_verify", "no_sanity", "tls_priority")


# --- certificates -------------------------------------------------------------------------------


@record
class CertInfo:
    """What a certificate says, as a reader of the report can check it with `openssl x509`."""

    subject: str  # RFC 4514
    issuer: str
    common_name: Optional[str]
    san_dns: tuple[str, ...]
    san_ip: tuple[str, ...]
    not_before: str  # ISO 8601, UTC
    not_after: str
    serial: str  # hexadecimal
    sha256: str  # fingerprint of the certificate's DER (openssl x509 -fingerprint -sha256)
    public_sha256: str  # SHA-256 of the SubjectPublicKeyInfo DER; compare KeyInfo.public_sha256
    public_key: str  # "EC 256", "RSA 2048", "Ed25519"
    version: int  # 1 or 3
    is_ca: Optional[bool]  # basicConstraints CA flag; None when the extension is absent
    key_usage: Optional[tuple[str, ...]]  # None when the extension is absent
    signature_algorithm: str
    key_usage_critical: bool = False
    # Extended key usage (purposes): "serverAuth", "clientAuth", "anyExtendedKeyUsage" or a
    # dotted OID; None when the extension is absent.
    purposes: Optional[tuple[str, ...]] = None
    purposes_critical: bool = False
    # The subject as GnuTLS's gnutls_x509_crt_get_dn() prints it, which is what libvirt
    # matches tls_allowed_dn_list against (and virt-pki-query-dn shows): the attributes in
    # the order the certificate holds them ("C=GB,O=Example,CN=client"), unlike RFC 4514.
    dn: str = ""

    @property
    def not_before_ts(self) -> float:
        return _parse_iso(self.not_before)

    @property
    def not_after_ts(self) -> float:
        return _parse_iso(self.not_after)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _iso(when: dt.datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> float:
    return (
        dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()
    )


def iso_time(timestamp: float) -> str:
    return _iso(dt.datetime.fromtimestamp(timestamp, dt.timezone.utc))


def _validity(cert: x509.Certificate) -> tuple[dt.datetime, dt.datetime]:
    # cryptography 42 added the timezone-aware properties and deprecated the naive ones.
    before = getattr(cert, "not_valid_before_utc", None) or cert.not_valid_before
    after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after
    return before, after


def _public_key_text(key: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519

    size = getattr(key, "key_size", None)
    for kind, label in (
        (rsa.RSAPublicKey, "RSA"),
        (ec.EllipticCurvePublicKey, "EC"),
        (ed25519.Ed25519PublicKey, "Ed25519"),
        (ed448.Ed448PublicKey, "Ed448"),
        (x25519.X25519PublicKey, "X25519"),
        (x448.X448PublicKey, "X448"),
        (dsa.DSAPublicKey, "DSA"),
    ):
        if isinstance(key, kind):
            return f"{label} {size}" if size else label
    return type(key).__name__


def _sha256(data: bytes) -> str:
    """hashlib imported when a certificate is read, not with the module (OpenSSL's libcrypto
    is a tenth of a `run --select KVM`)."""
    import hashlib

    return hashlib.sha256(data).hexdigest()


def describe_certificate(cert: x509.Certificate) -> CertInfo:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    dns: list[str] = []
    ips: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        ips = [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    is_ca: Optional[bool] = None
    with contextlib.suppress(x509.ExtensionNotFound):
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage: Optional[tuple[str, ...]] = None
    usage_critical = False
    try:
        ku_ext = cert.extensions.get_extension_for_class(x509.KeyUsage)
        ku, usage_critical = ku_ext.value, ku_ext.critical
        names = (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
        )
        usage = tuple(n for n in names if getattr(ku, n))
    except x509.ExtensionNotFound:
        pass
    purposes: Optional[tuple[str, ...]] = None
    purposes_critical = False
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        purposes = tuple(PURPOSE_NAMES.get(o.dotted_string, o.dotted_string) for o in eku.value)
        purposes_critical = eku.critical
    except x509.ExtensionNotFound:
        pass
    before, after = _validity(cert)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    algorithm = getattr(cert.signature_algorithm_oid, "_name", None) or str(
        cert.signature_algorithm_oid.dotted_string
    )
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        common_name=str(cns[0].value) if cns else None,
        san_dns=tuple(dns),
        san_ip=tuple(ips),
        not_before=_iso(before),
        not_after=_iso(after),
        serial=f"{cert.serial_number:x}",
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
        public_sha256=_sha256(spki),
        public_key=_public_key_text(cert.public_key()),
        version=1 if cert.version.name == "v1" else 3,
        is_ca=is_ca,
        key_usage=usage,
        signature_algorithm=algorithm,
        key_usage_critical=usage_critical,
        purposes=purposes,
        purposes_critical=purposes_critical,
        dn=gnutls_dn(cert.subject),
    )


# Extended key usage OIDs by the names RFC 5280 gives them.
PURPOSE_NAMES = {
    "1.3.6.1.5.5.7.3.1": "serverAuth",
    "1.3.6.1.5.5.7.3.2": "clientAuth",
    "2.5.29.37.0": "anyExtendedKeyUsage",
}
# The short names GnuTLS prints in a DN (lib/x509/common.c, _oid2str); other attributes
# are printed by their dotted OID.
DN_NAMES = {
    "2.5.4.6": "C",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.3": "CN",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.9": "street",
    "2.5.4.5": "serialNumber",
    "2.5.4.12": "title",
    "2.5.4.4": "surName",
    "2.5.4.42": "givenName",
    "2.5.4.43": "initials",
    "2.5.4.44": "generationQualifier",
    "2.5.4.46": "dnQualifier",
    "2.5.4.65": "pseudonym",
    "2.5.4.17": "postalCode",
    "2.5.4.41": "name",
    "0.9.2342.19200300.100.1.25": "DC",
    "0.9.2342.19200300.100.1.1": "UID",
    "1.2.840.113549.1.9.1": "EMAIL",
}
_DN_SPECIAL = ',+"\\<>;'


def gnutls_dn(name: x509.Name) -> str:
    """`name` as GnuTLS's gnutls_x509_crt_get_dn() prints it: relative names in the order
    the certificate holds them, joined by ",", several values of one joined by "+", the
    characters ,+"\\<>; escaped with a backslash."""
    parts = []
    for rdn in name.rdns:
        values = []
        for attribute in rdn:
            oid = attribute.oid.dotted_string
            value = attribute.value
            text = value if isinstance(value, str) else value.decode("utf-8", "replace")
            escaped = "".join(f"\\{c}" if c in _DN_SPECIAL else c for c in text)
            values.append(f"{DN_NAMES.get(oid, oid)}={escaped}")
        parts.append("+".join(values))
    return ",".join(parts)


def dn_pattern_matches(pattern: str, dn: str) -> bool:
    """Whether `dn` matches one tls_allowed_dn_list entry as libvirt matches it
    (g_pattern_match_simple): `*` is any run of characters, `?` any one character, every
    other character itself; the whole DN must match."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, dn, re.DOTALL) is not None


def load_pem_certificates(data: bytes) -> list[x509.Certificate]:
    """Every PEM certificate in `data`, in order (libvirt and GnuTLS read PEM only). Raises
    ValueError when a block is not a certificate."""
    from cryptography import x509

    return [x509.load_pem_x509_certificate(block) for block in _PEM_CERT.findall(data)]


def verify_signature(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """Check that `issuer`'s key signed `cert`, for cryptography releases without
    Certificate.verify_directly_issued_by (before 40). Raises InvalidSignature, or
    ValueError/TypeError when the algorithm cannot be checked."""
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
    from cryptography.x509.oid import SignatureAlgorithmOID

    key = issuer.public_key()
    signature, data = cert.signature, cert.tbs_certificate_bytes
    algorithm = cert.signature_hash_algorithm
    if isinstance(key, rsa.RSAPublicKey):
        if algorithm is None:
            raise ValueError("an RSA signature without a hash algorithm")
        if cert.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS:
            auto = getattr(padding.PSS, "AUTO", None)
            if auto is None:
                raise ValueError("RSASSA-PSS signatures need cryptography 37 or later")
            pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=auto)
            key.verify(signature, data, pss, algorithm)
        else:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if algorithm is None:
            raise ValueError("an ECDSA signature without a hash algorithm")
        key.verify(signature, data, ec.ECDSA(algorithm))
    elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        key.verify(signature, data)
    elif isinstance(key, dsa.DSAPublicKey):
        if algorithm is None:
            raise ValueError("a DSA signature without a hash algorithm")
        key.verify(signature, data, algorithm)
    else:
        raise TypeError(f"cannot verify signatures made with a {type(key).__name__}")


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> Optional[str]:
    """None when `issuer` issued `cert` (names match and its key verifies the signature), else
    what is wrong, in words."""
    from cryptography.exceptions import InvalidSignature

    if cert.issuer != issuer.subject:
        return f"issued by {cert.issuer.rfc4514_string()}, not by {issuer.subject.rfc4514_string()}"
    try:
        direct = getattr(cert, "verify_directly_issued_by", None)
        if direct is not None:
            direct(issuer)
        else:
            verify_signature(cert, issuer)
    except InvalidSignature:
        return (
            f"names {issuer.subject.rfc4514_string()} as its issuer, but that CA's key did not "
            "sign it (another CA with the same name, or a re-generated CA key)"
        )
    except (ValueError, TypeError) as exc:
        return f"the signature could not be checked: {exc}"
    return None


def _ca_problem(ca: x509.Certificate) -> Optional[str]:
    """What GnuTLS and libvirt hold against using `ca` as an issuer."""
    info = describe_certificate(ca)
    if info.version == 1:
        return None  # GnuTLS accepts trusted version 1 CA certificates
    if info.is_ca is None:
        return f"the CA certificate {info.subject} is missing basic constraints for a CA"
    if not info.is_ca:
        return f"the CA certificate {info.subject} has basic constraints that do not show a CA"
    if info.key_usage is not None and "key_cert_sign" not in info.key_usage:
        return f"the CA certificate {info.subject} key usage does not permit certificate signing"
    return None


@record
class ChainCheck:
    """Whether the certificate verifies against the configured CA file, as GnuTLS would."""

    verified: bool
    path: tuple[str, ...]  # subjects from the certificate up to the trusted CA
    problem: Optional[str] = None
    revoked_by: Optional[str] = None  # the CRL that lists the certificate's serial

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_chain(
    leaf: x509.Certificate,
    anchors: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
) -> ChainCheck:
    """Build a path from `leaf` to one of `anchors` (the CA file), through `intermediates`
    (the certificates after the first in the certificate file), checking each signature."""
    current = leaf
    path = [leaf.subject.rfc4514_string()]
    used: set[int] = set()
    for _ in range(MAX_CHAIN):
        problems = []
        for anchor in anchors:
            problem = issued_by(current, anchor)
            if problem is None:
                ca_problem = _ca_problem(anchor)
                if ca_problem is not None:
                    return ChainCheck(False, tuple(path), ca_problem)
                return ChainCheck(True, (*path, anchor.subject.rfc4514_string()))
            if current.issuer == anchor.subject:
                problems.append(problem)
        nxt = next(
            (
                (i, c)
                for i, c in enumerate(intermediates)
                if i not in used and issued_by(current, c) is None
            ),
            None,
        )
        if nxt is None:
            if problems:
                return ChainCheck(False, tuple(path), problems[0])
            held = "; ".join(a.subject.rfc4514_string() for a in anchors) or "no certificate"
            return ChainCheck(
                False,
                tuple(path),
                f"issued by {current.issuer.rfc4514_string()}, which is not in the CA file "
                f"(it holds {held}): the certificate hasn't got a known issuer",
            )
        used.add(nxt[0])
        current = nxt[1]
        path.append(current.subject.rfc4514_string())
    return ChainCheck(False, tuple(path), f"no trusted CA within {MAX_CHAIN} certificates")


# --- what was found on disk ---------------------------------------------------------------------


@record
class CertFile:
    """A certificate file as libvirt would read it."""

    path: Optional[str]  # None: the configuration left it unset while setting others
    origin: str  # "cert_file in /etc/libvirt/libvirtd.conf", "default", "pkipath in the URI"
    state: str  # "ok", "unset", "missing", "unreadable", "invalid", "empty"
    error: Optional[str] = None
    certs: tuple[CertInfo, ...] = ()
    stat: Optional[StatInfo] = None

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    @property
    def leaf(self) -> Optional[CertInfo]:
        return self.certs[0] if self.certs else None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["stat"] = self.stat.as_dict() if self.stat else None
        return out


@record
class KeyFile:
    """A private key: where it is, its mode and owner, and its public half (never its contents)."""

    path: Optional[str]
    origin: str
    state: str  # "ok", "unset", "missing", "unreadable" (by kvmdoctor), "unusable", "unknown"
    error: Optional[str] = None
    stat: Optional[StatInfo] = None
    info: Optional[KeyInfo] = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "origin": self.origin,
            "state": self.state,
            "error": self.error,
            "stat": self.stat.as_dict() if self.stat else None,
            "public_key": self.info.as_dict() if self.info else None,
        }


@record
class Reader:
    """Who must read the key and certificates: the daemon, or the user running the client."""

    name: str  # "libvirtd (pid 812)", "libvirtd (not running: root)", "user root"
    uid: int
    gids: tuple[int, ...]
    known_from: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@record
class Endpoint:
    """One set of credentials libvirt uses: a daemon's (server) or the client's."""

    role: str  # "server" or "client"
    name: str  # "server", "server:virtproxyd", "client"
    users: tuple[str, ...]  # the daemons using it, or the client's URI
    why: tuple[str, ...]  # why it is examined
    ca: CertFile
    cert: CertFile
    key: KeyFile
    crl: Optional[str]
    reader: Reader
    chain: Optional[ChainCheck] = None
    required: bool = True  # a client endpoint seen only because files exist is not required
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return f"tls:{self.name}"

    def summary(self) -> dict[str, Any]:
        """The endpoint in a few fields, for evidence."""
        return {
            "role": self.role,
            "used_by": list(self.users),
            "why": list(self.why),
            "ca_file": self.ca.path,
            "cert_file": self.cert.path,
            "key_file": self.key.path,
            "crl_file": self.crl,
            "settings": dict(self.settings),
        }


@record
class DaemonTls:
    """A remote daemon's TLS settings and whether it listens (or will) for TLS."""

    daemon: str
    conf_path: str
    conf_exists: bool
    conf_error: Optional[str]
    settings: dict[str, Any]  # the TLS settings present in the file
    listen_tls: bool  # the setting, or libvirt's default (1)
    tls_port: str
    listening: bool
    listening_why: str
    pids: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@record
class TlsState:
    in_use: bool
    reasons: tuple[str, ...]  # why TLS counts as in use
    looked_at: tuple[str, ...]  # what was examined (evidence for "not in use")
    daemons: tuple[DaemonTls, ...]
    endpoints: tuple[Endpoint, ...]
    uri: Optional[str] = None
    # What could not be looked at (a snapshot recorded without it): when TLS does not show
    # as in use, it may still be.
    undetermined: tuple[str, ...] = ()

    def evidence(self) -> dict[str, Any]:
        return {
            "in_use": self.in_use,
            "reasons": list(self.reasons),
            "looked_at": list(self.looked_at),
            "undetermined": list(self.undetermined),
            "uri": self.uri,
        }


# --- the daemons ----------------------------------------------------------------------------


def daemon_arguments(argv: tuple[str, ...]) -> tuple[bool, Optional[str]]:
    """(started with --listen, the --config file) from a libvirtd or virtproxyd command line,
    parsed as getopt_long parses it: `-l`, `-dl`, `--listen`, `--lis`, `-f FILE`, `-fFILE`,
    `--config=FILE`."""
    listen, config = False, None
    args = list(argv[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            matches = [o for o in _LONG_OPTIONS if o.startswith(name)] if name else []
            option = name if name in _LONG_OPTIONS else (matches[0] if len(matches) == 1 else "")
            if option in _WITH_VALUE and not eq:
                i += 1
                value = args[i] if i < len(args) else ""
            if option == "listen":
                listen = True
            elif option == "config":
                config = value
        elif arg.startswith("-") and len(arg) > 1:
            for pos, char in enumerate(arg[1:], start=2):
                if char == "l":
                    listen = True
                elif char in _WITH_VALUE:
                    value = arg[pos:]
                    if not value:
                        i += 1
                        value = args[i] if i < len(args) else ""
                    if char == "f":
                        config = value
                    break
        i += 1
    return listen, config


def _flag(values: dict[str, Any], name: str, default: bool) -> bool:
    value = values.get(name)
    if isinstance(value, int):
        return value != 0
    return default


def _args_file_listen(ctx: FactContext, daemon: str, unknown: list[str]) -> Optional[str]:
    """The file that starts the daemon with --listen (LIBVIRTD_ARGS="--listen"), if any."""
    variable = f"{daemon.upper()}_ARGS"
    for template in ARGS_FILES:
        path = template.format(daemon=daemon)
        try:
            text = read_text(ctx.source, path)
        except NotFound:
            continue
        except SourceError as exc:
            unknown.append(f"{path}: {exc.reason}")
            continue
        for line in text.splitlines():
            name, eq, value = line.strip().partition("=")
            if not eq or name.strip() != variable:
                continue
            try:
                words = shlex.split(value, comments=True)
                words = shlex.split(" ".join(words))
            except ValueError:
                continue
            if daemon_arguments((daemon, *words))[0]:
                return path
    return None


def _status_ids(ctx: FactContext, proc: ProcessInfo) -> tuple[int, ...]:
    """The process's groups: its gid and the supplementary groups of /proc/PID/status."""
    gids = {proc.gid}
    try:
        text = read_text(ctx.source, f"/proc/{proc.pid}/status")
    except SourceError:
        return tuple(sorted(gids))
    for line in text.splitlines():
        if line.startswith("Groups:"):
            gids.update(int(g) for g in line.split()[1:] if g.isdigit())
    return tuple(sorted(gids))


def _daemon_tls(
    ctx: FactContext,
    daemon: str,
    procs: Optional[list[ProcessInfo]],
    units: dict[str, Any],
    unknown: list[str],
) -> DaemonTls:
    from doctor.facts.libvirt import ConfError, parse_conf

    mine = [p for p in procs or [] if p.name == daemon]
    parsed = [(p, *daemon_arguments(p.cmdline)) for p in mine]
    conf_path = next((c for _, _, c in parsed if c and c.startswith("/")), None)
    conf_path = conf_path or f"/etc/libvirt/{daemon}.conf"
    values: dict[str, Any] = {}
    exists, error = True, None
    try:
        values = parse_conf(read_text(ctx.source, conf_path))
    except NotFound:
        exists = False
    except SourceError as exc:
        error = exc.reason
        unknown.append(f"{conf_path}: {exc.reason}")
    except ConfError as exc:
        error = f"libvirt cannot parse it: {exc}"
        unknown.append(f"{conf_path}: {error}")
    settings = {k: values[k] for k in TLS_SETTINGS if k in values}
    listen_tls = _flag(values, "listen_tls", True)
    port = str(values.get("tls_port") or DEFAULT_TLS_PORT)
    listening, why = _listening(ctx, daemon, parsed, units, listen_tls, conf_path, procs, unknown)
    return DaemonTls(
        daemon,
        conf_path,
        exists,
        error,
        settings,
        listen_tls,
        port,
        listening,
        why,
        tuple(p.pid for p in mine),
    )


def _listening(
    ctx: FactContext,
    daemon: str,
    parsed: list[tuple[ProcessInfo, bool, Optional[str]]],
    units: dict[str, Any],
    listen_tls: bool,
    conf_path: str,
    procs: Optional[list[ProcessInfo]],
    unknown: list[str],
) -> tuple[bool, str]:
    socket = f"{daemon}-tls.socket"
    unit = units.get(socket)
    if unit is not None and unit.active == "active":
        return True, f"{socket} is active (systemd listens for the daemon)"
    if unit is not None and unit.enabled == "enabled":
        return True, f"{socket} is enabled: systemd listens for TLS once it starts"
    setting = "listen_tls = 1" if listen_tls else "listen_tls = 0"
    for proc, listen, _ in parsed:
        if listen and listen_tls:
            return (
                True,
                f"{daemon} (pid {proc.pid}) runs with --listen and {setting} in {conf_path}",
            )
    if parsed:
        pids = ", ".join(str(p.pid) for p, _, _ in parsed)
        if any(listen for _, listen, _ in parsed):
            return False, f"{daemon} (pid {pids}) runs with --listen but {setting} in {conf_path}"
        return False, f"{daemon} (pid {pids}) runs without --listen"
    wants = SOCKET_WANTS.format(daemon=daemon)
    try:
        ctx.source.stat(wants)
    except NotFound:
        pass
    except SourceError as exc:
        unknown.append(f"{wants}: {exc.reason}")
    else:
        return True, f"{socket} is enabled ({wants})"
    args_file = _args_file_listen(ctx, daemon, unknown)
    if args_file is not None:
        joined = "and" if listen_tls else "but"
        return (
            listen_tls,
            f"{args_file} starts {daemon} with --listen {joined} {setting} in {conf_path}",
        )
    not_running = "not running" if procs is not None else "processes unknown"
    args_files = ", ".join(t.format(daemon=daemon) for t in ARGS_FILES)
    return False, f"{daemon} {not_running}, no {socket}, no --listen in {args_files}"


# --- the files --------------------------------------------------------------------------------


class _Reader:
    """Reads and parses each certificate file once per run."""

    def __init__(self, ctx: FactContext, unknown: list[str]) -> None:
        self.ctx = ctx
        self.unknown = unknown  # what could not be looked at (a snapshot that lacks it)
        self.parsed: dict[str, tuple[str, Optional[str], list[x509.Certificate], Any]] = {}
        self.crls: dict[str, Any] = {}

    def exists(self, path: str) -> bool:
        """Whether `path` exists; a refusal other than "not found" counts as no, and is noted
        as something that could not be looked at."""
        try:
            self.ctx.source.stat(path)
        except NotFound:
            return False
        except SourceError as exc:
            self.unknown.append(f"{path}: {exc.reason}")
            return False
        return True

    def certificates(self, path: str) -> tuple[str, Optional[str], list[x509.Certificate], Any]:
        """(state, error, certificates, stat) of a certificate file."""
        if path in self.parsed:
            return self.parsed[path]
        st: Optional[StatInfo] = None
        try:
            st = self.ctx.source.stat(path)
            data = self.ctx.source.read_file(path, max_bytes=1024 * 1024)
        except NotFound as exc:
            result: tuple[str, Optional[str], list[Any], Any] = ("missing", exc.reason, [], st)
        except AccessDenied as exc:
            result = ("unreadable", exc.reason, [], st)
        except SourceError as exc:
            result = ("unreadable", exc.reason, [], st)
        else:
            try:
                certs = load_pem_certificates(data)
                for cert in certs:
                    describe_certificate(cert)  # a malformed extension raises here, not later
            except ValueError as exc:
                result = ("invalid", f"a PEM block is not a valid certificate: {exc}", [], st)
            else:
                if certs:
                    result = ("ok", None, certs, st)
                elif data.strip():
                    result = ("invalid", "holds no PEM certificate (libvirt reads PEM)", [], st)
                else:
                    result = ("empty", "the file is empty", [], st)
        self.parsed[path] = result
        return result

    def cert_file(self, path: Optional[str], origin: str, unset: str) -> CertFile:
        if path is None:
            return CertFile(None, origin, "unset", unset)
        state, error, certs, st = self.certificates(path)
        infos = tuple(describe_certificate(c) for c in certs)
        return CertFile(path, origin, state, error, infos, st)

    def key_file(self, path: Optional[str], origin: str, unset: str) -> KeyFile:
        if path is None:
            return KeyFile(None, origin, "unset", unset)
        source = self.ctx.source
        try:
            st = source.stat(path)
        except NotFound as exc:
            return KeyFile(path, origin, "missing", exc.reason)
        except SourceError as exc:
            return KeyFile(path, origin, "unknown", exc.reason)
        try:
            info = source.key_info(path)
        except AccessDenied as exc:
            return KeyFile(path, origin, "unreadable", exc.reason, st)
        except SourceError as exc:
            return KeyFile(path, origin, "unknown", exc.reason, st)
        if not info.loaded:
            return KeyFile(path, origin, "unusable", info.problem, st, info)
        return KeyFile(path, origin, "ok", None, st, info)

    def revoked(self, crl_path: Optional[str], cert: x509.Certificate) -> Optional[str]:
        """The CRL's path when it lists `cert` as revoked (a CRL of another issuer is skipped,
        as GnuTLS skips it)."""
        if not crl_path:
            return None
        if crl_path not in self.crls:
            from cryptography import x509

            try:
                data = self.ctx.source.read_file(crl_path, max_bytes=8 * 1024 * 1024)
                self.crls[crl_path] = x509.load_pem_x509_crl(data)
            except (SourceError, ValueError):
                self.crls[crl_path] = None
        crl = self.crls[crl_path]
        if crl is None or crl.issuer != cert.issuer:
            return None
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        return crl_path if entry is not None else None


def _endpoint(
    files: _Reader,
    *,
    role: str,
    name: str,
    users: tuple[str, ...],
    why: tuple[str, ...],
    paths: dict[str, tuple[Optional[str], str]],
    reader: Reader,
    required: bool = True,
    settings: Optional[dict[str, Any]] = None,
) -> Endpoint:
    ca_path, ca_origin = paths["ca"]
    cert_path, cert_origin = paths["cert"]
    key_path, key_origin = paths["key"]
    crl_path = paths["crl"][0]
    ca = files.cert_file(ca_path, ca_origin, "No CA certificate path set to match server key/cert")
    cert = files.cert_file(
        cert_path, cert_origin, "No server certificate path set to match server key"
    )
    key = files.key_file(key_path, key_origin, "No server key path set to match server cert")
    chain = None
    if ca.ok and cert.ok and ca_path and cert_path:
        anchors = files.certificates(ca_path)[2]
        chain_certs = files.certificates(cert_path)[2]
        chain = check_chain(chain_certs[0], anchors, chain_certs[1:])
        if chain.verified and crl_path and files.exists(crl_path):
            revoked = files.revoked(crl_path, chain_certs[0])
            if revoked:
                chain = ChainCheck(
                    False,
                    chain.path,
                    f"the certificate (serial {chain_certs[0].serial_number:x}) is revoked "
                    f"by {revoked}",
                    revoked,
                )
    return Endpoint(
        role,
        name,
        users,
        why,
        ca,
        cert,
        key,
        crl_path,
        reader,
        chain,
        required,
        settings or {},
    )


def _server_paths(d: DaemonTls) -> dict[str, tuple[Optional[str], str]]:
    configured = {k: d.settings.get(k) for k in CERT_SETTINGS}
    own = any(isinstance(configured[k], str) and configured[k] for k in CERT_SETTINGS[:3])
    defaults = {
        "ca_file": DEFAULT_CA,
        "cert_file": DEFAULT_SERVER_CERT,
        "key_file": DEFAULT_SERVER_KEY,
        "crl_file": DEFAULT_CRL,
    }
    out: dict[str, tuple[Optional[str], str]] = {}
    for setting, short in zip(CERT_SETTINGS, ("ca", "cert", "key", "crl")):
        value = configured[setting]
        if isinstance(value, str) and value:
            out[short] = (value, f"{setting} in {d.conf_path}")
        elif own and setting != "crl_file":
            # libvirt refuses to start: the three go together.
            out[short] = (None, f"{setting} unset in {d.conf_path} while others are set")
        else:
            out[short] = (defaults[setting], "libvirt's default")
    return out


def _daemon_reader(ctx: FactContext, d: DaemonTls, procs: Optional[list[ProcessInfo]]) -> Reader:
    proc = next((p for p in procs or [] if p.pid in d.pids), None)
    if proc is not None:
        return Reader(
            f"{d.daemon} (pid {proc.pid})",
            proc.uid,
            _status_ids(ctx, proc),
            f"/proc/{proc.pid}/status",
        )
    return Reader(f"{d.daemon} (system daemon)", 0, (0,), "the system daemon runs as root")


def _client_paths(
    ctx: FactContext, files: _Reader, uri: Any, root: bool
) -> tuple[dict[str, tuple[Optional[str], str]], str]:
    """Where the client looks, and how that was decided."""
    out: dict[str, tuple[Optional[str], str]]
    names = {
        "ca": "cacert.pem",
        "cert": "clientcert.pem",
        "key": "clientkey.pem",
        "crl": "cacrl.pem",
    }
    defaults = {
        "ca": DEFAULT_CA,
        "cert": DEFAULT_CLIENT_CERT,
        "key": DEFAULT_CLIENT_KEY,
        "crl": DEFAULT_CRL,
    }
    pkipath = uri.parts.params.get("pkipath") if uri is not None else None
    if pkipath:
        base = pkipath.rstrip("/")
        out = {k: (f"{base}/{n}", "pkipath in the URI") for k, n in names.items()}
        return out, f"pkipath={pkipath} in the URI"
    out = {k: (v, "libvirt's default") for k, v in defaults.items()}
    if root:
        return out, "root uses the system-wide paths"
    home = _environ(ctx, "HOME")
    if not home:
        return out, "no $HOME: the system-wide paths"
    user_dir = f"{home.rstrip('/')}/.pki/libvirt"
    for key, name in names.items():
        path = f"{user_dir}/{name}"
        if files.exists(path):
            out[key] = (path, f"{user_dir} (libvirt prefers a user's own files)")
    return out, f"not root: each file of {user_dir} that exists, else the system-wide one"


def _environ(ctx: FactContext, name: str) -> Optional[str]:
    try:
        return ctx.source.environ(name)
    except SourceError:
        return None


def _server_endpoint(
    ctx: FactContext,
    files: _Reader,
    d: DaemonTls,
    name: str,
    users: tuple[str, ...],
    why: tuple[str, ...],
    procs: Optional[list[ProcessInfo]],
) -> Endpoint:
    settings: dict[str, Any] = {
        k: d.settings[k]
        for k in (
            "listen_addr",
            "tls_no_verify_certificate",
            "tls_no_sanity_certificate",
            "tls_allowed_dn_list",
        )
        if k in d.settings
    }
    settings.update(listen_tls=d.listen_tls, tls_port=d.tls_port)
    return _endpoint(
        files,
        role="server",
        name=name,
        users=users,
        why=why,
        paths=_server_paths(d),
        reader=_daemon_reader(ctx, d, procs),
        settings=settings,
    )


def _a_server_daemon(name: str, exe: str) -> bool:
    return name in SERVER_DAEMONS


@fact("tls")
def tls(ctx: FactContext) -> TlsState:
    """Whether TLS is in use (a daemon listens for it, a TLS URI, certificates configured or
    present) and, for each set of credentials in use, the files parsed and checked."""
    source = ctx.source
    unknown: list[str] = []
    files = _Reader(ctx, unknown)
    try:
        procs: Optional[list[ProcessInfo]] = source.processes(_a_server_daemon)
    except SourceError:
        procs = None
    state = ctx.optional("libvirt_daemons")
    units: dict[str, Any] = {}
    if state is not None:
        for daemon in state.daemons.values():
            units.update({u.name: u for u in daemon.units})
    daemons = tuple(_daemon_tls(ctx, d, procs, units, unknown) for d in SERVER_DAEMONS)
    uri = ctx.optional("uri")
    if uri is None:
        unknown.append("the URI in use could not be determined")
    reasons: list[str] = []
    looked: list[str] = []

    # Servers: a daemon that listens, or whose configuration names certificates. Daemons
    # that use the same files share one endpoint.
    groups: dict[tuple[Any, ...], list[tuple[DaemonTls, tuple[str, ...]]]] = {}
    for d in daemons:
        why: list[str] = []
        if d.listening:
            why.append(d.listening_why)
        named = [k for k in CERT_SETTINGS[:3] if d.settings.get(k)]
        if named:
            why.append(f"{', '.join(named)} set in {d.conf_path}")
        looked.append(f"{d.daemon}: {d.listening_why}")
        if not d.conf_exists:
            looked.append(f"{d.conf_path} does not exist")
        elif not named:
            looked.append(f"{d.conf_path} sets no ca_file, cert_file or key_file")
        if why:
            paths = _server_paths(d)
            groups.setdefault(tuple(sorted((k, v[0]) for k, v in paths.items())), []).append(
                (d, tuple(why))
            )
            reasons.extend(why)
    endpoints: list[Endpoint] = []
    for group in groups.values():
        first = group[0][0]
        users = tuple(d.daemon for d, _ in group)
        endpoints.append(
            _server_endpoint(
                ctx,
                files,
                first,
                "server" if len(groups) == 1 else f"server:{users[0]}",
                users,
                tuple(w for _, ws in group for w in ws),
                procs,
            )
        )
    if not groups:
        # No daemon listens or names files, yet server credentials sit at libvirt's default
        # paths: someone set TLS up, and the next `--listen` will use them.
        present = [p for p in (DEFAULT_SERVER_CERT, DEFAULT_SERVER_KEY) if files.exists(p)]
        if present:
            why_default = tuple(f"{p} exists" for p in present)
            reasons.extend(why_default)
            endpoints.append(
                _server_endpoint(
                    ctx, files, daemons[0], "server", ("no daemon listens yet",), why_default, procs
                )
            )
        else:
            looked.append(f"no {DEFAULT_SERVER_CERT} or {DEFAULT_SERVER_KEY}")

    # The client: a TLS URI, or client certificates where this user's client would look.
    try:
        ident = source.identity()
        root, reader = (
            ident.euid == 0,
            Reader(
                f"the client (uid {ident.euid})",
                ident.euid,
                tuple(sorted({ident.gid, *ident.groups})),
                "the kvmdoctor process",
            ),
        )
    except SourceError:
        root, reader = True, Reader("the client (root)", 0, (0,), "assumed: root's paths")
    paths, decided = _client_paths(ctx, files, uri, root)
    client_why: list[str] = []
    uri_text = uri.effective if uri is not None else None
    tls_uri = uri is not None and uri.parts.implied_transport == "tls"
    if tls_uri:
        client_why.append(f"the URI {uri.effective} ({uri.origin}) connects with TLS")
    else:
        looked.append(f"the URI {uri_text} does not use TLS" if uri_text else "no URI")
    present = [p for p in (paths["cert"][0], paths["key"][0]) if p and files.exists(p)]
    client_why += [f"{p} exists" for p in present]
    if not present:
        looked.append(f"no {paths['cert'][0]} or {paths['key'][0]}")
    if client_why:
        reasons.extend(client_why)
        params = uri.parts.params if uri is not None else {}
        endpoints.append(
            _endpoint(
                files,
                role="client",
                name="client",
                users=(uri_text or "the client",),
                why=(*client_why, decided),
                paths=paths,
                reader=reader,
                required=tls_uri,
                settings={k: v for k, v in params.items() if k in CLIENT_PARAMS},
            )
        )
    return TlsState(
        in_use=bool(endpoints),
        reasons=tuple(dict.fromkeys(reasons)),
        looked_at=tuple(looked),
        undetermined=tuple(dict.fromkeys(unknown)),
        daemons=daemons,
        endpoints=tuple(endpoints),
        uri=uri_text,
    )


# --- the host's names and clock ---------------------------------------------------------------


@record
class HostNames:
    """The names clients are likely to use for this host."""

    hostname: Optional[str]
    hostname_from: str
    fqdn: Optional[str]
    fqdn_from: str

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for n in (self.hostname, self.fqdn) if n))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def canonical_from_hosts(text: str, hostname: str) -> Optional[str]:
    """The canonical name /etc/hosts gives `hostname` (the first name on the first line that
    lists it), as getaddrinfo(AI_CANONNAME) with `files` first does for `hostname --fqdn`."""
    wanted = hostname.lower()
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and wanted in (f.lower() for f in fields[1:]):
            return fields[1]
    return None


@fact("host_names")
def host_names(ctx: FactContext) -> HostNames:
    source = ctx.source
    try:
        hostname: Optional[str] = source.uname().nodename
        hostname_from = "uname"
    except SourceError:
        hostname = read_optional(source, "/etc/hostname")
        hostname = hostname.split()[0] if hostname else None
        hostname_from = "/etc/hostname" if hostname else "unknown: no uname, no /etc/hostname"
    if not hostname:
        return HostNames(None, hostname_from, None, "unknown: the hostname is unknown")
    # /etc/hosts first, as glibc's usual "hosts: files dns" order does: it answers without a
    # process and without DNS, which can stall `hostname --fqdn` on a broken resolver.
    hosts = read_optional(source, "/etc/hosts")
    fqdn = canonical_from_hosts(hosts, hostname) if hosts else None
    if fqdn and fqdn != hostname:
        return HostNames(hostname, hostname_from, fqdn, "/etc/hosts")
    try:
        done = source.run(["hostname", "--fqdn"], timeout=5)
    except SourceError:
        done = None
    if done is not None and done.returncode == 0 and len(done.stdout.split()) == 1:
        return HostNames(hostname, hostname_from, done.stdout.strip(), "hostname --fqdn")
    if fqdn:
        return HostNames(hostname, hostname_from, fqdn, "/etc/hosts")
    tried = (
        f"hostname --fqdn said: {done.stderr.strip() or done.returncode}; "
        if done is not None
        else ""
    )
    return HostNames(hostname, hostname_from, None, f"unknown: {tried}not in /etc/hosts")


@record
class HostClock:
    """The time certificates are judged at."""

    time: float
    iso: str
    source: str  # the host's clock, the examining machine's, or the time given with --at
    note: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@fact("host_clock")
def host_clock(ctx: FactContext) -> HostClock:
    if ctx.options.at is not None:
        at = ctx.options.at
        return HostClock(at, iso_time(at), "the time given with --at", None)
    try:
        now = ctx.source.clock()
    except SourceError as exc:
        now = dt.datetime.now(dt.timezone.utc).timestamp()
        return HostClock(
            now,
            iso_time(now),
            "the examining machine's clock",
            f"the host's clock is unavailable ({exc.reason}); certificates are judged at the "
            "time of this run",
        )
    return HostClock(now, iso_time(now), "the host's clock", None)
