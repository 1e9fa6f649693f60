"""Users, groups, and the principals that must be able to use /dev/kvm."""

from __future__ import annotations

import stat as stat_mod
from dataclasses import asdict
from typing import Any, Optional

from doctor.facts import FactContext, FactUnavailable, fact
from doctor.facts.util import read_text
from doctor.record import record
from doctor.sources.base import SourceError, StatInfo


@record
class User:
    name: str
    uid: int
    gid: int


@record
class Group:
    name: str
    gid: int
    members: tuple[str, ...]


@record
class Accounts:
    """/etc/passwd and /etc/group of the host (or of the tree under --root)."""

    users: tuple[User, ...]
    groups: tuple[Group, ...]

    def user(self, name: str) -> Optional[User]:
        return next((u for u in self.users if u.name == name), None)

    def user_by_uid(self, uid: int) -> Optional[User]:
        return next((u for u in self.users if u.uid == uid), None)

    def group(self, name: str) -> Optional[Group]:
        return next((g for g in self.groups if g.name == name), None)

    def group_name(self, gid: int) -> str:
        return next((g.name for g in self.groups if g.gid == gid), str(gid))

    def user_name(self, uid: int) -> str:
        user = self.user_by_uid(uid)
        return user.name if user else str(uid)

    def configured_gids(self, user: User) -> tuple[int, ...]:
        """What initgroups() gives the user: the primary group and every group listing it."""
        gids = {user.gid} | {g.gid for g in self.groups if user.name in g.members}
        return tuple(sorted(gids))


def parse_passwd(text: str) -> tuple[User, ...]:
    users = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 4 and parts[2].isdigit() and parts[3].isdigit():
            users.append(User(parts[0], int(parts[2]), int(parts[3])))
    return tuple(users)


def parse_group(text: str) -> tuple[Group, ...]:
    groups = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 4 and parts[2].isdigit():
            members = tuple(m for m in parts[3].split(",") if m)
            groups.append(Group(parts[0], int(parts[2]), members))
    return tuple(groups)


@fact("accounts")
def accounts(ctx: FactContext) -> Accounts:
    try:
        passwd = read_text(ctx.source, "/etc/passwd")
        group = read_text(ctx.source, "/etc/group")
    except SourceError as exc:
        raise FactUnavailable(f"cannot read the account database: {exc}") from None
    return Accounts(parse_passwd(passwd), parse_group(group))


# --- permissions --------------------------------------------------------------------------------


def mode_string(st: StatInfo) -> str:
    """`ls -l` style, with the `+` that marks an extended ACL: crw-rw----+."""
    kinds = {
        "char": "c",
        "block": "b",
        "dir": "d",
        "file": "-",
        "link": "l",
        "socket": "s",
        "fifo": "p",
    }
    text = kinds.get(st.type, "?") + stat_mod.filemode(st.mode)[1:]
    return text + ("+" if has_extended_acl(st) else "")


def has_extended_acl(st: StatInfo) -> bool:
    return any(e.qualifier is not None or e.tag == "mask" for e in st.acl)


@record
class Access:
    read: bool  # open(O_RDONLY) is allowed
    write: bool  # open(O_WRONLY) is allowed
    via: str  # which rule decided: "root", "owner", "ACL user:alice", "group kvm", "other", ...
    detail: str  # the rule in words, for messages
    # open(O_RDWR) is allowed. Only the group class can grant read and write through different
    # entries and still refuse both at once; None means `read and write`.
    read_write_granted: Optional[bool] = None

    @property
    def read_write(self) -> bool:
        if self.read_write_granted is not None:
            return self.read_write_granted
        return self.read and self.write


def _bits(perms: str) -> tuple[bool, bool]:
    return perms[0] == "r", perms[1] == "w"


def _mode_perms(mode: int, shift: int) -> str:
    bits = (mode >> shift) & 7
    return ("r" if bits & 4 else "-") + ("w" if bits & 2 else "-") + ("x" if bits & 1 else "-")


def _and(a: str, b: str) -> str:
    return "".join(x if x == y else "-" for x, y in zip(a, b))


