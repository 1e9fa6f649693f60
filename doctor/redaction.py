"""`--redact`: identifying values become stable tokens (docs/redaction.md).

Host names and FQDNs, IPv4 and IPv6 addresses, MAC addresses, user names and domain (guest)
names in a report, a snapshot and every format rendered from them are replaced by tokens. A
token is a keyed function of the value (HMAC-SHA256 with a 32-byte key), so the same value
always gets the same token, and nobody without the key can compute a token from a guessed
value -- not even over the small IPv4 or MAC space.

What matters to a diagnosis survives:

- addresses are mapped prefix-preservingly (Crypto-PAn's construction, keyed HMAC as the
  pseudo-random function): two addresses that share their first n bits share the first n
  bits of their tokens, so a subnet stays one token subnet; the last octet of an IPv4 address
  (the host part of the /24 most hosts use: network .0, gateway .1, broadcast .255) is kept;
  unspecified, loopback, multicast, reserved (netmasks such as 255.255.255.0) and
  documentation addresses are kept as they are; private blocks (10/8, 172.16/12,
  192.168/16, 100.64/10, 169.254/16, 198.18/15, fc00::/7, fe80::/64) stay in their block.
- a MAC keeps its first three octets when they are a vendor's OUI (universally
  administered) or libvirt's 52:54:00 / fe:54:00 (so a guest's MAC and its tap's stay
  related); other locally administered prefixes are mapped keeping the multicast and local
  bits; the last three octets are mapped by one keyed permutation; multicast MACs are kept.
- names: `host-XXXXXXXX`, an FQDN `host-XXXXXXXX.dom-YYYYYYYY.invalid` (the first label gets
  the short name's token), `user-XXXXXXXX`, `guest-XXXXXXXX`. System accounts (uid outside
  1000-59999) are not identifying and keep their names: root, libvirt-qemu, qemu. A
  guest's interface named by its definition is `nic-XXXXXXXX`; a wildcard certificate name
  `*.dom-YYYYYYYY.invalid`, the token of its domain as in the FQDNs.
- an IPv6 interface identifier made of a MAC (modified EUI-64) becomes the EUI-64 of that
  MAC's token; version fields keep their four-part versions (not IPv4 addresses there).

The key comes from the map file (`--redact-map FILE`), else from a per-host key file created
0600 under /var/lib/kvmdoctor (root) or $XDG_STATE_HOME/kvmdoctor (~/.local/state/kvmdoctor)
-- KVMDOCTOR_STATE_DIR overrides both. The map file holds the key and every value -> token
pair used; it is written 0600 and is never part of a report or a snapshot.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any, Optional, Union

MAP_FORMAT = "kvmdoctor-redact-map"
MAP_VERSION = 1
KEY_FILE = "redact.key"
# Debian's ranges: 0-999 system accounts, 1000-59999 people, 60000-65535 system again
# (libvirt-qemu is 64055, nobody 65534).
HUMAN_UIDS = range(1000, 60000)
# Accounts a report may name without their uid that are the system's, not a person's.
SYSTEM_USERS = frozenset(
    {"root", "nobody", "daemon", "qemu", "libvirt-qemu", "libvirt-dnsmasq", "dnsmasq", "tss"}
)

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# Kept as they are: they say what an address is (any, loopback, multicast, a netmask, an
# example), not whose it is.
_KEEP_V4 = [
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "127.0.0.0/8",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "192.0.0.0/24",
    )
]
# Blocks an address stays in: private, shared, link-local and benchmarking space.
_BLOCKS_V4 = [
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "198.18.0.0/15",
    )
]
_KEEP_V6 = [ipaddress.ip_network(n) for n in ("::/128", "::1/128", "ff00::/8", "2001:db8::/32")]
# (block, bits kept): link-local keeps its whole /64 prefix, ULA its /7, global unicast /3.
_BLOCKS_V6 = [
    (ipaddress.ip_network("fe80::/10"), 64),
    (ipaddress.ip_network("fc00::/7"), 7),
    (ipaddress.ip_network("2000::/3"), 3),
]
_V4_HOST_BITS = 8  # the last octet is kept

# Libvirt's own MAC prefixes: guests get 52:54:00:xx:xx:xx, their taps fe:54:00:xx:xx:xx.
_LIBVIRT_OUIS = (0x525400, 0xFE5400)

_HEX = "[0-9A-Fa-f]"
_MAC = rf"{_HEX}{{2}}(?P<sep>[:-]){_HEX}{{2}}(?:(?P=sep){_HEX}{{2}}){{4}}"
_V4 = r"(?:\d{1,3}\.){3}\d{1,3}"
_V6 = rf"(?:{_HEX}{{0,4}}:){{2,7}}(?:{_V4}|{_HEX}{{0,4}})"
_SCAN = re.compile(
    # after a word and a colon (`mac:52:54:...`, `ip:10.0.0.1`), never inside a longer run
    # of hex digits and colons
    rf"(?:(?<=mac:)|(?<=[G-Zg-z_]:)|(?<![0-9A-Za-z:.-]))"
    rf"(?:(?P<mac>{_MAC})(?![0-9A-Za-z:-])"
    rf"|(?P<v6>{_V6})(?![0-9A-Za-z:])"
    rf"|(?P<v4>{_V4})(?![0-9A-Za-z]|\.\d))"
)


# Interface names libvirt makes itself for guests: not the guest's.
_AUTO_NIC = re.compile(r"(?:vnet|macvtap|macvlan|tap|vif)[0-9.]+")

# Keys whose values are versions ("version", "libvirt_version", LIB009's "versions").
_VERSION_KEY = re.compile(r"(?:^|_)versions?$", re.IGNORECASE)

_HOSTNAME = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))*")


class RedactMapError(Exception):
    """The map file cannot be read or is not a kvmdoctor redaction map."""


def state_dir() -> str:
    """Where the per-host key lives."""
    override = os.environ.get("KVMDOCTOR_STATE_DIR")
    if override:
        return override
    if os.geteuid() == 0:
        return "/var/lib/kvmdoctor"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "kvmdoctor")


def host_key(attempts: int = 5) -> tuple[bytes, Optional[str]]:
    """The per-host key (created 0600 on first use), and a warning when none could be kept.
    A key file that holds no key (emptied, cut short) is left as it is: this run's tokens
    are then its own, and the warning says so."""
    folder = state_dir()
    path = os.path.join(folder, KEY_FILE)
    try:
        with open(path, "rb") as handle:
            key = bytes.fromhex(handle.read().decode("ascii").strip())
        if len(key) >= 16:
            return key, None
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    key = secrets.token_bytes(32)
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key.hex() + "\n")
    except FileExistsError:
        if attempts > 1:  # another run created it meanwhile and may be writing it still
            time.sleep(0.02)
            return host_key(attempts - 1)
        return key, (
            f"cannot use the redaction key in {path} (it holds no key): tokens are stable "
            "within this run only; remove the file to have a new key made, or use "
            "--redact-map FILE"
        )
    except OSError as exc:
        return key, (
            f"cannot keep a redaction key in {path} ({exc.strerror}): tokens are stable "
            "within this run only; use --redact-map FILE to keep them"
        )
    return key, None


class Redactor:
    """Maps identifying values to tokens; `text`, `value` and `report` apply it."""

    def __init__(self, key: bytes, known: Optional[Mapping[str, str]] = None) -> None:
        self.key = key
        self.tokens: dict[str, str] = dict(known or {})  # "kind:value" -> token
        self.hosts: set[str] = set()
        self.users: set[str] = set()
        self.guests: set[str] = set()
        self.wildcards: set[str] = set()  # DNS domains of wildcard certificate names
        self.nics: set[str] = set()  # guests' interfaces that their definitions name
        self._system: set[str] = set(SYSTEM_USERS)  # seen with a system uid
        self._host_forms: dict[str, str] = {}  # a host name as written -> in lower case
        self._bits: dict[tuple[int, int, int], int] = {}
        self._names: Optional[re.Pattern[str]] = None
        self._by_name: dict[str, str] = {}

    # -- the map file ----------------------------------------------------------------------
    @classmethod
    def open(cls, map_path: Optional[str]) -> tuple[Redactor, Optional[str]]:
        """The redactor for this run: the map file's key and tokens when it exists, else
        the host key. Returns a warning to print, or None."""
        if map_path is not None and os.path.exists(map_path):
            try:
                with open(map_path, encoding="utf-8") as handle:
                    data = json.load(handle)
                if data.get("format") != MAP_FORMAT:
                    raise ValueError(f"not a {MAP_FORMAT} file")
                if data.get("version") != MAP_VERSION:
                    raise ValueError(f"version {data.get('version')}; this kvmdoctor reads 1")
                key = bytes.fromhex(data["key"])
                known = {f"{e['kind']}:{e['value']}": e["token"] for e in data["tokens"]}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise RedactMapError(f"cannot use {map_path} as a redaction map: {exc}") from None
            redactor = cls(key, known)
            for entry in data["tokens"]:
                redactor._learn(entry["kind"], entry["value"])
            return redactor, None
        key, warning = host_key()
        return cls(key), warning

    def save(self, map_path: str) -> None:
        """Write the key and every value -> token pair to `map_path`, mode 0600."""
        from doctor.output import write_file

        entries = []
        for item, token in sorted(self.tokens.items()):
            kind, value = item.split(":", 1)
            entries.append({"kind": kind, "value": value, "token": token})
        data = {
            "format": MAP_FORMAT,
            "version": MAP_VERSION,
            "note": "kvmdoctor --redact: the key and the tokens of the values it replaced. "
            "Keep this file on the host; it undoes the redaction.",
            "key": self.key.hex(),
            "tokens": entries,
        }
        old = os.umask(0o177)  # a new file is created 0600; an existing one keeps its mode
        try:
            write_file(map_path, (json.dumps(data, indent=1) + "\n").encode())
        finally:
            os.umask(old)
        if os.path.isfile(map_path) and not os.path.islink(map_path):
            os.chmod(map_path, 0o600)

    # -- what is identifying ---------------------------------------------------------------
    def _learn(self, kind: str, value: str) -> None:
        if kind == "host":
            self.hosts.add(value)
        elif kind == "user":
            self.users.add(value)
        elif kind == "guest":
            self.guests.add(value)
        elif kind == "wildcard":
            self.wildcards.add(value)
            self.wildcard(value)  # in the map, so that a later run learns it too
        elif kind == "nic":
            self.nics.add(value)
        else:
            return
        self._names = None

    def learn_host(self, name: Optional[str]) -> None:
        """A host name or FQDN (a certificate's "libvirt CA" is not one, nor localhost); a
        certificate's wildcard name (`*.example.com`) teaches its DNS domain."""
        if not name or not isinstance(name, str):
            return
        written = name.strip().rstrip(".")
        if written.startswith("*.") and "." in written[2:]:
            domain = written[2:].lower()
            if _HOSTNAME.fullmatch(domain) and not _is_address(domain):
                self._learn("wildcard", domain)
            return
        name = written.lower()
        local = name == "localhost" or name.startswith("localhost.")
        if _HOSTNAME.fullmatch(name) and not _is_address(name) and not local:
            self._learn("host", name)
            if written != name:
                self._host_forms[written] = name

    def learn_user(self, name: Optional[str], uid: Optional[int] = None) -> None:
        if not name or not isinstance(name, str):
            return
        if uid is not None and uid not in HUMAN_UIDS:
            self._system.add(name)
            return
        if uid is None and name in self._system:
            return
        self._learn("user", name)

    def learn_guest(self, name: Optional[str]) -> None:
        if name and isinstance(name, str):
            self._learn("guest", name)

    def learn_nic(self, name: Optional[str]) -> None:
        """A guest's interface name (`<target dev=...>`): one its definition chose (often after
        the guest: `web1-eth0`) is identifying; libvirt's own (vnet3, macvtap0) is not."""
        if name and isinstance(name, str) and not _AUTO_NIC.fullmatch(name):
            self._learn("nic", name)

    def learn_facts(self, facts: Any) -> None:
        """The names a run's facts know: the hostname and FQDN, human accounts, the invoking
        user, domains, the names in certificates, the host in the URI."""

        def fact(name: str) -> Any:
            try:
                return facts.optional(name)
            except Exception:  # noqa: BLE001 - a fact that fails here failed its checks too
                return None

        host = fact("host")
        if host is not None:
            self.learn_host(host.hostname)
        names = fact("host_names")
        if names is not None:
            for name in names.names:
                self.learn_host(name)
        accounts = fact("accounts")
        if accounts is not None:
            for user in accounts.users:
                self.learn_user(user.name, user.uid)
        principals = fact("principals")
        if principals is not None:
            for who in principals.items:
                self.learn_user(who.name, who.uid)
        domains = fact("domains")
        if domains is not None:
            for dom in domains.items:
                self.learn_guest(dom.name)
                for iface in dom.interfaces:
                    self.learn_nic(iface.target)
        uri = fact("uri")
        if uri is not None and getattr(uri, "uri", None):
            self.learn_host(_uri_host(uri.uri))
        tls = fact("tls")
        if tls is not None:
            self._learn_certs(tls)

    def _learn_certs(self, value: Any) -> None:
        """Names in certificates (common names and DNS SANs), wherever the TLS fact holds
        them."""
        seen: set[int] = set()

        def walk(item: Any) -> None:
            if id(item) in seen or isinstance(item, (str, bytes, int, float, bool)):
                return
            seen.add(id(item))
            if hasattr(item, "san_dns") and hasattr(item, "common_name"):
                for name in (item.common_name, *item.san_dns):
                    self.learn_host(name)
                return
            if isinstance(item, Mapping):
                for sub in item.values():
                    walk(sub)
            elif isinstance(item, (list, tuple, set, frozenset)):
                for sub in item:
                    walk(sub)
            elif hasattr(item, "__dataclass_fields__"):
                for field in item.__dataclass_fields__:
                    walk(getattr(item, field))

        walk(value)

    def learn_report(self, report: Mapping[str, Any]) -> None:
        """The names a saved report shows (for `report convert --redact`, which has no
        facts): the host, the user, subjects, and evidence fields that name hosts, users,
        accounts and domains. A fleet report (`report merge`) names each host in `fleet`,
        in `run.source` and at the head of its subjects (`host:NAME/domain:web1`)."""
        host = report.get("host") or {}
        self._learn_host_section(host)
        fleet = report.get("fleet")
        members = fleet.get("hosts") if isinstance(fleet, Mapping) else None
        for member in members if isinstance(members, list) else []:
            if isinstance(member, Mapping):
                self.learn_host(member.get("name"))
                self._learn_host_section(member)
        run = report.get("run") or {}
        given_source = run.get("source")
        source: Mapping[str, Any] = given_source if isinstance(given_source, Mapping) else {}
        for merged in source.get("reports") or []:
            if isinstance(merged, Mapping):
                self.learn_host(merged.get("host"))
        findings = [f for c in report.get("checks") or [] for f in c.get("findings") or []]
        for finding in findings:  # first: which accounts the evidence shows as the system's
            self._learn_evidence(finding.get("evidence"))
        self.learn_user(run.get("user"))
        for item in [*findings, *(report.get("diagnoses") or [])]:
            self._learn_subject(str(item.get("subject") or ""))

    def _learn_host_section(self, host: Mapping[str, Any]) -> None:
        """A report's `host`, or a fleet's entry for one host: its name, guests and their
        interface names, the host in its URI."""
        self.learn_host(host.get("hostname"))
        given = host.get("network")
        network: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
        guests = host.get("guests")  # a fleet's entry counts them
        for guest in [
            *(guests if isinstance(guests, list) else []),
            *(network.get("guests") or []),
        ]:
            if isinstance(guest, dict):
                self.learn_guest(guest.get("name"))
                for nic in guest.get("nics") or []:
                    if isinstance(nic, dict):
                        self.learn_nic(nic.get("target"))
        if isinstance(host.get("uri"), str):
            self.learn_host(_uri_host(host["uri"]))

    def _learn_subject(self, subject: str) -> None:
        """`domain:NAME`, `user:NAME`, and a fleet's `host:NAME` or `host:NAME/SUBJECT`."""
        if subject.startswith("host:"):
            name, _, subject = subject[len("host:") :].partition("/")
            self.learn_host(name)
        kind, _, name = subject.partition(":")
        if kind == "domain":
            self.learn_guest(name)
        elif kind == "user":
            self.learn_user(name)

    def _learn_evidence(self, value: Any) -> None:
        if isinstance(value, list):
            for item in value:
                self._learn_evidence(item)
            return
        if not isinstance(value, Mapping):
            return
        if isinstance(value.get("name"), str) and isinstance(value.get("uid"), int):
            self.learn_user(value["name"], value["uid"])
        for key, item in value.items():
            if key in ("domain", "domain_name", "guest") and isinstance(item, str):
                self.learn_guest(item)
            elif key in ("hostname", "fqdn", "common_name") and isinstance(item, str):
                self.learn_host(item)
            elif key in ("san_dns", "names") and isinstance(item, list):
                for name in item:
                    if isinstance(name, str) and key == "san_dns":
                        self.learn_host(name)
            elif key == "domains" and isinstance(item, list):
                for name in item:
                    if isinstance(name, str):
                        self.learn_guest(name)
                    else:
                        self._learn_evidence(name)
            else:
                self._learn_evidence(item)

    # -- tokens ----------------------------------------------------------------------------
    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self.key, data, hashlib.sha256).digest()

    def _token(self, kind: str, value: str, make: Any) -> str:
        item = f"{kind}:{value}"
        token = self.tokens.get(item)
        if token is None:
            token = make()
            self.tokens[item] = token
        return token

    def _name_token(self, kind: str, prefix: str, value: str) -> str:
        def make() -> str:
            digest = self._mac(f"{kind}\0{value}".encode()).hex()
            used = set(self.tokens.values())
            for width in range(8, len(digest) + 1, 2):
                token = f"{prefix}-{digest[:width]}"
                if token not in used:
                    return token
            raise AssertionError("HMAC-SHA256 digests ran out")  # pragma: no cover

        return self._token(kind, value, make)

    def host(self, name: str) -> str:
        name = name.rstrip(".").lower()
        label, _, domain = name.partition(".")
        short = self._name_token("host", "host", label)
        if not domain:
            return short
        self.tokens.setdefault(f"host:{name}", f"{short}.{self._domain(domain)}.invalid")
        return self.tokens[f"host:{name}"]

    def _domain(self, domain: str) -> str:
        return self._name_token("dns-domain", "dom", domain)

    def wildcard(self, domain: str) -> str:
        """`*.DOMAIN` as the FQDNs of that domain are mapped: `*.dom-XXXXXXXX.invalid`, so a
        wildcard certificate still covers its hosts' tokens."""
        return self._token("wildcard", domain, lambda: f"*.{self._domain(domain)}.invalid")

    def nic(self, name: str) -> str:
        """A guest's interface named in its definition: `nic-XXXXXXXX` (a valid interface
        name, so a redacted snapshot's links and definitions still agree)."""
        return self._name_token("nic", "nic", name)

    def user(self, name: str) -> str:
        return self._name_token("user", "user", name)

    def guest(self, name: str) -> str:
        return self._name_token("guest", "guest", name)

    def _flip(self, family: int, length: int, prefix: int) -> int:
        """The keyed bit for the prefix of `length` bits: Crypto-PAn's f(prefix)."""
        index = (family, length, prefix)
        bit = self._bits.get(index)
        if bit is None:
            data = f"addr{family}\0{length}\0{prefix:x}".encode()
            bit = self._mac(data)[0] & 1
            self._bits[index] = bit
        return bit

    def _permute(self, family: int, value: int, total: int, start: int, stop: int) -> int:
        """Crypto-PAn over bits [start, stop) of a `total`-bit value (bit 0 is the most
        significant): each bit flips by a keyed function of the bits before it, so values
        sharing a prefix share the prefix of their images, and the map is a bijection."""
        out = value
        for i in range(start, stop):
            prefix = value >> (total - i)
            if self._flip(family, i, prefix):
                out ^= 1 << (total - 1 - i)
        return out

    def address(self, addr: IPAddress) -> IPAddress:
        """The token address of `addr` (kept when it identifies nothing)."""
        if isinstance(addr, ipaddress.IPv4Address):
            return ipaddress.IPv4Address(self._v4(int(addr)))
        if addr.ipv4_mapped is not None:
            return ipaddress.IPv6Address((0xFFFF << 32) | self._v4(int(addr.ipv4_mapped)))
        return ipaddress.IPv6Address(self._v6(int(addr)))

    def _v4(self, value: int) -> int:
        addr = ipaddress.IPv4Address(value)
        if any(addr in net for net in _KEEP_V4):
            return value
        stop = 32 - _V4_HOST_BITS
        block = next((net for net in _BLOCKS_V4 if addr in net), None)
        if block is not None:
            if block.prefixlen >= stop:
                return value
            return self._permute(4, value, 32, block.prefixlen, stop)

        def public(v: int) -> bool:
            a = ipaddress.IPv4Address(v)
            return not any(a in net for net in (*_KEEP_V4, *_BLOCKS_V4))

        out = self._permute(4, value, 32, 0, stop)
        while not public(out):  # cycle-walk: a public address stays public
            out = self._permute(4, out, 32, 0, stop)
        return out

    def _v6(self, value: int) -> int:
        addr = ipaddress.IPv6Address(value)
        if any(addr in net for net in _KEEP_V6):
            return value
        block = next(((net, kept) for net, kept in _BLOCKS_V6 if addr in net), None)
        kept = block[1] if block else 16
        iid = value & _IID
        if iid >> 24 & 0xFFFF == 0xFFFE:
            # A modified EUI-64 interface identifier (SLAAC, link-local): the MAC it is made
            # of gets that MAC's token, and the prefix goes as any prefix does, so fe80:: of
            # a NIC stays recognisably that NIC's (its MAC's token) after redaction.
            prefix = self._permute(6, value, 128, kept, 64) & ~_IID if kept < 64 else value
            out = (prefix & ~_IID) | _eui64(self.mac(_mac_of_eui64(iid)))
            while any(ipaddress.IPv6Address(out) in net for net in _KEEP_V6):
                out = (self._permute(6, out, 128, kept, 64) & ~_IID) | (out & _IID)
            return out
        out = self._permute(6, value, 128, kept, 128)
        while any(ipaddress.IPv6Address(out) in net for net in _KEEP_V6):
            out = self._permute(6, out, 128, kept, 128)
        return out

    def mac(self, text: str) -> str:
        sep = ":" if ":" in text else "-"
        value = int(text.replace(sep, ""), 16)
        upper, lower = value >> 24, value & 0xFFFFFF
        if upper >> 16 & 0x01 or value == 0:  # multicast/broadcast, or the null address
            return text
        if not upper >> 16 & 0x02 or upper in _LIBVIRT_OUIS:
            new_upper = upper  # a vendor's OUI, or libvirt's prefix
        else:
            # The 22 other bits of the prefix, keeping octet one's multicast and local bits.
            first, flags = upper >> 16, upper >> 16 & 0x03
            bits = (first >> 2) << 16 | (upper & 0xFFFF)

            def joined(m: int) -> int:
                return ((m >> 16) << 2 | flags) << 16 | (m & 0xFFFF)

            mapped = self._permute(48, bits, 22, 0, 22)
            while joined(mapped) in _LIBVIRT_OUIS:
                mapped = self._permute(48, mapped, 22, 0, 22)
            new_upper = joined(mapped)
        new_lower = self._permute(24, lower, 24, 0, 24)
        hex12 = f"{new_upper:06x}{new_lower:06x}"
        out = sep.join(hex12[i : i + 2] for i in range(0, 12, 2))
        return out.upper() if text.isupper() else out

    # -- applying it -----------------------------------------------------------------------
    def _name_pattern(self) -> Optional[re.Pattern[str]]:
        if self._names is None:
            by_name: dict[str, str] = {}
            for name in self.users:
                by_name[name] = self.user(name)
            for name in self.guests:
                by_name[name] = self.guest(name)
            for name in self.hosts:
                by_name[name] = self.host(name)
                if "." in name:
                    by_name.setdefault(name.split(".", 1)[0], self.host(name.split(".", 1)[0]))
            for domain in self.wildcards:
                by_name[f"*.{domain}"] = self.wildcard(domain)
                by_name.setdefault(domain, self.wildcard(domain)[2:])
            for name in self.nics:
                by_name[name] = self.nic(name)
            for written, name in self._host_forms.items():
                by_name[written] = self.host(name)
                if "." in written:
                    by_name.setdefault(written.split(".", 1)[0], self.host(name.split(".", 1)[0]))
            self._by_name = by_name
            if not by_name:
                return None
            alternatives = "|".join(
                re.escape(n) for n in sorted(by_name, key=lambda n: (-len(n), n))
            )
            self._names = re.compile(rf"(?<![A-Za-z0-9_.-])(?:{alternatives})(?![A-Za-z0-9_-])")
        return self._names

    def text(self, text: str, *, addresses: bool = True) -> str:
        """`text` with every address, MAC and known name replaced by its token; with
        `addresses` False (a version field: "1.2.3.4" is a version there) only the names."""
        if addresses:
            text = _SCAN.sub(self._scan_token, text)
        pattern = self._name_pattern()
        if pattern is not None:
            text = pattern.sub(self._name_token_for, text)
        if self.wildcards:
            # Any FQDN in a wildcard certificate's domain is a host of it, learned or not.
            domains = "|".join(re.escape(d) for d in sorted(self.wildcards, key=len, reverse=True))
            text = re.sub(
                rf"(?<![A-Za-z0-9_.*-])((?:[A-Za-z0-9_-]+\.)+)({domains})(?![A-Za-z0-9_-])",
                lambda m: self.host(m.group(0)),
                text,
                flags=re.IGNORECASE,
            )
        return text

    def _name_token_for(self, match: re.Match[str]) -> str:
        return self._by_name[match.group(0)]

    def _scan_token(self, match: re.Match[str]) -> str:
        found = match.group(0)
        if match.group("mac"):
            return self.mac(found)
        try:
            addr = ipaddress.ip_address(found)
        except ValueError:
            return found
        token = self.address(addr)
        if isinstance(token, ipaddress.IPv6Address) and token.ipv4_mapped and "." in found:
            return f"::ffff:{token.ipv4_mapped}"
        return str(token)

    def value(self, value: Any, *, version: bool = False) -> Any:
        """A JSON value with every string (keys included) redacted. What a version field
        holds (`version`, `*_version`, `versions`: "libvirt_version": "9.0.0", a driver's
        "1.2.3.4") is a version, not an address: only names are replaced in it."""
        if isinstance(value, str):
            return self.text(value, addresses=not version)
        if isinstance(value, list):
            return [self.value(v, version=version) for v in value]
        if isinstance(value, tuple):
            return tuple(self.value(v, version=version) for v in value)
        if isinstance(value, dict):
            return {
                self.text(k) if isinstance(k, str) else k: self.value(
                    v,
                    version=version or (isinstance(k, str) and _VERSION_KEY.search(k) is not None),
                )
                for k, v in value.items()
            }
        return value

    def report(self, report: Mapping[str, Any]) -> dict[str, Any]:
        """The report with every identifying value replaced; `run.redacted` set. The checks'
        codes, names, statuses and the diagnoses' playbooks stay as they are."""
        out: dict[str, Any] = dict(self.value(dict(report)))
        out["tool"] = report.get("tool")
        if "schema_version" in report:
            out["schema_version"] = report["schema_version"]
        for new, old in zip(out.get("checks") or [], report.get("checks") or []):
            for key in ("code", "name", "title", "tags", "origin", "status"):
                if key in old:
                    new[key] = old[key]
            for new_f, old_f in zip(new.get("findings") or [], old.get("findings") or []):
                for key in ("code", "status"):
                    if key in old_f:
                        new_f[key] = old_f[key]
        for new, old in zip(out.get("diagnoses") or [], report.get("diagnoses") or []):
            for key in ("playbook", "status", "rank"):
                if key in old:
                    new[key] = old[key]
        if isinstance(out.get("run"), dict):
            out["run"] = {**out["run"], "redacted": True}
        return out

    def bytes_(self, data: bytes) -> bytes:
        return self.text(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")


_IID = (1 << 64) - 1  # the interface identifier of an IPv6 address: its low 64 bits


def _mac_of_eui64(iid: int) -> str:
    """The MAC a modified EUI-64 interface identifier is made of (RFC 4291 appendix A: the
    universal/local bit flipped, ff:fe in the middle)."""
    raw = iid.to_bytes(8, "big")
    octets = bytes([raw[0] ^ 0x02, raw[1], raw[2], raw[5], raw[6], raw[7]])
    return ":".join(f"{b:02x}" for b in octets)


def _eui64(mac: str) -> int:
    """The modified EUI-64 interface identifier of a MAC."""
    octets = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    return int.from_bytes(
        bytes([octets[0] ^ 0x02, octets[1], octets[2], 0xFF, 0xFE, *octets[3:]]), "big"
    )


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _uri_host(uri: str) -> Optional[str]:
    from urllib.parse import urlsplit

    try:
        return urlsplit(uri).hostname
    except ValueError:
        return None


def learn_all(redactor: Redactor, names: Iterable[tuple[str, str]]) -> None:
    """Teach `redactor` (kind, name) pairs: kinds host, user, guest."""
    for kind, name in names:
        {"host": redactor.learn_host, "user": redactor.learn_user, "guest": redactor.learn_guest}[
            kind
        ](name)


def redact_recording(
    redactor: Redactor, entries: Mapping[str, dict[str, Any]], blobs: Mapping[str, bytes]
) -> tuple[dict[str, dict[str, Any]], dict[str, bytes]]:
    """A RecordingSource's answers with every identifying value replaced: the entries (what
    was asked -- paths, command lines, libvirt parameters -- and what was answered) and the
    stored files and outputs, keyed again by what the redacted question is, so that a replay,
    whose facts ask with the tokens, finds them."""
    from doctor.sources.snapshot import _entry_key

    certs = CertificateReissuer(redactor)
    certs.learn(blobs.values())
    done = {key: certs.blob(data) for key, data in blobs.items()}
    new_entries: dict[str, dict[str, Any]] = {}
    new_blobs: dict[str, bytes] = {}
    for key, entry in entries.items():
        redacted = dict(redactor.value(entry))
        redacted["kind"], redacted["how"] = entry["kind"], entry.get("how")
        value = redacted.get("value")
        if entry["kind"] == "key_info" and isinstance(value, dict):
            old = value.get("public_sha256")
            if isinstance(old, str):  # the key's public half is now the re-issued one's
                redacted["value"] = {**value, "public_sha256": certs.spki_sha256.get(old, old)}
        new_key = _entry_key(redacted)
        new_entries[new_key] = redacted
        for suffix in ("", ":stderr"):
            if key + suffix in done:
                new_blobs[new_key + suffix] = done[key + suffix]
    return new_entries, new_blobs


_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+?-----END CERTIFICATE-----"
)


