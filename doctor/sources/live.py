"""LiveSource: answers from the running host, or files only from a tree (`--root`)."""

from __future__ import annotations

import contextlib
import errno
import os
import stat as stat_mod
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, BinaryIO, NamedTuple, Optional

from doctor.sources.acl import decode_posix_acl
from doctor.sources.base import (
    DEFAULT_MAX_BYTES,
    AccessDenied,
    CommandResult,
    Identity,
    KeyInfo,
    KvmProbe,
    NotFound,
    PathEscapes,
    ProcessFilter,
    ProcessInfo,
    SourceError,
    StatInfo,
    Uname,
    Unavailable,
    wanted_processes,
)

# ioctl numbers from include/uapi/linux/kvm.h (_IO(KVMIO=0xAE, nr)).
KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_CHECK_EXTENSION = 0xAE03
# Capabilities worth having in a report: KVM_CAP_NR_VCPUS, KVM_CAP_MAX_VCPUS.
KVM_CAPS = {"nr_vcpus": 9, "max_vcpus": 66, "x86_smm": 117}

# Kernel filesystems that an offline tree usually does not hold. A tree without them cannot
# say whether /dev/kvm exists, so it answers "unavailable" rather than "not found".
_VIRTUAL_TOPS = ("dev", "proc", "sys", "run")
_MAX_SYMLINKS = 40

_TYPES = (
    (stat_mod.S_ISCHR, "char"),
    (stat_mod.S_ISBLK, "block"),
    (stat_mod.S_ISDIR, "dir"),
    (stat_mod.S_ISREG, "file"),
    (stat_mod.S_ISLNK, "link"),
    (stat_mod.S_ISSOCK, "socket"),
    (stat_mod.S_ISFIFO, "fifo"),
)


def _errno_name(code: Optional[int]) -> str:
    return errno.errorcode.get(code or 0, str(code))


class _Named(NamedTuple):
    """A live process as /proc/PID/stat and the exe link name it."""

    pid: int
    ppid: int
    name: str
    exe: str
    cmdline: Optional[tuple[str, ...]]  # when read to lengthen a cut name