def access(st: StatInfo, uid: int, gids: tuple[int, ...], accounts: Accounts) -> Access:
    """What the kernel's permission check (with POSIX ACLs) grants `uid` with groups `gids`."""
    if uid == 0:
        return Access(True, True, "root", "uid 0 bypasses file permissions")
    entries = st.acl if has_extended_acl(st) else ()
    owner_perms = _mode_perms(st.mode, 6)
    if uid == st.uid:
        return Access(
            *_bits(owner_perms), "owner", f"owner {accounts.user_name(uid)}: {owner_perms}"
        )
    mask = next((e.perms for e in entries if e.tag == "mask"), "rwx")
    for entry in entries:
        if entry.tag == "user" and entry.qualifier == uid:
            perms = _and(entry.perms, mask)
            name = accounts.user_name(uid)
            masked = f" (masked to {perms})" if perms != entry.perms else ""
            return Access(
                *_bits(perms), f"ACL user:{name}", f"ACL entry user:{name}:{entry.perms}{masked}"
            )
    # The group class: the owning group and named group entries; any one that grants decides.
    matched = []
    if entries:
        group_obj = next(
            (e.perms for e in entries if e.tag == "group" and e.qualifier is None),
            _mode_perms(st.mode, 3),
        )
        if st.gid in gids:
            matched.append((f"group {accounts.group_name(st.gid)}", _and(group_obj, mask)))
        for entry in entries:
            if entry.tag == "group" and entry.qualifier is not None and entry.qualifier in gids:
                name = accounts.group_name(entry.qualifier)
                matched.append((f"ACL group:{name}", _and(entry.perms, mask)))
    elif st.gid in gids:
        matched.append((f"group {accounts.group_name(st.gid)}", _mode_perms(st.mode, 3)))
    if matched:
        # The kernel grants a request when one matching group entry (after the mask) holds
        # every permission asked for (fs/posix_acl.c): read and write may come from different
        # entries, read-write only from a single one.
        for via, perms in matched:
            if perms[:2] == "rw":
                return Access(True, True, via, f"{via}: {perms}")
        read = any(perms[0] == "r" for _, perms in matched)
        write = any(perms[1] == "w" for _, perms in matched)
        via = ", ".join(v for v, _ in matched)
        detail = "; ".join(f"{v}: {perms}" for v, perms in matched)
        if read and write:
            detail += " (no single group entry grants read and write)"
        return Access(read, write, via, detail, read_write_granted=False)
    other = _mode_perms(st.mode, 0)
    return Access(
        *_bits(other),
        "other",
        f"not owner, not in group {accounts.group_name(st.gid)}, no ACL entry: others get {other}",
    )


# --- principals ---------------------------------------------------------------------------------

DAEMONS = ("libvirtd", "virtqemud")


def _is_qemu(name: str, exe: str) -> bool:
    return name.startswith("qemu-system") or name == "qemu-kvm" or exe.endswith("/qemu-kvm")


def _daemon_or_qemu(name: str, exe: str) -> bool:
    """The processes whose groups `principals` reads."""
    return name in DAEMONS or _is_qemu(name, exe)


@record
class Principal:
    """Someone who must be able to open /dev/kvm read-write."""

    role: str  # "invoking user", "qemu.conf user", "libvirtd", "virtqemud", "QEMU process"
    name: str
    uid: int
    gids: tuple[int, ...]  # the groups the kernel will see
    groups_from: str  # where `gids` came from
    configured_gids: Optional[tuple[int, ...]]  # from /etc/passwd + /etc/group, when known
    pid: Optional[int] = None
    note: Optional[str] = None

    @property
    def subject(self) -> str:
        if self.pid is not None:
            return f"process:{self.name}[{self.pid}]"
        return f"user:{self.name}"

    def as_dict(self, accounts: Accounts) -> dict[str, Any]:
        out = asdict(self)
        out["groups"] = [accounts.group_name(g) for g in self.gids]
        if self.configured_gids is not None:
            out["configured_groups"] = [accounts.group_name(g) for g in self.configured_gids]
        return out


@record
class Principals:
    items: tuple[Principal, ...]
    notes: tuple[str, ...]  # principals that could not be determined, and why


def _status_groups(ctx: FactContext, pid: int) -> Optional[tuple[int, ...]]:
    """Supplementary groups from /proc/PID/status (psutil does not report them)."""
    try:
        text = read_text(ctx.source, f"/proc/{pid}/status")
    except SourceError:
        return None
    for line in text.splitlines():
        if line.startswith("Groups:"):
            return tuple(sorted(int(g) for g in line.split()[1:]))
    return None