class CertificateReissuer:
    """Certificates carry host names and addresses inside their DER, where no text
    replacement reaches: a redacted snapshot holds each one issued again, with the same
    serial, validity, key type and size, extensions and signature hash, its names replaced
    by their tokens, and signed by the re-issued key of its issuer, so a chain still
    verifies and a key still matches its certificate (key_info answers are mapped to the
    new public keys)."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self.keys: dict[bytes, Any] = {}  # original SubjectPublicKeyInfo DER -> new key
        self.by_name: dict[bytes, bytes] = {}  # subject DER -> its SPKI DER
        self.issuer_keys: dict[bytes, Any] = {}  # issuer DER with no certificate -> key
        self.spki_sha256: dict[str, str] = {}  # original public_sha256 -> new one

    def learn(self, blobs: Iterable[bytes]) -> None:
        """Every certificate's subject and key first, so an issuer found later signs."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        for data in blobs:
            for match in _PEM_CERT.finditer(data):
                try:
                    cert = x509.load_pem_x509_certificate(match.group(0))
                except ValueError:
                    continue
                spki = cert.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                self.by_name.setdefault(cert.subject.public_bytes(), spki)

    def _new_key(self, public: Any) -> Any:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

        spki = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        key = self.keys.get(spki)
        if key is not None:
            return key
        if isinstance(public, rsa.RSAPublicKey):
            key = rsa.generate_private_key(public_exponent=65537, key_size=public.key_size)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            key = ec.generate_private_key(type(public.curve)())
        elif isinstance(public, ed25519.Ed25519PublicKey):
            key = ed25519.Ed25519PrivateKey.generate()
        elif isinstance(public, ed448.Ed448PublicKey):
            key = ed448.Ed448PrivateKey.generate()
        elif isinstance(public, dsa.DSAPublicKey):
            key = dsa.generate_private_key(key_size=public.key_size)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        self.keys[spki] = key
        new_spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        old_hash, new_hash = hashes.Hash(hashes.SHA256()), hashes.Hash(hashes.SHA256())
        old_hash.update(spki)
        new_hash.update(new_spki)
        self.spki_sha256[old_hash.finalize().hex()] = new_hash.finalize().hex()
        return key

    def _issuer_key(self, cert: Any) -> Any:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        issuer = cert.issuer.public_bytes()
        if issuer == cert.subject.public_bytes():
            return self._new_key(cert.public_key())
        spki = self.by_name.get(issuer)
        if spki is not None:
            return self._new_key(serialization.load_der_public_key(spki))
        if issuer not in self.issuer_keys:
            self.issuer_keys[issuer] = ec.generate_private_key(ec.SECP256R1())
        return self.issuer_keys[issuer]

    def _name(self, name: Any) -> Any:
        from cryptography import x509

        rdns = []
        for rdn in name.rdns:
            attrs = [
                x509.NameAttribute(a.oid, self.redactor.text(a.value))
                if isinstance(a.value, str)
                else a
                for a in rdn
            ]
            rdns.append(x509.RelativeDistinguishedName(attrs))
        return x509.Name(rdns)

    def reissue(self, pem: bytes) -> bytes:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            return self.redactor.bytes_(pem)
        key = self._new_key(cert.public_key())
        signer = self._issuer_key(cert)
        builder = (
            x509.CertificateBuilder()
            .subject_name(self._name(cert.subject))
            .issuer_name(self._name(cert.issuer))
            .public_key(key.public_key())
            .serial_number(cert.serial_number)
            .not_valid_before(_utc(cert, "not_valid_before"))
            .not_valid_after(_utc(cert, "not_valid_after"))
        )
        for ext in cert.extensions:
            value = ext.value
            if isinstance(value, x509.SubjectAlternativeName):
                names: list[Any] = []
                for general in value:
                    if isinstance(general, x509.DNSName):
                        names.append(x509.DNSName(self.redactor.text(general.value)))
                    elif isinstance(general, x509.IPAddress):
                        names.append(x509.IPAddress(self.redactor.address(general.value)))  # type: ignore[arg-type]
                    else:
                        names.append(general)
                value = x509.SubjectAlternativeName(names)
            elif isinstance(value, x509.SubjectKeyIdentifier):
                value = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
            elif isinstance(value, x509.AuthorityKeyIdentifier):
                value = x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key())
            elif isinstance(value, x509.UnrecognizedExtension):
                continue  # an extension cryptography cannot rebuild may hold anything
            builder = builder.add_extension(value, critical=ext.critical)
        algorithm = cert.signature_hash_algorithm
        new = builder.sign(signer, algorithm)  # type: ignore[arg-type]
        return new.public_bytes(serialization.Encoding.PEM).rstrip(b"\n")

    def blob(self, data: bytes) -> bytes:
        """A file with every PEM certificate in it re-issued, and the rest redacted."""
        if b"-----BEGIN CERTIFICATE-----" not in data:
            return self.redactor.bytes_(data)
        pieces, last = [], 0
        for match in _PEM_CERT.finditer(data):
            pieces.append(self.redactor.bytes_(data[last : match.start()]))
            pieces.append(self.reissue(match.group(0)))
            last = match.end()
        pieces.append(self.redactor.bytes_(data[last:]))
        return b"".join(pieces)


def _utc(cert: Any, field: str) -> Any:
    """A certificate's validity bound (cryptography 42 added the `_utc` forms)."""
    value = getattr(cert, f"{field}_utc", None)
    return value if value is not None else getattr(cert, field)
