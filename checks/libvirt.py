"""libvirt checks: the daemons and their sockets, the connection, virtlogd, emulators, the
URI, the network driver's firewall tools, and whether QEMU may read domains' images."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict
from typing import Optional

from doctor.facts.accounts import Accounts, Principals, access
from doctor.facts.daemons import (
    MONOLITHIC,
    Connection,
    Daemon,
    LibvirtDaemons,
    SocketChoice,
    socket_prefix,
)
from doctor.facts.fleet import COMPONENTS, Fleet
from doctor.facts.hostpaths import DiskPaths, Emulators, FirewallTools, PathState, stat_of
from doctor.facts.libvirt import LibvirtConfFiles, LibvirtUri, QemuConf
from doctor.model import Finding
from doctor.record import record
from doctor.registry import check

PACKAGES = {
    "debian": "libvirt-daemon-system",
    "ubuntu": "libvirt-daemon-system",
    "fedora": "libvirt-daemon-kvm",
    "rhel": "libvirt-daemon-kvm",
    "centos": "libvirt-daemon-kvm",
    "rocky": "libvirt-daemon-kvm",
    "almalinux": "libvirt-daemon-kvm",
    "opensuse-leap": "libvirt-daemon-qemu",
    "opensuse-tumbleweed": "libvirt-daemon-qemu",
    "sles": "libvirt-daemon-qemu",
    "arch": "libvirt",
}
INSTALLERS = {
    "debian": "apt-get install",
    "ubuntu": "apt-get install",
    "fedora": "dnf install",
    "rhel": "dnf install",
    "centos": "dnf install",
    "rocky": "dnf install",
    "almalinux": "dnf install",
    "opensuse-leap": "zypper install",
    "opensuse-tumbleweed": "zypper install",
    "sles": "zypper install",
    "arch": "pacman -S",
}
# The modular daemons a QEMU host needs for the usual virsh/virt-manager work.
MODULAR_CORE = ("virtqemud", "virtnetworkd", "virtstoraged")


def _install_hint(daemons: LibvirtDaemons) -> str:
    distro = daemons.distribution or ""
    package = PACKAGES.get(distro)
    if package is None:
        return "install your distribution's libvirt daemon package (with the QEMU driver)"
    return f"{INSTALLERS[distro]} {package}"


def _start_hint(daemons: LibvirtDaemons, daemon: str) -> str:
    """Exactly what starts `daemon` on this host."""
    if daemons.systemd:
        if daemon == MONOLITHIC:
            return "systemctl enable --now libvirtd.socket libvirtd-ro.socket libvirtd-admin.socket"
        return f"systemctl enable --now {daemon}.socket {daemon}-ro.socket {daemon}-admin.socket"
    return f"{daemon} -d   (no systemd here: start it by hand or from your init system)"


@check(
    "LIB001",
    "libvirt-socket-missing",
    title="The libvirt socket the URI needs is missing",
    tags=("libvirt", "ci"),
)
def libvirt_socket_missing(
    uri: LibvirtUri,
    libvirt_daemons: LibvirtDaemons,
    libvirt_socket: Optional[SocketChoice] = None,
    libvirt_conn: Optional[Connection] = None,
) -> Iterator[Finding]:
    """What it checks: that the UNIX socket a local URI connects to exists, chosen as libvirt's
    client chooses it: the modular daemon's socket (virtqemud-sock) when it exists, else the
    monolithic libvirtd's (libvirt-sock), else the build's default. It says which daemon
    model is installed (monolithic libvirtd, modular virtqemud/virtnetworkd/virtstoraged, or
    none at all) and exactly what to start; on a modular host it also checks the network and
    storage daemons' sockets that virsh and virt-manager use. A socket file that exists
    while the connection to it is refused is a socket left behind by a daemon that is gone
    (killed, crashed, or a /run that outlived it), and fails too. A virtqemud socket file
    that no virtqemud serves on a host run by the monolithic libvirtd is told apart: the
    client prefers that file whenever it exists, so it hides the healthy libvirtd from every
    client that names a URI (qemu:///system), while a connection without a URI still works.

    Why it matters: every client fails before doing anything: "Failed to connect socket to
    '/var/run/libvirt/libvirt-sock': No such file or directory", or "...: Connection refused"
    where the file outlived its daemon (and looks fine to `ls`): "Failed to connect socket to
    '/var/run/libvirt/virtqemud-sock': Connection refused" on a host that runs libvirtd.

    How to fix: start the daemon the finding names (with systemd, enable its sockets:
    `systemctl enable --now libvirtd.socket`, or on a modular host
    `systemctl enable --now virtqemud.socket`); without systemd run it (`libvirtd -d`). When
    no daemon is installed, install the package the finding names. A session URI
    (qemu:///session) starts its own daemon on first use. For a virtqemud socket left on a
    libvirtd host, do not start virtqemud: remove the stale file (`rm -f
    /run/libvirt/virtqemud-sock`), pin clients to libvirtd with `remote_mode = "legacy"`
    in /etc/libvirt/libvirt.conf if it may come back, or move the host to the modular
    daemons altogether.

    References: https://libvirt.org/daemons.html
    https://libvirt.org/uri.html
    """
    state = libvirt_daemons
    evidence: dict[str, object] = {"uri": uri.as_dict(), "daemons": state.as_dict()}
    if not uri.parts.local_daemon:
        yield Finding(
            "pass", f"{uri.effective} does not use a local daemon socket", evidence=evidence
        )
        return
    if not state.installed:
        yield Finding(
            "fail",
            f"no libvirt daemon is installed (neither libvirtd nor virtqemud "
            f"in /usr/sbin): {_install_hint(state)}",
            evidence=evidence,
        )
        return
    if libvirt_socket is None:
        yield Finding("skip", "the socket choice could not be made", evidence=evidence)
        return
    choice = libvirt_socket
    evidence["socket"] = {
        "path": choice.path,
        "exists": choice.exists,
        "daemon": choice.daemon,
        "mode": choice.mode,
        "why": choice.why,
        "alternatives": choice.alternatives,
    }
    if uri.session and not choice.exists:
        yield Finding(
            "pass",
            f"{choice.path} does not exist yet; the session daemon starts on the first connection",
            evidence=evidence,
        )
        return
    daemon = state.daemons.get(choice.daemon)
    evidence["daemon"] = choice.daemon
    # A session daemon is started again by the client when its socket refuses: not stale.
    refused = (
        libvirt_conn
        if libvirt_conn is not None
        and choice.exists
        and not uri.session
        and _refused_at(libvirt_conn, choice.path)
        else None
    )
    stale = _stale_modular_socket(choice, state, uri, refused is not None)
    if stale is not None:
        evidence["stale_modular_socket"] = stale.as_dict()
        if refused is not None:
            evidence["connection"] = refused.as_dict()
        yield Finding(
            "fail",
            _stale_message(stale, state),
            subject=f"socket:{choice.path}",
            evidence=evidence,
        )
        return
    if refused is not None:
        evidence["connection"] = refused.as_dict()
        yield Finding(
            "fail",
            _left_behind_message(choice, daemon, state),
            subject=f"socket:{choice.path}",
            evidence=evidence,
        )
    elif choice.exists:
        yield Finding(
            "pass",
            f"{choice.path} exists ({choice.daemon}, {state.model} daemons; {choice.why})",
            subject=f"socket:{choice.path}",
            evidence=evidence,
        )
    else:
        yield Finding(
            "fail",
            _missing_message(choice, daemon, state),
            subject=f"socket:{choice.path}",
            evidence=evidence,
        )
    if choice.mode == "direct":
        for name in MODULAR_CORE[1:]:
            other = state.daemons[name]
            path = f"{state.socket_dir}/{socket_prefix(name)}-sock"
            if not other.installed:
                continue
            if other.sockets.get(path):
                yield Finding(
                    "pass",
                    f"{path} exists",
                    subject=f"socket:{path}",
                    evidence={**evidence, "daemon": name},
                )
            else:
                yield Finding(
                    "fail",
                    f"{path} is missing: {name} is not running, so network "
                    f"or storage operations fail; start it: "
                    f"{_start_hint(state, name)}",
                    subject=f"socket:{path}",
                    evidence={**evidence, "daemon": name},
                )


def _missing_message(choice: SocketChoice, daemon: Optional[Daemon], state: LibvirtDaemons) -> str:
    if daemon is not None and not daemon.installed:
        return (
            f"{choice.path} does not exist and {choice.daemon} is not installed "
            f"({state.model} daemons here; {choice.why}): {_install_hint(state)}"
        )
    if daemon is not None and daemon.pids:
        return (
            f"{choice.path} does not exist although {choice.daemon} runs (pid "
            f"{', '.join(map(str, daemon.pids))}): its socket was removed; restart it: "
            f"{_start_hint(state, choice.daemon)}"
        )
    return (
        f"{choice.path} does not exist: {choice.daemon} is not running ({state.model} "
        f"daemons installed; {choice.why}); start it: {_start_hint(state, choice.daemon)}"
    )


_REFUSED = re.compile(r"Failed to connect socket to '([^']+)': Connection refused", re.IGNORECASE)


def _refused_at(conn: Connection, path: str) -> bool:
    """The connection to the socket `path` was refused: the file is there, nobody listens."""
    if conn.ok or conn.error_kind != "daemon-not-running":
        return False
    found = _REFUSED.search(conn.error or "")
    return found is not None and _run_path(found.group(1)) == _run_path(path)


def _run_path(path: str) -> str:
    """/var/run is /run on every current distribution; libvirt names either."""
    return "/run/" + path[len("/var/run/") :] if path.startswith("/var/run/") else path


def _left_behind_message(
    choice: SocketChoice, daemon: Optional[Daemon], state: LibvirtDaemons
) -> str:
    start = _start_hint(state, choice.daemon)
    if daemon is not None and daemon.pids:
        return (
            f"{choice.path} exists but refuses connections although {choice.daemon} runs (pid "
            f"{', '.join(map(str, daemon.pids))}): that daemon does not listen on it (still "
            f"starting, or started with another socket directory); restart it: {start}"
        )
    return (
        f"{choice.path} exists but nothing listens on it (connection refused): "
        f"{choice.daemon} is not running and left its socket behind (it was killed or "
        f"crashed, or /run outlived it); start it (it replaces the socket): {start}"
    )


@record
class StaleSocket:
    """A modular daemon's socket file that nothing serves, on a monolithic host."""

    path: str
    daemon: str  # whose socket it is: virtqemud
    files: tuple[str, ...]  # every socket file of that daemon that exists
    daemon_installed: bool
    served_by_pids: tuple[int, ...]  # the monolithic libvirtd's
    legacy_socket: str
    legacy_socket_exists: bool
    refused: bool  # kvmdoctor's own connection to it was refused

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["served_by"] = MONOLITHIC
        out["confirmed_by"] = (
            "the connection to it was refused"
            if self.refused
            else f"no {self.daemon} process and no active {self.daemon}.socket unit"
        )
        return out


def _stale_modular_socket(
    choice: SocketChoice, state: LibvirtDaemons, uri: LibvirtUri, refused: bool
) -> Optional[StaleSocket]:
    """The modular daemon's socket the client picked, when it is a file left behind on a
    host served by the monolithic libvirtd; else None. libvirt's client takes the modular
    socket whenever that file exists (remote_mode auto), so a stale one hides a healthy
    libvirtd from every client that names a URI."""
    if uri.session or choice.mode != "direct" or not choice.exists:
        return None
    if choice.why != f"{choice.path} exists":  # direct mode asked for: modular is meant
        return None
    modular = state.daemons.get(choice.daemon)
    mono = state.daemons[MONOLITHIC]
    if modular is None or not mono.installed or not state.processes_known:
        return None
    if modular.running or any(
        u.name.endswith(".socket") and u.active == "active" for u in modular.units
    ):
        return None  # the modular daemon (or systemd for it) is there: not this problem
    if not mono.pids and modular.installed:
        return None  # neither runs and both are installed: which one is meant is unknown
    legacy = f"{state.socket_dir}/libvirt-sock"
    return StaleSocket(
        path=choice.path,
        daemon=choice.daemon,
        files=tuple(p for p, there in modular.sockets.items() if there),
        daemon_installed=modular.installed,
        served_by_pids=mono.pids,
        legacy_socket=legacy,
        legacy_socket_exists=mono.sockets.get(legacy, False),
        refused=refused,
    )


def _stale_message(stale: StaleSocket, state: LibvirtDaemons) -> str:
    who, path = stale.daemon, stale.path
    seen = "the connection to it is refused" if stale.refused else f"no {who} process exists"
    if stale.served_by_pids:
        host = (
            f"this host is served by the monolithic libvirtd (pid "
            f"{', '.join(map(str, stale.served_by_pids))}, on {stale.legacy_socket})"
        )
        then = "; libvirtd then answers them"
    else:
        host = f"only the monolithic libvirtd is installed here ({who} is not)"
        then = f" and start libvirtd: {_start_hint(state, MONOLITHIC)}"
    return (
        f"{path} is a socket file left behind by {who} ({seen}), but {host}: libvirt's "
        f"client prefers {path} whenever the file exists, so every client that names a URI "
        f'(virsh -c qemu:///system, virt-manager, virt-install) fails with "Failed to '
        f"connect socket to '{path}': Connection refused\". Remove the stale file "
        f"(rm -f {' '.join(stale.files)}){then}; or switch this host to the modular daemons"
    )


ADVICE = {
    "daemon-not-running": "the daemon is not running or its socket is gone (see LIB001)",
    "permission": "the socket refuses this user: add the user to the socket's group "
    "(unix_sock_group in libvirtd.conf, usually `libvirt`), log in again, or use qemu:///session",
    "auth": "authentication failed: without a polkit agent, members of the `libvirt` group are "
    "allowed by polkit rules; add the user to it, or use sudo",
    "tls": "the TLS handshake failed (see the TLS checks)",
    "timeout": "the daemon accepted the connection and did not answer: it is hung or "
    "overloaded; look at its log and restart it",
    "no-driver": "no driver answers this URI: is the hypervisor driver installed?",
    "unknown": "see libvirt's message",
}


@check(
    "LIB002",
    "libvirt-connection-failed",
    title="Connecting to libvirt fails",
    tags=("libvirt", "ci"),
)
def libvirt_connection_failed(libvirt_conn: Connection) -> Iterator[Finding]:
    """What it checks: a real connection with libvirt-python to the URI in effect, under a time
    limit (`--connect-timeout`), as virsh would make it but never prompting for credentials.
    A failure keeps libvirt's error code and domain and is classified: daemon not running,
    permission, authentication, TLS, time-out, no driver, or unknown.

    Why it matters: nothing else libvirt-based works until this does; and a daemon that
    accepts and never answers hangs every client, which kvmdoctor reports instead of
    hanging too.

    How to fix: follow the class named in the finding: start the daemon (LIB001), join the
    socket's group or use qemu:///session, fix the certificates (TLS checks), restart a hung
    daemon.

    References: https://libvirt.org/uri.html
    https://libvirt.org/auth.html
    """
    conn = libvirt_conn
    evidence: dict[str, object] = conn.as_dict()
    if conn.ok:
        info = conn.info or {}
        version = info.get("daemon_version")
        text = ""
        if isinstance(version, int):
            text = f", libvirt {version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"
        yield Finding(
            "pass",
            f"connected to {info.get('uri', conn.uri)} ({info.get('hypervisor', '?')}{text})",
            evidence=evidence,
        )
        return
    kind = conn.error_kind or "unknown"
    code = conn.details.get("code_name")
    said = f"{conn.error}" + (f" [{code}]" if code else "")
    if conn.opened and kind == "timeout":
        yield Finding(
            "fail",
            f"connected to {conn.uri}, but a request on the connection hung: {said}; the "
            "daemon accepted the connection and then stopped answering: it is hung or "
            "overloaded (a stuck driver or domain job); look at its log and restart it",
            evidence=evidence,
        )
        return
    yield Finding(
        "fail", f"cannot connect to {conn.uri}: {said}; {ADVICE.get(kind, '')}", evidence=evidence
    )


@check(
    "LIB003",
    "virtlogd-unavailable",
    title="virtlogd is not available to QEMU",
    tags=("libvirt", "ci"),
)
def virtlogd_unavailable(
    libvirt_daemons: LibvirtDaemons, qemu_conf: Optional[QemuConf] = None
) -> Iterator[Finding]:
    """What it checks: that virtlogd's socket exists when QEMU's output goes through it
    (qemu.conf `stdio_handler = "logd"`, the default).

    Why it matters: every domain start fails with "Failed to connect socket to
    '/run/libvirt/virtlogd-sock': No such file or directory", while the daemon itself and
    virsh list look healthy.

    How to fix: `systemctl enable --now virtlogd.socket` (or `virtlogd -d` without systemd);
    or set `stdio_handler = "file"` in qemu.conf and restart the daemon.

    References: https://libvirt.org/manpages/virtlogd.html
    """
    state = libvirt_daemons
    handler = qemu_conf.values.get("stdio_handler", "logd") if qemu_conf is not None else "logd"
    virtlogd = state.daemons["virtlogd"]
    path = f"{state.socket_dir}/virtlogd-sock"
    evidence: dict[str, object] = {
        "stdio_handler": handler,
        "socket": path,
        "exists": virtlogd.sockets.get(path, False),
        "binary": virtlogd.binary,
        "pids": list(virtlogd.pids),
    }
    if not state.installed:
        yield Finding("skip", "no libvirt daemon is installed (see LIB001)", evidence=evidence)
        return
    if handler == "file":
        yield Finding(
            "pass",
            'qemu.conf sets stdio_handler = "file": virtlogd is not needed',
            evidence=evidence,
        )
        return
    if virtlogd.sockets.get(path):
        yield Finding("pass", f"{path} exists", evidence=evidence)
        return
    if not virtlogd.installed:
        fix = _install_hint(state)
    else:
        fix = "systemctl enable --now virtlogd.socket" if state.systemd else "virtlogd -d"
    yield Finding(
        "fail",
        f'{path} is missing: domains will not start ("Failed to connect '
        f"socket to '{path}'\"); start virtlogd: {fix}",
        evidence=evidence,
    )


@check(
    "LIB004",
    "qemu-emulator-missing",
    title="A QEMU emulator libvirt names does not exist",
    tags=("libvirt", "domain"),
)
def qemu_emulator_missing(emulators: Emulators) -> Iterator[Finding]:
    """What it checks: every emulator named in libvirt's capabilities and in each domain's
    `<emulator>` exists and is executable.

    Why it matters: a domain whose emulator is gone (a QEMU package removed, or XML copied
    from another distribution: /usr/libexec/qemu-kvm on RHEL, /usr/bin/qemu-system-x86_64
    elsewhere) cannot start: "Cannot check QEMU binary /usr/libexec/qemu-kvm: No such file
    or directory".

    How to fix: install the QEMU package for the architecture (qemu-system-x86 on Debian,
    qemu-kvm on RHEL), or point the domain at an emulator that exists with `virsh edit`
    (`<emulator>/usr/bin/qemu-system-x86_64</emulator>`).

    References: https://libvirt.org/formatdomain.html#devices
    """
    if emulators.not_here:
        yield Finding("pass", f"emulators not examined: {emulators.not_here}")
        return
    if not emulators.items:
        yield Finding("pass", "no emulator is named (no QEMU guest support and no domains)")
        return
    for emu in emulators.items:
        state = emu.state
        evidence = {"emulator": state.as_dict(), "named_by": list(emu.named_by)}
        who = ", ".join(emu.named_by)
        if state.error is not None:
            yield Finding(
                "skip",
                f"{state.path} could not be examined: {state.error}",
                subject=f"emulator:{state.path}",
                evidence=evidence,
            )
        elif state.executable:
            yield Finding(
                "pass", f"{state.path} exists", subject=f"emulator:{state.path}", evidence=evidence
            )
        elif state.exists:
            yield Finding(
                "fail",
                f"{state.path} ({who}) is not an executable file "
                f"({state.type}, mode {state.mode or 0:04o})",
                subject=f"emulator:{state.path}",
                evidence=evidence,
            )
        else:
            yield Finding(
                "fail",
                f"{state.path} does not exist but {who} names it: install "
                "the QEMU package or change the domain's <emulator>",
                subject=f"emulator:{state.path}",
                evidence=evidence,
            )


@check(
    "LIB005",
    "uri-implies-tls",
    title="A URI with a host and no transport selects TLS",
    tags=("libvirt", "ci"),
)
def uri_implies_tls(uri: LibvirtUri) -> Iterator[Finding]:
    """What it checks: a libvirt URI with a host part and no transport (`qemu://host/system`)
    selects TLS; usually `qemu:///system` (this host) or `qemu+ssh://host/system` was meant.
    It names where the URI came from: --uri, LIBVIRT_DEFAULT_URI, or libvirt.conf
    (uri_default, an alias in uri_aliases).

    Why it matters: the connection then needs certificates and a daemon listening for TLS,
    and fails with "Cannot read CA certificate '/etc/pki/CA/cacert.pem'" or "unable to
    connect to server at 'host:16514': Connection refused".

    How to fix: write `qemu:///system` for this host, `qemu+ssh://user@host/system` for a
    remote one over SSH, and keep `qemu+tls://` (or `qemu://host/`) for a deliberate TLS
    set-up with certificates (see the TLS checks).

    References: https://libvirt.org/uri.html#remote-uris
    """
    parts = uri.parts
    evidence: dict[str, object] = {"uri": uri.as_dict()}
    if parts.host and parts.transport is None:
        yield Finding(
            "warn",
            f"{uri.effective} (from {uri.origin}) has a host and no "
            "transport, so libvirt uses TLS on port 16514: qemu:///system (this "
            f"host) or qemu+ssh://{parts.host}/system may have been meant",
            evidence=evidence,
        )
        return
    yield Finding(
        "pass", f"{uri.effective} ({uri.origin}) uses {parts.implied_transport}", evidence=evidence
    )


@check(
    "LIB006",
    "network-firewall-tools-missing",
    title="The network driver's firewall tools are missing",
    tags=("libvirt", "network"),
)
def network_firewall_tools_missing(firewall_tools: FirewallTools) -> Iterator[Finding]:
    """What it checks: that the tools of the firewall backend libvirt's network driver uses are
    installed: iptables, ip6tables and ebtables for the iptables backend (libvirt before
    10.4, or `firewall_backend = "iptables"` in /etc/libvirt/network.conf), nft for the
    nftables backend.

    Why it matters: starting a virtual network (and so every guest on it) fails: "Failed to
    initialize a valid firewall backend", "/sbin/ebtables is not available", "Cannot find
    'iptables' in path".

    How to fix: install the missing tools (Debian: `apt-get install iptables ebtables`, or
    `nftables`), or set `firewall_backend` in /etc/libvirt/network.conf to the backend that
    is installed and restart the network daemon.

    References: https://libvirt.org/firewall.html
    """
    fw = firewall_tools
    evidence = fw.as_dict()
    if not fw.network_driver:
        yield Finding("pass", "libvirt's network driver is not installed", evidence=evidence)
        return
    missing = fw.missing()
    if not missing:
        yield Finding(
            "pass",
            f"the {fw.backend} backend's tools are installed "
            f"({', '.join(fw.needed)}; {fw.backend_from})",
            evidence=evidence,
        )
        return
    nets = f" (networks in use: {', '.join(fw.networks)})" if fw.networks else ""
    yield Finding(
        "fail",
        f"the {fw.backend} backend ({fw.backend_from}) needs "
        f"{', '.join(missing)}, which is not installed: virtual networks cannot "
        f"start{nets}",
        evidence=evidence,
    )


@check(
    "LIB007",
    "qemu-cannot-access-images",
    title="QEMU's user cannot reach a domain's disk image",
    tags=("libvirt", "domain"),
)
def qemu_cannot_access_images(
    disk_paths: DiskPaths, principals: Principals, accounts: Accounts
) -> Iterator[Finding]:
    """What it checks: for every local disk image of every domain, whether the qemu.conf user
    (with its groups) can reach it: search permission on every directory above it, and read
    (and write, unless the disk is read-only) on the image itself. With
    `dynamic_ownership = 1` (the default) libvirt hands the image to that user when the
    domain starts, so then only the directories count; a missing image is reported too.

    Why it matters: the domain fails to start with "Cannot access storage file '...'
    (as uid:107, gid:107): Permission denied" or "Could not open '...': Permission denied",
    typically for images under /root or a home directory.

    How to fix: move the image under /var/lib/libvirt/images, or give the qemu user search
    permission on the directories (`setfacl -m u:libvirt-qemu:x /home/alice`, or
    `chmod o+x`), or make the image readable by its group.

    References: https://libvirt.org/drvqemu.html#posix-users-groups
    https://libvirt.org/kbase/qemu-passthrough-security.html
    """
    qemu = next((p for p in principals.items if p.role == "qemu.conf user"), None)
    if not disk_paths.items:
        yield Finding(
            "pass",
            "no domain has a local disk image",
            evidence={"domains_from": disk_paths.origin, "not_local": list(disk_paths.skipped)},
        )
        return
    if qemu is None:
        yield Finding(
            "skip",
            "the qemu.conf user could not be determined",
            evidence={"notes": list(principals.notes)},
        )
        return
    for disk in disk_paths.items:
        subject = f"domain:{disk.domain}"
        evidence: dict[str, object] = {
            "image": disk.path,
            "target": disk.target,
            "readonly": disk.readonly,
            "qemu_user": qemu.name,
            "groups": [accounts.group_name(g) for g in qemu.gids],
            "dynamic_ownership": disk_paths.dynamic_ownership,
            "chain": [s.as_dict() for s in disk.chain],
        }
        last = disk.chain[-1]
        unknown = next((s for s in disk.chain if s.error is not None), None)
        if unknown is not None:
            yield Finding(
                "skip",
                f"{unknown.path} could not be examined: {unknown.error}",
                subject=subject,
                evidence=evidence,
            )
            continue
        if not last.exists:
            yield Finding(
                "fail",
                f'{disk.path} ({disk.target}) does not exist: "Cannot access '
                f"storage file '{disk.path}': No such file or directory\"",
                subject=subject,
                evidence=evidence,
            )
            continue
        blocked = next((s for s in disk.chain[:-1] if not _search(s, qemu.uid, qemu.gids)), None)
        if blocked is not None:
            state = blocked
            evidence["blocked"] = state.path
            yield Finding(
                "fail",
                f"{qemu.name} cannot reach {disk.path}: no search (x) "
                f"permission on {state.path} (mode {state.mode or 0:04o}, "
                f"{accounts.user_name(state.uid or 0)}:"
                f"{accounts.group_name(state.gid or 0)})",
                subject=subject,
                evidence=evidence,
            )
            continue
        verdict = access(stat_of(last), qemu.uid, qemu.gids, accounts)
        need_write = not disk.readonly
        ok = verdict.read and (verdict.write or not need_write)
        if ok or disk_paths.dynamic_ownership:
            note = "" if ok else " (libvirt hands it to that user at start: dynamic_ownership)"
            yield Finding(
                "pass",
                f"{qemu.name} can reach {disk.path}{note}",
                subject=subject,
                evidence=evidence,
            )
            continue
        yield Finding(
            "fail",
            f"{qemu.name} cannot {'read and write' if need_write else 'read'} "
            f"{disk.path} ({verdict.detail}) and dynamic_ownership is off",
            subject=subject,
            evidence=evidence,
        )


def _search(state: PathState, uid: int, gids: tuple[int, ...]) -> bool:
    """Search (x) permission on a directory for uid/gids, from its mode bits (directory
    ACLs are not read)."""
    mode = state.mode or 0
    if uid == 0:
        return True
    if state.uid == uid:
        return bool(mode & 0o100)
    if state.gid in gids:
        return bool(mode & 0o010)
    return bool(mode & 0o001)


@check(
    "LIB008",
    "libvirt-conf-unparseable",
    title="A libvirt configuration file does not parse",
    tags=("libvirt", "ci"),
)
def libvirt_conf_unparseable(libvirt_conf_files: LibvirtConfFiles) -> Iterator[Finding]:
    """What it checks: that each of libvirt's configuration files on the host
    (libvirtd.conf, qemu.conf, virtqemud.conf and the other daemons', network.conf,
    libvirt.conf) parses as libvirt's own parser (src/util/virconf.c) reads it: `name = value`
    with quoted strings, integers and [lists].

    Why it matters: libvirt does not skip a line it cannot parse; it refuses the whole file.
    A daemon then does not start ("Can't load config file: configuration file syntax error:
    /etc/libvirt/libvirtd.conf:2: expecting a value"), a driver does not load (qemu.conf), or
    every client fails (libvirt.conf). Unquoted strings (`unix_sock_group = libvirt`) and
    unterminated quotes are the usual causes, often from a hand edit or a configuration tool.

    How to fix: correct the line the finding names (quote the string, close the list), then
    restart the daemon that reads the file.

    References: https://libvirt.org/daemons.html https://libvirt.org/remote.html
    """
    for conf in libvirt_conf_files.files:
        subject = f"file:{conf.path}"
        evidence = {"path": conf.path, "reader": conf.reader}
        if conf.unreadable is not None:
            yield Finding(
                "skip", f"{conf.path}: cannot read it: {conf.unreadable}", subject, evidence
            )
        elif conf.error is not None:
            yield Finding(
                "fail",
                f"{conf.path}: {conf.error}: libvirt refuses the whole file, so "
                f"{conf.reader} does not start with it",
                subject,
                {**evidence, "error": conf.error},
            )
        else:
            yield Finding("pass", f"{conf.path} parses as libvirt reads it", subject, evidence)
    if not libvirt_conf_files.files:
        yield Finding(
            "skip", "no libvirt configuration file to read (none on the host, or none recorded)"
        )


# --- LIB009 version-drift (fleet) -------------------------------------------------------------


def _version_key(version: str) -> tuple[tuple[int, object], ...]:
    """Order versions as people read them: 9.10.0 after 9.9.0, 2022.11-6+deb12u2 after -6."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.findall(r"\d+|[A-Za-z]+", version)
    )


@check(
    "LIB009",
    "version-drift",
    title="Hosts of a fleet run other libvirt, QEMU or firmware versions than the rest",
    tags=("libvirt", "fleet"),
)
def version_drift(fleet: Fleet) -> Iterator[Finding]:
    """What it checks: across the hosts of a fleet (`kvmdoctor report merge`, from each
    host's report), the version of the libvirt daemon, of QEMU (as libvirt reports it) and of
    the UEFI firmware package (OVMF/edk2, from the package's own records): one finding per
    component about `version:COMPONENT`, naming the hosts that differ from the majority and
    the majority's version (on a tie, the newest version counts as the majority). Hosts whose
    report cannot tell are listed, not counted.

    Why it matters: guests migrate only to a host whose QEMU supports their machine type and
    whose libvirt understands their XML: a live migration from a newer to an older host fails
    ("unsupported configuration: Emulator ... does not support machine type"), and a fleet
    upgraded by halves behaves differently from host to host, so a problem seen on one host
    cannot be reproduced on another. A guest whose NVRAM was made by a newer firmware may not
    boot under an older one.

    How to fix: upgrade (or pin) the odd hosts to the fleet's version with the distribution's
    package manager (`apt-get install libvirt-daemon-system qemu-system-x86 ovmf`), restart
    libvirtd, and re-run `kvmdoctor run` on them before moving guests.

    References: https://libvirt.org/migration.html
    https://www.qemu.org/docs/master/devel/migration/compatibility.html
    """
    for component, label in COMPONENTS:
        versions = {h.name: h.versions.get(component) for h in fleet.hosts}
        known = {name: v for name, v in versions.items() if v}
        unknown = [name for name, v in versions.items() if not v]
        evidence: dict[str, object] = {
            "component": component,
            "versions": known,
            "unknown": unknown,
        }
        subject = f"version:{component}"
        if not known:
            yield Finding(
                "skip",
                f"no host's report gives its {label} version",
                subject=subject,
                evidence=evidence,
            )
            continue
        counts: dict[str, int] = {}
        for version in known.values():
            counts[version] = counts.get(version, 0) + 1
        majority = max(counts, key=lambda v: (counts[v], _version_key(v)))
        evidence["majority"] = majority
        odd = {name: v for name, v in known.items() if v != majority}
        note = f"; not known for {', '.join(unknown)}" if unknown else ""
        if not odd:
            yield Finding(
                "pass",
                f"{label} {majority} on all {len(known)} hosts that tell{note}",
                subject=subject,
                evidence=evidence,
            )
            continue
        evidence["odd_hosts"] = sorted(odd)
        listed = ", ".join(f"{name} runs {v}" for name, v in sorted(odd.items()))
        yield Finding(
            "warn",
            f"{label}: {listed}; the others run {majority} "
            f"({counts[majority]} of {len(known)} hosts){note}",
            subject=subject,
            evidence=evidence,
        )