def _qemu_conf_user(accts: Accounts, value: str) -> Optional[User]:
    """libvirt's rule (virGetUserID): "+N" is uid N; otherwise a name, then a uid."""
    if value.startswith("+"):
        return accts.user_by_uid(int(value[1:])) if value[1:].isdigit() else None
    return accts.user(value) or (accts.user_by_uid(int(value)) if value.isdigit() else None)


def _qemu_conf_gid(accts: Accounts, value: str) -> Optional[int]:
    """libvirt's rule (virGetGroupID): "+N" is gid N; otherwise a name, then a gid. A number
    needs no /etc/group entry: the kernel takes it as it is."""
    if value.startswith("+"):
        return int(value[1:]) if value[1:].isdigit() else None
    group = accts.group(value)
    if group is not None:
        return group.gid
    return int(value) if value.isdigit() else None


@fact("principals")
def principals(ctx: FactContext) -> Principals:
    accts: Accounts = ctx.get("accounts")
    items: list[Principal] = []
    notes: list[str] = []

    # 1. Whoever runs kvmdoctor (under sudo: whoever ran sudo).
    try:
        ident = ctx.source.identity()
    except SourceError as exc:
        notes.append(f"invoking user: {exc.reason}")
    else:
        if ident.euid == 0 and ident.sudo_user:
            user = accts.user(ident.sudo_user)
            if user is not None:
                gids = accts.configured_gids(user)
                items.append(
                    Principal(
                        "invoking user",
                        user.name,
                        user.uid,
                        gids,
                        "/etc/group",
                        gids,
                        note="ran kvmdoctor through sudo",
                    )
                )
            else:
                notes.append(f"invoking user: sudo user {ident.sudo_user!r} is not in /etc/passwd")
        else:
            user = accts.user_by_uid(ident.uid)
            gids = tuple(sorted({ident.gid, *ident.groups}))
            items.append(
                Principal(
                    "invoking user",
                    user.name if user else str(ident.uid),
                    ident.uid,
                    gids,
                    "the kvmdoctor process",
                    accts.configured_gids(user) if user else None,
                )
            )

    # 2. The identity QEMU runs as under the system daemon (qemu.conf user/group).
    conf = ctx.optional("qemu_conf")
    configured = conf.values.get("user") if conf is not None else None
    name = str(configured) if configured is not None else None
    origin = "qemu.conf"
    if name is None:
        # Distribution defaults: Debian/Ubuntu libvirt-qemu, Fedora/RHEL/SUSE qemu.
        name = next((n for n in ("libvirt-qemu", "qemu") if accts.user(n)), None)
        origin = "distribution default"
    if name is not None:
        user = _qemu_conf_user(accts, name)
        if user is None:
            notes.append(f"qemu.conf user {name!r} does not exist in /etc/passwd")
        else:
            qemu_gids = set(accts.configured_gids(user))
            group_name = conf.values.get("group") if conf is not None else None
            if group_name is not None:
                gid = _qemu_conf_gid(accts, str(group_name))
                if gid is not None:
                    qemu_gids.add(gid)
                else:
                    notes.append(f"qemu.conf group {group_name!r} does not exist in /etc/group")
            items.append(
                Principal(
                    "qemu.conf user",
                    user.name,
                    user.uid,
                    tuple(sorted(qemu_gids)),
                    f"/etc/group ({origin})",
                    tuple(sorted(qemu_gids)),
                )
            )
    else:
        notes.append("qemu.conf sets no user and no libvirt-qemu/qemu account exists")

    # 3. Running daemons and QEMU processes, with the groups the kernel really gave them.
    try:
        procs = ctx.source.processes(_daemon_or_qemu)
    except SourceError as exc:
        notes.append(f"processes: {exc.reason}")
        procs = []
    for proc in procs:
        if proc.name in DAEMONS:
            role = proc.name
        elif _is_qemu(proc.name, proc.exe):
            role = "QEMU process"
        else:
            continue
        groups = _status_groups(ctx, proc.pid)
        if groups is None:
            notes.append(f"{proc.name}[{proc.pid}]: /proc/{proc.pid}/status unreadable")
            continue
        user = accts.user_by_uid(proc.uid)
        items.append(
            Principal(
                role,
                user.name if user else str(proc.uid),
                proc.uid,
                tuple(sorted({proc.gid, *groups})),
                f"/proc/{proc.pid}/status",
                accts.configured_gids(user) if user else None,
                pid=proc.pid,
            )
        )
    return Principals(tuple(items), tuple(notes))
