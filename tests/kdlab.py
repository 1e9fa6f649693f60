"""The lab's moving parts for tests (shared/LAB.md, "A second, isolated libvirtd").

`LibvirtLab` is a private mount namespace in which /run/libvirt is an empty tmpfs and
/etc/libvirt, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt are private copies
kept under the test's directory. Commands run inside it (`lab.run`), a second libvirtd starts
there (`lab.start_libvirtd`) and is stopped by its PID; its sockets exist only inside. The
machine's own libvirtd is never touched. Everything is undone on every way out of the `with`
block: an exception, Ctrl-C, or SIGTERM (turned into SystemExit while the lab is open).

    with LibvirtLab(tmp_path) as lab:
        lab.configure("libvirtd.conf", listen_tls=1, tls_port="16514")
        daemon = lab.start_libvirtd("--listen")
        lab.run(["virsh", "-c", "qemu:///system", "version"])

`lab.tree` is laid out like a host (etc/libvirt, var/lib/libvirt, ...), so `kvmdoctor run
--root lab.tree` reads the same configuration the lab's daemon reads. The daemon shares the
machine's network and process namespaces: it listens where the test tells it (use
`free_port()` and 127.0.0.1), and `/proc/PID/root/run/libvirt` shows its sockets from outside.
`start_libvirtd` returns once the daemon's socket exists; its QEMU driver may still probe the
emulators (seconds on this machine, whose cpuid varies between CPUs and so invalidates
libvirt's capabilities cache), so a first QEMU connection can take that long.

If pytest dies without closing a lab, the namespace ends with the holder process (its stdin
closes); a lab daemon left running is stopped by the session-end sweep (`sweep`, called from
tests/conftest.py), which spares the labs of other pytest processes that are still running.

`Pki` makes certificates with `cryptography`: a CA and what it issues, valid, expired, for
other names, from other CAs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Optional, Union

from kdtest import answers

# Every lab directory (and so every lab daemon's pid file argument) carries this mark; the
# session-end sweep finds lab daemons by it, and their owner by the lab's state/owner file.
MARK = "kdlab-"
PRIVATE_DIRS = ("/etc/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt")
# Copied into the lab: the configuration, and the QEMU capabilities cache (without it the lab
# daemon probes every emulator again, which takes seconds). The rest starts empty.
COPIED = ("/etc/libvirt", "/var/cache/libvirt")
# Not copied into the lab: autostart links (the lab daemon must not start the host's
# networks, pools or guests) and libvirt secrets (they stay where they are).
NOT_COPIED = ("autostart", "secrets")
TOOLS = ("unshare", "nsenter", "mount")


class LabError(AssertionError):
    """The lab could not do what a test asked; the message says what the system said."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def conf_value(value: Union[str, int, Sequence[str]]) -> str:
    """A value in libvirt's configuration syntax."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return f'"{value}"'
    return "[" + ", ".join(f'"{v}"' for v in value) + "]"


@dataclass(frozen=True)
class DaemonStart:
    """What happened when the lab started a libvirtd."""

    ok: bool
    pid: Optional[int]
    returncode: int
    stderr: str
    log: str  # the daemon's own log (errors and warnings)

    def errors(self) -> list[str]:
        """The daemon's error lines, without the host's harmless DMI complaints."""
        return [
            line
            for line in self.log.splitlines()
            if " error : " in line and "dmidecode" not in line and "DMI" not in line
        ]


def _copy_if_there(src: str, dst: str) -> None:
    """shutil.copy2, but a file that vanished since the directory was listed is skipped: the
    machine's libvirtd (or another test session) may remove a domain's XML or a cache file
    while a lab copies /etc/libvirt or /var/cache/libvirt."""
    with contextlib.suppress(FileNotFoundError):
        shutil.copy2(src, dst)


def _is_gone(pid: int) -> bool:
    """Exited, or a zombie nobody reaped yet (this machine's PID 1 reaps late)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [a.decode(errors="replace") for a in handle.read().split(b"\0") if a]
    except OSError:
        return []


class LibvirtLab:
    """A private mount namespace for libvirt under `base` (see the module's docstring).
    `copy_config=False` starts from an empty /etc/libvirt instead of the machine's."""

    def __init__(self, base: Path, *, copy_config: bool = True) -> None:
        self.home = Path(tempfile.mkdtemp(prefix=MARK, dir=base))
        self.tree = self.home / "tree"  # the lab's host files, a --root tree
        self.state = self.home / "state"  # pid files and logs, outside the private mounts
        self.copy_config = copy_config
        self.holder: Optional[subprocess.Popen[bytes]] = None
        self.daemons: list[tuple[int, Path]] = []  # (pid, pid file) of every daemon started
        self._old_sigterm: Any = None

    # -- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> LibvirtLab:
        try:
            self._prepare()
            self._catch_sigterm()
            self._start_holder()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _prepare(self) -> None:
        self.state.mkdir()
        (self.state / "owner").write_text(f"{os.getpid()}\n")  # for the session-end sweep
        for path in PRIVATE_DIRS:
            target = self.tree / path.lstrip("/")
            if path in COPIED and self.copy_config and os.path.isdir(path):
                shutil.copytree(
                    path,
                    target,
                    symlinks=True,
                    ignore=shutil.ignore_patterns(*NOT_COPIED),
                    copy_function=_copy_if_there,
                )
            else:
                target.mkdir(parents=True, exist_ok=True)
            if os.path.isdir(path):
                shutil.copystat(path, target)
        (self.tree / "etc/libvirt/secrets").mkdir(mode=0o700, exist_ok=True)
        # The lab daemon logs into the lab, whatever the host's libvirtd.conf says.
        self.configure("libvirtd.conf", log_outputs=f"3:file:{self.state}/libvirtd.log")

    def _catch_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def stop(signum: int, frame: Optional[FrameType]) -> None:
            raise SystemExit(f"SIGTERM: the lab in {self.home} is being cleaned up")

        self._old_sigterm = signal.signal(signal.SIGTERM, stop)

    def _start_holder(self) -> None:
        """A process that owns the private mount namespace: it sets the mounts up, says
        "ready", and keeps the namespace until its stdin closes (also when pytest dies)."""
        missing = [t for t in TOOLS if shutil.which(t) is None]
        if missing:
            raise LabError(f"the lab needs {', '.join(missing)} (util-linux)")
        mounts = ["mount -t tmpfs -o mode=0755,size=16m kdlab /run/libvirt"]
        for path in PRIVATE_DIRS:
            if os.path.isdir(path):
                private = shlex.quote(f"{self.tree}{path}")
                mounts.append(f"mount --bind {private} {shlex.quote(path)}")
        script = "set -e\n" + "\n".join(mounts) + "\necho ready\nexec cat >/dev/null\n"
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline()
        if line.strip() != b"ready":
            err = self.holder.stderr.read().decode() if self.holder.stderr else ""
            self.holder.wait(timeout=10)
            raise LabError(f"the lab's mount namespace could not be set up: {err.strip()}")
        own = os.readlink(f"/proc/{os.getpid()}/ns/mnt")
        if os.readlink(f"/proc/{self.holder.pid}/ns/mnt") == own:
            raise LabError("unshare did not give the lab its own mount namespace")

    def close(self) -> None:
        """Stop every daemon the lab started (by PID), end the namespace, remove the files."""
        try:
            for pid, pidfile in reversed(self.daemons):
                self.stop(pid, pidfile)
            self.daemons.clear()
        finally:
            try:
                self._stop_holder()
            finally:
                if self._old_sigterm is not None:
                    signal.signal(signal.SIGTERM, self._old_sigterm)
                    self._old_sigterm = None
                shutil.rmtree(self.home, ignore_errors=True)

    def _stop_holder(self) -> None:
        holder, self.holder = self.holder, None
        if holder is None:
            return
        for stream in (holder.stdin, holder.stdout, holder.stderr):
            if stream is not None:
                stream.close()
        try:
            holder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait(timeout=10)

    # -- inside the lab ----------------------------------------------------------------------

    @property
    def namespace(self) -> str:
        """The mount namespace of the lab (as /proc/PID/ns/mnt reads)."""
        assert self.holder is not None, "the lab is not open"
        return os.readlink(f"/proc/{self.holder.pid}/ns/mnt")

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 60,
        cwd: Optional[Union[str, Path]] = None,
        env: Optional[dict[str, str]] = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the lab's mount namespace (same network, same processes).
        `cwd` is the working directory inside: nsenter itself starts in "/" after entering,
        so without --wd a `python -m doctor` run would import the installed kvmdoctor
        instead of the tree under test."""
        assert self.holder is not None, "the lab is not open"
        wd = [f"--wd={cwd}"] if cwd is not None else []
        return subprocess.run(
            ["nsenter", f"--target={self.holder.pid}", "--mount", *wd, "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=env,
            check=False,
        )

    def path(self, host_path: str) -> Path:
        """Where a path under one of the private directories lives on the outside."""
        if not any(host_path == p or host_path.startswith(p + "/") for p in PRIVATE_DIRS):
            raise LabError(f"{host_path} is not private to the lab ({', '.join(PRIVATE_DIRS)})")
        return self.tree / host_path.lstrip("/")

    def configure(self, name: str, **values: Union[str, int, Sequence[str]]) -> Path:
        """Set values in /etc/libvirt/NAME of the lab: earlier settings of the same names are
        commented out (libvirt uses the first one it reads), the new ones appended."""
        conf = self.tree / "etc/libvirt" / name
        lines = conf.read_text().splitlines() if conf.exists() else []
        kept = []
        for line in lines:
            key = line.split("=", 1)[0].strip()
            kept.append(f"#{line}" if "=" in line and key in values else line)
        kept += [f"{k} = {conf_value(v)}" for k, v in values.items()]
        conf.write_text("\n".join(kept) + "\n")
        return conf

    # -- a second libvirtd -------------------------------------------------------------------

    def start_libvirtd(self, *args: str, timeout: float = 30) -> DaemonStart:
        """`libvirtd -d -p PIDFILE ARGS` inside the lab. On success the daemon's socket exists
        (inside the lab only) and the daemon is stopped when the lab closes."""
        pidfile = self.state / f"libvirtd-{len(self.daemons) + 1}.pid"
        log = self.state / "libvirtd.log"
        mark = log.stat().st_size if log.exists() else 0
        done = self.run(["libvirtd", "-d", "-p", str(pidfile), *args], timeout=timeout)
        text = ""
        if log.exists():
            with open(log, encoding="utf-8", errors="replace") as handle:
                handle.seek(mark)
                text = handle.read()
        if done.returncode != 0:
            return DaemonStart(False, None, done.returncode, done.stderr, text)
        pid = self._pid_from(pidfile, timeout)
        self.daemons.append((pid, pidfile))
        sock = f"/proc/{pid}/root/run/libvirt/libvirt-sock"
        deadline = time.monotonic() + timeout
        while not answers(sock):  # a socket file may be left from a daemon killed before
            if _is_gone(pid) or time.monotonic() > deadline:
                raise LabError(f"libvirtd {pid} did not answer on its socket: {done.stderr}{text}")
            time.sleep(0.05)
        return DaemonStart(True, pid, 0, done.stderr, text)

    def _pid_from(self, pidfile: Path, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(FileNotFoundError, ValueError):
                pid = int(pidfile.read_text().strip())
                if os.readlink(f"/proc/{pid}/ns/mnt") != self.namespace:
                    raise LabError(f"pid {pid} from {pidfile} is not in the lab's namespace")
                return pid
            if time.monotonic() > deadline:
                raise LabError(f"{pidfile} holds no pid")
            time.sleep(0.05)

    def stop(self, pid: int, pidfile: Path, timeout: float = 15) -> None:
        """SIGTERM the lab daemon `pid`, then SIGKILL after `timeout`; only a process whose
        command line names this lab's pid file is signalled."""
        if _is_gone(pid) or str(pidfile) not in _cmdline(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while not _is_gone(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + timeout
            time.sleep(0.05)

    def log(self) -> str:
        path = self.state / "libvirtd.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _owner_alive(pidfile: str) -> bool:
    """Whether the pytest process that opened the lab of this pid file still runs (and is not
    this very process, whose labs must all be closed by the time it sweeps)."""
    try:
        owner = int(Path(pidfile).with_name("owner").read_text().strip())
    except (OSError, ValueError):
        return False
    return owner != os.getpid() and not _is_gone(owner)


def leftover_daemons() -> list[int]:
    """PIDs of lab libvirtd processes whose lab is gone: started by this process, or by a
    pytest that died without closing its lab. A lab of another pytest that still runs (a
    concurrent session) is not a leftover."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = _cmdline(int(entry))
        if not argv or os.path.basename(argv[0]) != "libvirtd":
            continue
        pidfiles = [a for a in argv if f"/{MARK}" in a and a.endswith(".pid")]
        if pidfiles and not _owner_alive(pidfiles[0]):
            found.append(int(entry))
    return found


def sweep() -> list[str]:
    """Stop leftover lab daemons, by PID; say what was found."""
    found = []
    for pid in leftover_daemons():
        if _is_gone(pid):
            continue
        found.append(f"lab libvirtd {pid}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return found


# --- certificates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: Any  # cryptography.x509.Certificate
    key: Any  # a private key

    @property
    def cert_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def key_pem(self, password: Optional[bytes] = None) -> bytes:
        from cryptography.hazmat.primitives import serialization

        encryption: Any = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        return bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
            )
        )

    @property
    def public_sha256(self) -> str:
        """SHA-256 of the SubjectPublicKeyInfo, as `openssl pkey -pubout -outform DER`."""
        from cryptography.hazmat.primitives import serialization

        spki = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(spki).hexdigest()

    @property
    def subject(self) -> str:
        return str(self.cert.subject.rfc4514_string())


# x509.KeyUsage's arguments, but for encipher_only and decipher_only (which need key_agreement).
KEY_USAGE_BITS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)


class Pki:
    """Certificates made the way a libvirt administrator makes them (libvirt.org/kbase/
    tlscerts.html): a CA with basicConstraints CA:TRUE and keyCertSign; server certificates
    with serverAuth, client certificates with clientAuth. Validity is given in days from
    `now` (negative: in the past)."""

    def __init__(self, now: Optional[dt.datetime] = None) -> None:
        self.now = now or dt.datetime.now(dt.timezone.utc)

    @staticmethod
    def new_key(kind: str = "ec") -> Any:
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

        if kind == "rsa":
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "ed25519":
            return ed25519.Ed25519PrivateKey.generate()
        return ec.generate_private_key(ec.SECP256R1())

    def _when(self, days: float) -> dt.datetime:
        return (self.now + dt.timedelta(days=days)).replace(microsecond=0)

    def ca(
        self,
        name: str = "kd test CA",
        *,
        key: Any = None,
        valid: tuple[float, float] = (-1, 3650),
        is_ca: Optional[bool] = True,
        issuer: Optional[Issued] = None,
    ) -> Issued:
        """A CA certificate, self-signed unless `issuer` (an intermediate). `is_ca=False`
        gives basicConstraints CA:FALSE, None leaves the extension out."""
        from cryptography import x509

        key = key or self.new_key()
        builder = self._builder(name, key, valid, issuer.cert.subject if issuer else None)
        if is_ca is not None:
            builder = builder.add_extension(
                x509.BasicConstraints(ca=is_ca, path_length=None), critical=True
            )
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        return Issued(self._sign(builder, issuer.key if issuer else key), key)

    def issue(
        self,
        issuer: Issued,
        name: str,
        *,
        dns: Iterable[str] = (),
        ips: Iterable[str] = (),
        purpose: str = "server",
        valid: tuple[float, float] = (-1, 365),
        key: Any = None,
        is_ca: Optional[bool] = False,
        usage: Optional[Iterable[str]] = ("digital_signature", "key_encipherment"),
        usage_critical: bool = True,
        purposes: Optional[Iterable[str]] = None,
        purposes_critical: bool = False,
        subject: Optional[Sequence[tuple[str, str]]] = None,
    ) -> Issued:
        """A server (`purpose="server"`) or client certificate issued by `issuer`.

        What libvirt checks can be varied: `is_ca` (basicConstraints CA flag; None leaves
        the extension out), `usage` (keyUsage bits by cryptography's names; None leaves the
        extension out) and whether it is critical, `purposes` (extended key usage: "server",
        "client", "any", or a dotted OID; None: the one `purpose` names; () leaves the
        extension out) and whether it is critical, and `subject` ((attribute, value) pairs
        such as ("O", "kd lab"), ("CN", name); default: CN=`name`)."""
        from cryptography import x509
        from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

        key = key or self.new_key()
        builder = self._builder(name, key, valid, issuer.cert.subject, subject)
        if is_ca is not None:
            builder = builder.add_extension(
                x509.BasicConstraints(ca=is_ca, path_length=None), critical=True
            )
        if usage is not None:
            bits = set(usage)
            flags = {n: n in bits for n in KEY_USAGE_BITS}
            builder = builder.add_extension(
                x509.KeyUsage(**flags, encipher_only=False, decipher_only=False),
                critical=usage_critical,
            )
        wanted = (purpose,) if purposes is None else tuple(purposes)
        oids = {
            "server": ExtendedKeyUsageOID.SERVER_AUTH,
            "client": ExtendedKeyUsageOID.CLIENT_AUTH,
            "any": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
        }
        if wanted:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([oids.get(p) or ObjectIdentifier(p) for p in wanted]),
                critical=purposes_critical,
            )
        names: list[Any] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return Issued(self._sign(builder, issuer.key), key)

    def crl(self, issuer: Issued, revoked: Iterable[Issued]) -> bytes:
        """A PEM revocation list from `issuer` that lists `revoked`."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization

        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.cert.subject)
            .last_update(self._when(-1))
            .next_update(self._when(30))
        )
        for item in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(item.cert.serial_number)
                .revocation_date(self._when(-1))
                .build()
            )
        return bytes(
            builder.sign(issuer.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        )

    def _builder(
        self,
        name: str,
        key: Any,
        valid: tuple[float, float],
        issuer: Any,
        attributes: Optional[Sequence[tuple[str, str]]] = None,
    ) -> Any:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        oids = {
            "C": NameOID.COUNTRY_NAME,
            "O": NameOID.ORGANIZATION_NAME,
            "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
            "L": NameOID.LOCALITY_NAME,
            "CN": NameOID.COMMON_NAME,
        }
        pairs = attributes or (("CN", name),)
        subject = x509.Name([x509.NameAttribute(oids[a], v) for a, v in pairs])
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer or subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._when(valid[0]))
            .not_valid_after(self._when(valid[1]))
        )

    @staticmethod
    def _sign(builder: Any, key: Any) -> Any:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ed448, ed25519

        algorithm = (
            None
            if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey))
            else hashes.SHA256()
        )
        return builder.sign(key, algorithm)


def write_file(path: Path, data: Union[bytes, str], mode: int = 0o644) -> Path:
    """Write `data` at `path` (making its directories) with exactly `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)
    return path