def _proc_named() -> list[_Named]:
    """Every running process of the live host's /proc with its name and executable, as psutil
    gives them: the name is the kernel's (comm), lengthened from the command line when the
    kernel cut it at 15 characters; the executable is the link's target ("" when it cannot be
    read, and without the " (deleted)" the kernel adds to a file since removed); zombies are
    left out. tests/sources/test_live.py compares the two on this host."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        base = f"/proc/{entry}"
        try:
            with open(f"{base}/stat", "rb") as handle:
                stat_line = handle.read().decode(sys.getfilesystemencoding(), "surrogateescape")
        except OSError:
            continue  # gone while we looked
        head, _, tail = stat_line.rpartition(")")
        name = head.partition("(")[2]
        fields = tail.split()
        if len(fields) < 2 or fields[0] in ("Z", "X", "x"):
            continue  # exited, not yet reaped: not running
        cmdline: Optional[tuple[str, ...]] = None
        if len(name) >= 15:
            cmdline = _proc_cmdline(base)
            longer = os.path.basename(cmdline[0]) if cmdline else ""
            if longer.startswith(name):
                name = longer
        try:
            exe = os.readlink(f"{base}/exe").split("\x00")[0]
        except OSError:
            exe = ""
        if exe.endswith(" (deleted)") and not os.path.exists(exe):
            exe = exe[: -len(" (deleted)")]
        found.append(_Named(int(entry), int(fields[1]), name, exe, cmdline))
    return found


def _proc_details(named: _Named) -> Optional[ProcessInfo]:
    """The process in full: its real ids and arguments (None when it is gone)."""
    base = f"/proc/{named.pid}"
    try:
        with open(f"{base}/status", "rb") as handle:
            status = handle.read().decode("utf-8", "replace")
        ids = {
            key: int(rest.split()[0])
            for key, _, rest in (line.partition(":") for line in status.splitlines())
            if key in ("Uid", "Gid")
        }
        uid, gid = ids["Uid"], ids["Gid"]
    except (OSError, KeyError, IndexError, ValueError):
        return None
    return ProcessInfo(
        pid=named.pid,
        ppid=named.ppid,
        name=named.name,
        exe=named.exe,
        cmdline=named.cmdline if named.cmdline is not None else _proc_cmdline(base),
        uid=uid,
        gid=gid,
    )


def _proc_cmdline(base: str) -> tuple[str, ...]:
    """A live process's arguments as psutil splits them ((): a kernel thread's, or one gone
    while we looked): at NULs, or at spaces when a process rewrote its command line as one
    string."""
    try:
        with open(f"{base}/cmdline", "rb") as handle:
            data = handle.read().decode(sys.getfilesystemencoding(), "surrogateescape")
    except OSError:
        return ()
    if not data:
        return ()
    sep = "\x00" if data.endswith("\x00") else " "
    if data.endswith(sep):
        data = data[:-1]
    args = data.split(sep)
    if sep == "\x00" and len(args) == 1 and " " in data:
        args = data.split(" ")
    return tuple(args)


def _os_error(what: str, exc: OSError) -> SourceError:
    reason = exc.strerror or str(exc)
    if isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOENT:
        return NotFound(what, reason)
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        return AccessDenied(what, reason)
    return SourceError(what, f"{reason} ({_errno_name(exc.errno)})")


_CHUNK = 64 * 1024


def _read_tail(handle: BinaryIO, max_bytes: int) -> bytes:
    """The last `max_bytes` of a file. Files of /proc and /sys report a size of 0, so their
    end is found by reading them through, keeping only the last `max_bytes`."""
    if max_bytes <= 0:
        return b""
    size = os.fstat(handle.fileno()).st_size
    if size > max_bytes:
        handle.seek(size - max_bytes)
    kept = bytearray()
    while True:
        chunk = handle.read(_CHUNK)
        if not chunk:
            return bytes(kept[-max_bytes:])
        kept += chunk
        if len(kept) > 2 * max_bytes:
            del kept[:-max_bytes]


def _read_head(handle: Any, max_bytes: int) -> bytes:
    """Up to max_bytes, in 64 KiB reads: /proc/sys answers ENOMEM to a read(2) as large as
    the whole limit (the kernel allocates a buffer of the requested size)."""
    parts = []
    left = max_bytes
    while left > 0:
        chunk = handle.read(min(_CHUNK, left))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def resolve_in_root(root: str, path: str, *, follow_last: bool = True) -> str:
    """The on-disk path of `path` inside the tree at `root`.

    Symlinks are resolved as the tree's own system would: absolute targets start again at the
    tree's root; a `..` that climbs above the root raises PathEscapes.
    """
    if not path.startswith("/"):
        raise SourceError(path, "paths must be absolute")
    pending = [p for p in path.split("/") if p]
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            if not resolved:
                raise PathEscapes(path, f"leads above the root of the tree {root}")
            resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        if (pending or follow_last) and os.path.islink(candidate):
            links += 1
            if links > _MAX_SYMLINKS:
                raise SourceError(path, "too many levels of symbolic links")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending = [p for p in target.split("/") if p] + pending
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def _command_env() -> dict[str, str]:
    """Commands speak the C locale: their output is parsed."""
    return {**os.environ, "LC_ALL": "C", "LANG": "C"}


# Room for a command's output in its pipes while no one reads them (the kernel's default
# maximum, /proc/sys/fs/pipe-max-size): a command started ahead of its `run` writes what it
# has to say and ends; a longer output waits for the reader, as with any pipe.
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, named there from Python 3.10


class _Started:
    """A command started ahead of its `run` (LiveSource.prefetch), its pipes enlarged so
    that it need not wait for a reader (no thread reads them: starting one costs more than
    the command saves)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        import fcntl

        self.process = process
        for pipe in (process.stdout, process.stderr):
            with contextlib.suppress(OSError):  # a lower limit on this host: the default
                fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, _PIPE_SIZE)  # type: ignore[union-attr]

    def result(self, timeout: float) -> Optional[tuple[int, bytes, bytes]]:
        """(exit status, stdout, stderr); None when it did not end within `timeout` seconds
        from now (it is then killed)."""
        try:
            stdout, stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            return None
        return self.process.returncode, stdout, stderr

    def stop(self) -> None:
        """Kill it if it still runs, reap it, and close its pipes (what it wrote is dropped;
        as subprocess.run does, nothing waits for a child of it that holds them)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


class LiveSource:
    """The running host (`root="/"`), or the files of a tree mounted elsewhere.

    With another root only files answer: commands, ioctls, processes of the examining machine,
    its identity and environment are never taken for the tree's.
    """

    def __init__(
        self,
        root: str = "/",
        uri: Optional[str] = None,
        netns: Optional[str] = None,
        *,
        libvirt_timeout: float = 10.0,
    ) -> None:
        from doctor.sources.virt import Libvirt

        self.root = os.path.abspath(root)
        self.uri = uri
        self.netns = netns
        self._libvirt = Libvirt(libvirt_timeout)
        self._processes: Optional[list[ProcessInfo]] = None
        # /proc read once for names and executables (`processes(wanted)`), and the processes
        # read in full since, by pid (None: gone when they were read)
        self._named: Optional[list[_Named]] = None
        self._details: dict[int, Optional[ProcessInfo]] = {}
        self._started: dict[tuple[str, ...], _Started] = {}  # prefetch: argv -> its process
        self.files_only = self.root != "/"
        self.kind = "root" if self.files_only else "live"
        if self.files_only and not os.path.isdir(self.root):
            raise NotFound(root, "not a directory")

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "root": self.root, "uri": self.uri, "netns": self.netns}

    # -- files -----------------------------------------------------------------------------

    def _real(self, path: str, *, follow_last: bool = True) -> str:
        if not self.files_only:
            if not path.startswith("/"):
                raise SourceError(path, "paths must be absolute")
            return path
        top = path.strip("/").split("/", 1)[0]
        if top in _VIRTUAL_TOPS and not os.path.lexists(os.path.join(self.root, top)):
            raise Unavailable(path, f"the tree at {self.root} holds no /{top}")
        return resolve_in_root(self.root, path, follow_last=follow_last)

    def _files_only(self, what: str) -> None:
        if self.files_only:
            raise Unavailable(what, f"only files are read under --root {self.root}")

    def read_file(
        self, path: str, *, max_bytes: int = DEFAULT_MAX_BYTES, tail: bool = False
    ) -> bytes:
        real = self._real(path)
        try:
            # O_NONBLOCK: opening a FIFO (a tree can hold one anywhere) must not wait for a
            # writer; anything but a regular file is refused before a read could block.
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with open(fd, "rb", buffering=0) as handle:
                if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
                    raise Unavailable(path, "not a regular file; not read")
                if not tail:
                    return _read_head(handle, max_bytes)
                return _read_tail(handle, max_bytes)
        except OSError as exc:
            raise _os_error(path, exc) from None

    def list_dir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(self._real(path)))
        except OSError as exc:
            raise _os_error(path, exc) from None

    def stat(self, path: str) -> StatInfo:
        real = self._real(path)
        try:
            st = os.stat(real)
        except OSError as exc:
            raise _os_error(path, exc) from None
        kind = next(name for test, name in _TYPES if test(st.st_mode))
        rdev = None
        if kind in ("char", "block"):
            rdev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        return StatInfo(
            path=path,
            type=kind,
            mode=stat_mod.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            rdev=rdev,
            acl=self._acl(real),
        )

    @staticmethod
    def _acl(real: str) -> tuple:
        try:
            blob = os.getxattr(real, "system.posix_acl_access")
        except OSError:
            # ENODATA: no ACL; ENOTSUP: the filesystem has none. Either way only the mode applies.
            return ()
        try:
            return decode_posix_acl(blob)
        except ValueError:
            return ()

    def read_link(self, path: str) -> str:
        try:
            return os.readlink(self._real(path, follow_last=False))
        except OSError as exc:
            raise _os_error(path, exc) from None

    # -- the running system ----------------------------------------------------------------

    def prefetch(self, commands: Sequence[Sequence[str]]) -> None:
        """Start `commands` now, each as `run` would run it, so that they run beside what
        this process does next (on another CPU); `run` of the same argv takes the result
        (within its own time limit, counted from that call). A command that cannot be
        started here is left to `run`, which reports why; one never asked for is killed at
        `close`. Only for the commands facts always run (`fact(commands=...)`)."""
        if self.files_only:
            return
        for argv in commands:
            key = tuple(argv)
            if key in self._started:
                continue
            try:
                process = subprocess.Popen(
                    list(argv),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    stdin=subprocess.DEVNULL,
                    env=_command_env(),
                )
            except (OSError, ValueError):
                continue
            self._started[key] = _Started(process)

    def run(self, argv: Sequence[str], *, timeout: float = 10.0) -> CommandResult:
        what = " ".join(argv)
        self._files_only(what)
        started = self._started.pop(tuple(argv), None)
        if started is None:
            output = self._run_now(argv, what, timeout)
        else:
            found = started.result(timeout)
            if found is None:
                raise SourceError(what, f"did not finish within {timeout:g} s")
            output = found
        returncode, stdout, stderr = output
        return CommandResult(
            argv=tuple(argv),
            returncode=returncode,
            stdout=stdout.decode("utf-8", "replace"),
            stderr=stderr.decode("utf-8", "replace"),
        )

    def _run_now(self, argv: Sequence[str], what: str, timeout: float) -> tuple[int, bytes, bytes]:
        try:
            done = subprocess.run(
                list(argv),
                capture_output=True,
                timeout=timeout,
                env=_command_env(),
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except FileNotFoundError:
            raise NotFound(what, f"{argv[0]} is not installed") from None
        except subprocess.TimeoutExpired:
            raise SourceError(what, f"did not finish within {timeout:g} s") from None
        except OSError as exc:
            raise _os_error(what, exc) from None
        return done.returncode, done.stdout, done.stderr

    def processes(self, wanted: Optional[ProcessFilter] = None) -> list[ProcessInfo]:
        """The process list, taken once per source: every fact sees the same moment. Asked
        for only some processes (`wanted`, a test of the name and the executable) before the
        whole list was taken, the live host's /proc is read without psutil: once for every
        process's name and executable (that moment), then in full for those a fact wants.
        Importing psutil and reading every process in full costs more than the few the
        facts ask for."""
        if self._processes is None and wanted is not None and not self.files_only:
            if self._named is None:
                self._named = _proc_named()
            found = []
            for named in self._named:
                if wanted(named.name, named.exe):
                    if named.pid not in self._details:
                        self._details[named.pid] = _proc_details(named)
                    proc = self._details[named.pid]
                    if proc is not None:
                        found.append(proc)
            return found
        if self._processes is None:
            self._processes = self._list_processes()
        return wanted_processes(self._processes, wanted)

    def _list_processes(self) -> list[ProcessInfo]:
        if self.files_only:
            return self._tree_processes()
        import psutil

        found = []
        attrs = ["pid", "ppid", "name", "exe", "cmdline", "uids", "gids", "status"]
        for proc in psutil.process_iter(attrs):
            info = proc.info
            if info.get("uids") is None:  # gone while we looked
                continue
            if info.get("status") in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                # Exited, waiting for its parent (or a PID 1 that reaps late): a daemon that
                # is a zombie does not run and holds no socket.
                continue
            found.append(
                ProcessInfo(
                    pid=info["pid"],
                    ppid=info["ppid"] or 0,
                    name=info["name"] or "",
                    exe=info["exe"] or "",
                    cmdline=tuple(info["cmdline"] or ()),
                    uid=info["uids"].real,
                    gid=info["gids"].real,
                )
            )
        return found

    def _tree_processes(self) -> list[ProcessInfo]:
        """Processes of a tree that carries a /proc copy (a hand-made tree or a bundle)."""
        found = []
        for entry in self.list_dir("/proc"):
            if not entry.isdigit():
                continue
            try:
                status = self.read_file(f"/proc/{entry}/status").decode("utf-8", "replace")
            except SourceError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if fields.get("State", "").strip()[:1] in ("Z", "X"):
                continue  # exited, not yet reaped: not running
            try:
                cmdline = self.read_file(f"/proc/{entry}/cmdline").split(b"\0")
            except SourceError:
                cmdline = []
            argv = tuple(part.decode("utf-8", "replace") for part in cmdline if part)
            try:
                # A damaged or truncated copy is skipped: a missing Uid is not uid 0.
                ppid = int(fields.get("PPid", "0").strip() or 0)
                uid = int(fields["Uid"].split()[0])
                gid = int(fields["Gid"].split()[0])
            except (KeyError, IndexError, ValueError):
                continue
            found.append(
                ProcessInfo(
                    pid=int(entry),
                    ppid=ppid,
                    name=fields.get("Name", "").strip(),
                    exe=argv[0] if argv else "",
                    cmdline=argv,
                    uid=uid,
                    gid=gid,
                )
            )
        return found

    def identity(self) -> Identity:
        self._files_only("identity")
        sudo_uid = os.environ.get("SUDO_UID")
        return Identity(
            uid=os.getuid(),
            euid=os.geteuid(),
            gid=os.getgid(),
            groups=tuple(sorted(set(os.getgroups()))),
            sudo_user=os.environ.get("SUDO_USER"),
            sudo_uid=int(sudo_uid) if sudo_uid and sudo_uid.isdigit() else None,
        )

    def uname(self) -> Uname:
        self._files_only("uname")
        u = os.uname()
        return Uname(u.sysname, u.nodename, u.release, u.version, u.machine)

    def environ(self, name: str) -> Optional[str]:
        self._files_only(f"${name}")
        return os.environ.get(name)

    def kvm_probe(self, path: str = "/dev/kvm") -> KvmProbe:
        """Open the device and ask the kernel for its API version and a VM (closed at once)."""
        self._files_only(path)
        import fcntl

        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            return KvmProbe(path=path, opened=False, open_errno=_errno_name(exc.errno))
        try:
            try:
                version = fcntl.ioctl(fd, KVM_GET_API_VERSION, 0)
            except OSError as exc:
                return KvmProbe(path=path, opened=True, api_errno=_errno_name(exc.errno))
            extensions = {}
            for name, cap in KVM_CAPS.items():
                try:
                    extensions[name] = fcntl.ioctl(fd, KVM_CHECK_EXTENSION, cap)
                except OSError:
                    continue
            try:
                vm_fd = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
            except OSError as exc:
                return KvmProbe(
                    path=path,
                    opened=True,
                    api_version=version,
                    vm_created=False,
                    create_vm_errno=_errno_name(exc.errno),
                    extensions=extensions,
                )
            os.close(vm_fd)
            return KvmProbe(
                path=path, opened=True, api_version=version, vm_created=True, extensions=extensions
            )
        finally:
            os.close(fd)

    def read_msr(self, register: int, cpu: int = 0) -> int:
        path = f"/dev/cpu/{cpu}/msr"
        self._files_only(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise Unavailable(path, "absent (the msr module is not loaded)") from None
        except OSError as exc:
            raise _os_error(path, exc) from None
        try:
            data = os.pread(fd, 8, register)
        except OSError as exc:
            raise _os_error(f"{path} at {register:#x}", exc) from None
        finally:
            os.close(fd)
        if len(data) != 8:
            raise SourceError(f"{path} at {register:#x}", "short read")
        return int.from_bytes(data, "little")

    def clock(self) -> float:
        self._files_only("clock")
        return time.time()

    def key_info(self, path: str) -> KeyInfo:
        """Load the private key here, inside the source, and return only its public half."""
        import hashlib

        from cryptography.hazmat.primitives import serialization

        data = self.read_file(path, max_bytes=1024 * 1024)
        try:
            if b"-----BEGIN" in data:
                key = serialization.load_pem_private_key(data, password=None)
            else:
                key = serialization.load_der_private_key(data, password=None)
        except TypeError:
            return KeyInfo(path, False, problem="the key is encrypted with a passphrase")
        except (ValueError, Exception) as exc:  # noqa: BLE001 - any parse failure is an answer
            return KeyInfo(path, False, problem=f"not a private key: {type(exc).__name__}")
        finally:
            del data
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        name = type(key).__name__.replace("_", "")
        key_type = next(
            (
                t
                for t in ("RSA", "EllipticCurve", "Ed25519", "Ed448", "DSA")
                if t.lower() in name.lower()
            ),
            name,
        )
        return KeyInfo(
            path,
            True,
            key_type="EC" if key_type == "EllipticCurve" else key_type,
            bits=getattr(key, "key_size", None),
            public_sha256=hashlib.sha256(spki).hexdigest(),
        )

    def libvirt(self, uri: Optional[str], request: str, **params: Any) -> Any:
        self._files_only(f"libvirt {request}")
        return self._libvirt.request(uri, request, params)

    def netlink(self, request: str, netns: Optional[str] = None) -> list[dict[str, Any]]:
        """links, addresses, routes, neighbours or fdb of this namespace or `netns`."""
        from doctor.sources.netlink import dump

        self._files_only(f"netlink {request}")
        return dump(request, netns if netns is not None else self.netns)

    def close(self) -> None:
        started, self._started = self._started, {}
        for command in started.values():
            command.stop()
        self._libvirt.close()
