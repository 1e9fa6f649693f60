"""Forwarding and filtering: the sysctls that decide whether the kernel routes and whether
bridged frames go through iptables, and the firewall rules themselves.

`sysctl`: each value at runtime (/proc/sys) and as persisted for the next boot, resolved the
way systemd-sysctl resolves its configuration: *.conf files by file name across
/etc/sysctl.d, /run/sysctl.d, /usr/local/lib/sysctl.d, /usr/lib/sysctl.d and /lib/sysctl.d
(a name in an earlier directory hides the same name in a later one), applied in name order,
then /etc/sysctl.conf; the last assignment wins. Each persisted value says which file and line
set it and which earlier settings it overrides.

`firewall`: `nft -j list ruleset` (JSON) and `iptables-save` / `ip6tables-save` (text; there is
no JSON form), parsed into tables, chains (policy, hook) and rules (interface, address and
protocol matches, target). On a host with iptables-nft both views describe the same rules; a
host with legacy iptables has rules only iptables-save sees, and `iptables-legacy-save` is read
too when iptables-save warns that legacy tables exist. `Ruleset.verdict()` follows a traffic
class (in- and out-interface) through a hook's chains; `Ruleset.nat_rules()` lists the
MASQUERADE/SNAT rules reachable from postrouting.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import posixpath
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import asdict, field
from typing import Any, Optional

from doctor.facts import FactContext, FactUnavailable, fact
from doctor.record import record
from doctor.sources.base import NotFound, SourceError

# --- sysctl -------------------------------------------------------------------------------

SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv6.conf.all.forwarding",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.bridge.bridge-nf-call-arptables",
    "net.ipv4.conf.all.rp_filter",
    "net.ipv4.conf.default.rp_filter",
)
# systemd-sysctl's search path (src/sysctl/sysctl.c, CONF_PATHS("sysctl.d")), most important
# first; /etc/sysctl.conf comes after all of them (procps `sysctl --system` order).
SYSCTL_DIRS = (
    "/etc/sysctl.d",
    "/run/sysctl.d",
    "/usr/local/lib/sysctl.d",
    "/usr/lib/sysctl.d",
    "/lib/sysctl.d",
)
SYSCTL_CONF = "/etc/sysctl.conf"


def proc_path(name: str) -> str:
    return "/proc/sys/" + name.replace(".", "/")


def normalise_key(key: str) -> str:
    """sysctl.d(5): "/" and "." are both separators; a key that starts with "/"… is a path."""
    key = key.strip().lstrip("-").strip()
    if "/" in key.split(".", 1)[0] or key.startswith("/"):
        return key.strip("/").replace("/", ".")
    return key


@record
class Setting:
    """One `key = value` line of a sysctl configuration file."""

    key: str  # as written (may hold a glob)
    value: str
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def parse_sysctl_conf(text: str, path: str) -> list[Setting]:
    """sysctl.d(5): `key = value`, comments start with # or ;, a leading - ignores errors."""
    found = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if "=" not in line:
            continue
        key, value = line.split("=", 1)
        found.append(Setting(normalise_key(key), value.strip(), path, number))
    return found


def config_files(listings: Mapping[str, Optional[list[str]]]) -> list[str]:
    """The sysctl.d files systemd-sysctl reads, in the order it applies them. `listings` maps
    each directory to its entries (None: absent)."""
    chosen: dict[str, str] = {}
    for directory in SYSCTL_DIRS:  # most important first: the first directory keeps a name
        for name in listings.get(directory) or []:
            if name.endswith(".conf") and name not in chosen:
                chosen[name] = f"{directory}/{name}"
    return [chosen[name] for name in sorted(chosen)]


@record
class SysctlValue:
    name: str
    runtime: Optional[str]  # what /proc/sys says now; None when it cannot be read
    runtime_error: Optional[str] = None  # why not (absent: the module is not loaded)
    persisted: Optional[str] = None  # what the configuration sets at boot; None: not set
    persisted_in: Optional[str] = None  # FILE:LINE of the assignment that wins
    overridden: tuple[str, ...] = ()  # earlier assignments it replaces ("FILE:LINE = value")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@record
class Sysctls:
    values: dict[str, SysctlValue]
    files: tuple[str, ...]  # configuration files read, in the order applied
    problems: tuple[str, ...] = ()

    def get(self, name: str) -> SysctlValue:
        return self.values.get(name) or SysctlValue(name, None, "not examined")

    @property
    def br_netfilter(self) -> Optional[bool]:
        """Whether br_netfilter is loaded: its sysctls exist only then."""
        value = self.get("net.bridge.bridge-nf-call-iptables")
        if value.runtime is not None:
            return True
        if value.runtime_error and value.runtime_error.startswith("absent"):
            return False
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "values": {k: v.as_dict() for k, v in self.values.items()},
            "files": list(self.files),
            "problems": list(self.problems),
        }


def resolve_persisted(
    settings: Iterable[Setting], name: str
) -> tuple[Optional[Setting], list[Setting]]:
    """The assignment that wins for `name` (globs match) and the ones it overrides."""
    matching = [s for s in settings if s.key == name or fnmatch.fnmatchcase(name, s.key)]
    if not matching:
        return None, []
    return matching[-1], matching[:-1]


def _is_sysctl_conf(ctx: FactContext, path: str) -> bool:
    """Debian's /etc/sysctl.d/99-sysctl.conf is a link to ../sysctl.conf, which is applied
    last anyway: reading it twice would list every setting as overriding itself."""
    try:
        target = ctx.source.read_link(path)
    except SourceError:
        return False
    return posixpath.normpath(posixpath.join(posixpath.dirname(path), target)) == SYSCTL_CONF


@fact("sysctl")
def sysctl(ctx: FactContext) -> Sysctls:
    source = ctx.source
    problems: list[str] = []
    listings: dict[str, Optional[list[str]]] = {}
    for directory in SYSCTL_DIRS:
        try:
            listings[directory] = source.list_dir(directory)
        except NotFound:
            listings[directory] = None
        except SourceError as exc:
            listings[directory] = None
            problems.append(f"{directory}: {exc.reason}")
    files = [f for f in config_files(listings) if not _is_sysctl_conf(ctx, f)] + [SYSCTL_CONF]
    settings: list[Setting] = []
    read = []
    for path in files:
        try:
            text = source.read_file(path).decode("utf-8", "replace")
        except NotFound:
            continue
        except SourceError as exc:
            problems.append(f"{path}: {exc.reason}")
            continue
        read.append(path)
        settings.extend(parse_sysctl_conf(text, path))
    values = {}
    for name in SYSCTLS:
        runtime: Optional[str] = None
        error: Optional[str] = None
        try:
            # A small read: /proc/sys answers a large one (the 8 MiB default) with ENOMEM.
            runtime = source.read_file(proc_path(name), max_bytes=4096).decode().strip()
        except NotFound:
            error = "absent: the kernel (or a module not loaded) does not provide it"
        except SourceError as exc:
            error = exc.reason
        winner, earlier = resolve_persisted(settings, name)
        values[name] = SysctlValue(
            name=name,
            runtime=runtime,
            runtime_error=error,
            persisted=winner.value if winner else None,
            persisted_in=winner.where if winner else None,
            overridden=tuple(f"{s.where} = {s.value}" for s in earlier),
        )
    if all(v.runtime is None for v in values.values()) and not read:
        reasons = "; ".join(sorted({v.runtime_error or "" for v in values.values()}))
        raise FactUnavailable(f"no sysctl could be read ({reasons}) and no configuration file")
    return Sysctls(values, tuple(read), tuple(problems))


# --- firewall rules -----------------------------------------------------------------------


@record
class Match:
    """One condition of a rule. field: iif, oif, saddr, daddr, proto or other."""

    field: str
    value: str
    negated: bool = False


@record
class Rule:
    chain: str
    text: str  # iptables-save's line, or the nft rule rendered as text
    matches: tuple[Match, ...] = ()
    target: Optional[str] = None  # ACCEPT, DROP, REJECT, RETURN, MASQUERADE, SNAT, a chain, ...
    goto: bool = False  # -g / goto: no return to the calling chain

    def as_dict(self) -> dict[str, Any]:
        return {"chain": self.chain, "rule": self.text}


@record
class Chain:
    table: str
    name: str
    family: str  # ip, ip6, inet, bridge, arp
    hook: Optional[str] = None  # forward, postrouting, ... (base chains)
    policy: Optional[str] = None  # ACCEPT / DROP (base chains)
    priority: Optional[int] = None
    type: Optional[str] = None  # filter, nat, route (nft)
    rules: tuple[Rule, ...] = ()


VERDICTS = {"ACCEPT": "accept", "DROP": "drop", "REJECT": "drop"}
NAT_TARGETS = ("MASQUERADE", "SNAT")
_BUILTIN_HOOKS = {
    "PREROUTING": "prerouting",
    "INPUT": "input",
    "FORWARD": "forward",
    "OUTPUT": "output",
    "POSTROUTING": "postrouting",
}


@record
class Verdict:
    """What a hook does with a traffic class, as far as the rules tell."""

    verdict: str  # accept or drop
    by: str  # the rule or policy that decided
    chain: str  # family/table/chain of the base chain
    path: tuple[str, ...] = ()  # chains entered on the way
    conditional: tuple[str, ...] = ()  # rules that accept or drop only some of it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@record
class NatRule:
    """A MASQUERADE/SNAT rule reachable from a postrouting hook."""

    rule: Rule
    table: str
    family: str
    source: Optional[str]  # the -s / ip saddr it requires (None: any source)
    source_negated: bool = False
    path: tuple[str, ...] = ()

    def covers(self, subnet: str) -> bool:
        if self.source is None:
            return True
        if self.source_negated:
            return False
        try:
            net = ipaddress.ip_network(subnet, strict=False)
            rule_net = ipaddress.ip_network(self.source, strict=False)
        except ValueError:
            return False
        return net.version == rule_net.version and net.subnet_of(rule_net)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "table": self.table,
            "chain": self.rule.chain,
            "rule": self.rule.text,
            "source": self.source,
            "reached_through": list(self.path),
        }


def _addr_matches(value: str, addr: str) -> Optional[bool]:
    """Whether `addr` lies in the rule's address or prefix; None when the rule's value is
    not one (a set, a range, a name)."""
    try:
        net = ipaddress.ip_network(value, strict=False)
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    return ip.version == net.version and ip in net


def _iface_matches(pattern: str, name: str) -> bool:
    """iptables ends a wildcard with "+", nft with "*"."""
    if pattern.endswith(("+", "*")):
        return name.startswith(pattern[:-1])
    return pattern == name


@record
class Ruleset:
    tool: str  # "nft", "iptables-save", "ip6tables-save", "iptables-legacy-save"
    chains: tuple[Chain, ...]
    backend: Optional[str] = None  # nf_tables, legacy; None when the tool does not say
    header: Optional[str] = None
    warnings: tuple[str, ...] = ()

    def chain(self, family: str, table: str, name: str) -> Optional[Chain]:
        for chain in self.chains:
            if chain.family == family and chain.table == table and chain.name == name:
                return chain
        return None

    def hooked(self, hook: str, families: Iterable[str]) -> list[Chain]:
        wanted = set(families)
        found = [c for c in self.chains if c.hook == hook and c.family in wanted]
        return sorted(found, key=lambda c: c.priority or 0)

    def verdict(
        self,
        hook: str,
        families: Iterable[str],
        iif: str,
        oif: str,
        *,
        saddr: Optional[str] = None,
        daddr: Optional[str] = None,
    ) -> Optional[Verdict]:
        """Follow traffic from `iif` to `oif` through every base chain on `hook`. A rule whose
        other conditions (addresses, state, marks) cannot be decided for the whole class is
        noted as conditional and passed over; given the traffic's source and destination
        addresses (`saddr`, `daddr`), conditions on them are decided too. Every base chain
        must accept; the first that drops decides. None when no chain is on the hook."""
        chains = self.hooked(hook, families)
        if not chains:
            return None
        accepted: list[Verdict] = []
        addrs = {"saddr": saddr, "daddr": daddr}
        for base in chains:
            label = f"{base.family}/{base.table}/{base.name}"
            conditional: list[str] = []
            outcome = self._walk(base, iif, oif, [label], conditional, set(), addrs)
            if outcome is None:
                policy = (base.policy or "ACCEPT").upper()
                result = Verdict(
                    VERDICTS.get(policy, "accept"),
                    f"policy {policy} of {label}",
                    label,
                    (label,),
                    tuple(conditional),
                )
            else:
                verdict, by, path = outcome
                result = Verdict(verdict, by, label, tuple(path), tuple(conditional))
            if result.verdict == "drop":
                return result
            accepted.append(result)
        # All accept: name a rule that accepted it, if one did, rather than a bare policy.
        by_rule = [v for v in accepted if not v.by.startswith("policy ")]
        return (by_rule or accepted)[-1]

    def _walk(
        self,
        chain: Chain,
        iif: str,
        oif: str,
        path: list[str],
        conditional: list[str],
        seen: set[str],
        addrs: Optional[Mapping[str, Optional[str]]] = None,
    ) -> Optional[tuple[str, str, list[str]]]:
        """(verdict, deciding rule, path) or None when the chain falls through (or returns)."""
        key = f"{chain.family}/{chain.table}/{chain.name}"
        if key in seen:
            return None
        seen = seen | {key}
        for rule in chain.rules:
            decided = True
            possible = True
            for cond in rule.matches:
                if cond.field in ("iif", "oif"):
                    hit = _iface_matches(cond.value, iif if cond.field == "iif" else oif)
                    if hit == cond.negated:
                        possible = False
                        break
                elif cond.field in ("saddr", "daddr") and addrs and addrs.get(cond.field):
                    found = _addr_matches(cond.value, str(addrs[cond.field]))
                    if found is None:
                        decided = False
                    elif found == cond.negated:
                        possible = False
                        break
                else:
                    decided = False
            if not possible:
                continue
            target = (rule.target or "").upper()
            if target == "RETURN":
                if decided:
                    return None
                conditional.append(f"{chain.name}: {rule.text} (returns for some)")
                continue
            if target in VERDICTS:
                if decided:
                    return VERDICTS[target], f"{chain.name}: {rule.text}", path
                conditional.append(f"{chain.name}: {rule.text}")
                continue
            sub = self.chain(chain.family, chain.table, rule.target or "")
            if sub is None:
                continue  # LOG, MARK, counters, targets that do not decide
            outcome = self._walk(sub, iif, oif, path + [sub.name], conditional, seen, addrs)
            if outcome is not None:
                verdict, by, sub_path = outcome
                if decided:
                    return verdict, by, sub_path
                conditional.append(f"{chain.name}: {rule.text} -> {by}")
                continue
            if rule.goto and decided:
                return None
        return None

    def nat_rules(self, families: Iterable[str]) -> list[NatRule]:
        """MASQUERADE and SNAT rules in chains reachable from a postrouting hook."""
        found: list[NatRule] = []
        for base in self.hooked("postrouting", families):
            stack: list[tuple[Chain, tuple[str, ...]]] = [(base, (base.name,))]
            seen: set[str] = set()
            while stack:
                chain, path = stack.pop()
                if chain.name in seen:
                    continue
                seen.add(chain.name)
                for rule in chain.rules:
                    target = (rule.target or "").upper()
                    if target in NAT_TARGETS:
                        src = next((m for m in rule.matches if m.field == "saddr"), None)
                        found.append(
                            NatRule(
                                rule,
                                chain.table,
                                chain.family,
                                src.value if src else None,
                                src.negated if src else False,
                                path,
                            )
                        )
                        continue
                    sub = self.chain(chain.family, chain.table, rule.target or "")
                    if sub is not None:
                        stack.append((sub, path + (sub.name,)))
        return found

    def as_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "backend": self.backend,
            "header": self.header,
            "warnings": list(self.warnings),
            "chains": [
                {
                    "family": c.family,
                    "table": c.table,
                    "name": c.name,
                    "hook": c.hook,
                    "policy": c.policy,
                    "rules": len(c.rules),
                }
                for c in self.chains
                if c.hook is not None
            ],
        }


# --- iptables-save ------------------------------------------------------------------------

_IPT_FIELDS = {
    "-i": "iif",
    "--in-interface": "iif",
    "-o": "oif",
    "--out-interface": "oif",
    "-s": "saddr",
    "--source": "saddr",
    "--src": "saddr",
    "-d": "daddr",
    "--destination": "daddr",
    "--dst": "daddr",
    "-p": "proto",
    "--protocol": "proto",
}


def parse_iptables_rule(chain: str, words: list[str], text: str) -> Rule:
    """The words of one `-A CHAIN ...` line after the chain name."""
    matches: list[Match] = []
    target = None
    goto = False
    negate = False
    module: Optional[str] = None
    i = 0
    while i < len(words):
        word = words[i]
        if word == "!":
            negate = True
            i += 1
            continue
        if word in ("-j", "--jump", "-g", "--goto"):
            target = words[i + 1] if i + 1 < len(words) else None
            goto = word in ("-g", "--goto")
            break  # what follows are the target's own options
        if word in _IPT_FIELDS and i + 1 < len(words):
            matches.append(Match(_IPT_FIELDS[word], words[i + 1], negate))
            negate = False
            i += 2
            continue
        if word in ("-m", "--match") and i + 1 < len(words):
            module = words[i + 1]
            i += 2
            continue
        if word.startswith("-"):
            values = []
            j = i + 1
            while j < len(words) and not words[j].startswith("-") and words[j] != "!":
                values.append(words[j])
                j += 1
            if module != "comment":
                opt = f"{'! ' if negate else ''}{word} {' '.join(values)}".strip()
                matches.append(Match("other", f"-m {module} {opt}" if module else opt, negate))
            negate = False
            i = j
            continue
        i += 1
    return Rule(chain, text, tuple(matches), target, goto)


def parse_iptables_save(text: str, tool: str = "iptables-save") -> Ruleset:
    """iptables-save / ip6tables-save output: `*table`, `:CHAIN POLICY [p:b]`, `-A CHAIN ...`,
    `COMMIT`. Built-in chains carry their hook and policy."""
    family = "ip6" if tool.startswith("ip6") else "ip"
    header = None
    backend = "legacy" if "legacy" in tool else None  # its header does not say
    warnings: list[str] = []
    table: Optional[str] = None
    order: list[tuple[str, str]] = []
    policies: dict[tuple[str, str], Optional[str]] = {}
    rules: dict[tuple[str, str], list[Rule]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if line.startswith("# Generated by") and header is None:
                header = line[2:]
                if "(nf_tables)" in line:
                    backend = "nf_tables"
                elif "(legacy)" in line:  # iptables-legacy-save of 1.8.x prints nothing
                    backend = "legacy"
            elif line.startswith("# Warning"):
                warnings.append(line[2:])
            continue
        if line.startswith("*"):
            table = line[1:].strip()
            continue
        if line == "COMMIT" or table is None:
            continue
        if line.startswith(":"):
            parts = line[1:].split()
            key = (table, parts[0])
            if key not in policies:
                order.append(key)
            policies[key] = parts[1] if len(parts) > 1 and parts[1] != "-" else None
            continue
        if line.startswith("-A ") or line.startswith("--append "):
            try:
                words = shlex.split(line)
            except ValueError:
                words = line.split()
            chain = words[1]
            key = (table, chain)
            if key not in policies:
                order.append(key)
                policies[key] = None
            rules.setdefault(key, []).append(parse_iptables_rule(chain, words[2:], line))
    chains = tuple(
        Chain(
            table=tbl,
            name=name,
            family=family,
            hook=_BUILTIN_HOOKS.get(name) if policies.get((tbl, name)) else None,
            policy=policies.get((tbl, name)),
            priority=_TABLE_PRIORITY.get(tbl, 0),
            type="nat" if tbl == "nat" else "filter",
            rules=tuple(rules.get((tbl, name), ())),
        )
        for tbl, name in order
    )
    return Ruleset(tool, chains, backend, header, tuple(warnings))


# Priorities of the iptables tables on each hook (include/uapi/linux/netfilter_ipv4.h).
_TABLE_PRIORITY = {"raw": -300, "mangle": -150, "nat": -100, "filter": 0, "security": 50}


# --- nft -j -------------------------------------------------------------------------------

_NFT_PRIORITIES = {
    "raw": -300,
    "mangle": -150,
    "dstnat": -100,
    "filter": 0,
    "security": 50,
    "srcnat": 100,
}


def _nft_value(value: Any) -> str:
    if isinstance(value, Mapping):
        if "prefix" in value:
            prefix = value["prefix"]
            return f"{prefix.get('addr')}/{prefix.get('len')}"
        if "set" in value:
            return "{ " + ", ".join(_nft_value(v) for v in value["set"]) + " }"
        if "range" in value:
            low, high = value["range"]
            return f"{_nft_value(low)}-{_nft_value(high)}"
        return json.dumps(value, sort_keys=True)
    if isinstance(value, list):
        return "{ " + ", ".join(_nft_value(v) for v in value) + " }"
    return str(value)


def _nft_left(left: Any) -> tuple[Optional[str], str]:
    """(field, text) of a match's left side."""
    if isinstance(left, Mapping):
        if "meta" in left:
            key = left["meta"].get("key")
            field_name = {"iifname": "iif", "oifname": "oif", "l4proto": "proto"}.get(key)
            return field_name, f"meta {key}" if key not in ("iifname", "oifname") else key
        if "payload" in left:
            payload = left["payload"]
            proto, fname = payload.get("protocol"), payload.get("field")
            if proto in ("ip", "ip6") and fname in ("saddr", "daddr"):
                return fname, f"{proto} {fname}"
            return None, f"{proto} {fname}"
        if "ct" in left:
            return None, f"ct {left['ct'].get('key')}"
        key = next(iter(left), "?")
        return None, str(key)
    return None, str(left)


_NFT_TARGETS = {
    "accept": "ACCEPT",
    "drop": "DROP",
    "reject": "REJECT",
    "return": "RETURN",
    "masquerade": "MASQUERADE",
    "snat": "SNAT",
}
_NFT_IGNORED = {"counter", "log", "comment", "limit", "notrack", "mangle", "quota"}


def parse_nft_rule(chain: str, exprs: list[Any]) -> Rule:
    matches: list[Match] = []
    words: list[str] = []
    target: Optional[str] = None
    goto = False
    for expr in exprs:
        if not isinstance(expr, Mapping) or not expr:
            continue
        name, body = next(iter(expr.items()))
        if name == "match" and isinstance(body, Mapping):
            field_name, left = _nft_left(body.get("left"))
            op = body.get("op", "==")
            right = _nft_value(body.get("right"))
            negated = op == "!="
            if field_name is not None and op in ("==", "!=") and "{" not in right:
                matches.append(Match(field_name, right.strip('"'), negated))
            else:
                matches.append(Match("other", f"{left} {op} {right}", negated))
            shown = f'"{right}"' if field_name in ("iif", "oif") else right
            words.append(f"{left} {'!= ' if negated else ''}{shown}")
        elif name in _NFT_TARGETS:
            target = _NFT_TARGETS[name]
            words.append(name)
        elif name in ("jump", "goto") and isinstance(body, Mapping):
            target = str(body.get("target"))
            goto = name == "goto"
            words.append(f"{name} {target}")
        elif name == "xt" and isinstance(body, Mapping):
            # iptables-nft rules nft cannot express natively: {"type": "match" or "target",
            # "name": "conntrack" or "MASQUERADE"}.
            xt_name = str(body.get("name", "?"))
            if body.get("type") == "target":
                target = xt_name.upper()
            else:
                matches.append(Match("other", f"xt match {xt_name}"))
            words.append(f"xt {body.get('type')} {xt_name}")
        elif name in _NFT_IGNORED:
            words.append(name)
        else:
            matches.append(Match("other", name))
            words.append(name)
    return Rule(chain, " ".join(words), tuple(matches), target, goto)


def parse_nft_json(text: str) -> Ruleset:
    """`nft -j list ruleset`: {"nftables": [{"metainfo"}, {"table"}, {"chain"}, {"rule"}]}."""
    data = json.loads(text)
    items = data.get("nftables", []) if isinstance(data, Mapping) else []
    header = None
    chains: dict[tuple[str, str, str], dict[str, Any]] = {}
    order: list[tuple[str, str, str]] = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        if "metainfo" in item:
            meta = item["metainfo"]
            version, schema = meta.get("version", "?"), meta.get("json_schema_version", "?")
            header = f"nftables {version} (json_schema_version {schema})"
        elif "chain" in item:
            c = item["chain"]
            key = (c.get("family", ""), c.get("table", ""), c.get("name", ""))
            prio = c.get("prio")
            chains[key] = {
                "hook": c.get("hook"),
                "policy": str(c["policy"]).upper() if c.get("policy") else None,
                "priority": _NFT_PRIORITIES.get(prio, 0) if isinstance(prio, str) else prio,
                "type": c.get("type"),
                "rules": [],
            }
            order.append(key)
        elif "rule" in item:
            r = item["rule"]
            key = (r.get("family", ""), r.get("table", ""), r.get("chain", ""))
            if key not in chains:
                chains[key] = {
                    "hook": None,
                    "policy": None,
                    "priority": None,
                    "type": None,
                    "rules": [],
                }
                order.append(key)
            chains[key]["rules"].append(parse_nft_rule(key[2], r.get("expr", [])))
    built = []
    for key in order:
        c = chains[key]
        policy = c["policy"] or ("ACCEPT" if c["hook"] else None)
        built.append(
            Chain(
                table=key[1],
                name=key[2],
                family=key[0],
                hook=c["hook"],
                policy=policy,
                priority=c["priority"],
                type=c["type"],
                rules=tuple(c["rules"]),
            )
        )
    return Ruleset("nft", tuple(built), "nf_tables", header)


@record
class Firewall:
    views: tuple[Ruleset, ...]
    errors: dict[str, str] = field(default_factory=dict)  # tool -> why it gave no view

    def view(self, tool: str) -> Optional[Ruleset]:
        return next((v for v in self.views if v.tool == tool), None)

    def as_dict(self) -> dict[str, Any]:
        return {"views": [v.as_dict() for v in self.views], "errors": dict(self.errors)}


FIREWALL_COMMANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("nft", ("nft", "-j", "list", "ruleset")),
    ("iptables-save", ("iptables-save",)),
    ("ip6tables-save", ("ip6tables-save",)),
)


def _run_view(
    ctx: FactContext, tool: str, argv: tuple[str, ...]
) -> tuple[Optional[Ruleset], Optional[str]]:
    try:
        done = ctx.source.run(argv)
    except SourceError as exc:
        return None, exc.reason
    if done.returncode != 0:
        return None, f"exit {done.returncode}: {done.stderr.strip()[:300]}"
    try:
        if tool == "nft":
            return parse_nft_json(done.stdout or '{"nftables": []}'), None
        # iptables-nft warns on stderr when legacy tables exist beside its own.
        warnings = [w for w in done.stderr.splitlines() if w.startswith("# Warning")]
        return parse_iptables_save("\n".join([done.stdout, *warnings]), tool), None
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return None, f"unparsable output: {exc}"


@fact("firewall", commands=[argv for _, argv in FIREWALL_COMMANDS])
def firewall(ctx: FactContext) -> Firewall:
    views: list[Ruleset] = []
    errors: dict[str, str] = {}
    for tool, argv in FIREWALL_COMMANDS:
        view, error = _run_view(ctx, tool, argv)
        if view is not None:
            views.append(view)
        if error is not None:
            errors[tool] = error
    ipt = next((v for v in views if v.tool == "iptables-save"), None)
    if ipt is not None and any("iptables-legacy" in w for w in ipt.warnings):
        view, error = _run_view(ctx, "iptables-legacy-save", ("iptables-legacy-save",))
        if view is not None:
            views.append(view)
        if error is not None:
            errors["iptables-legacy-save"] = error
    if not views:
        raise FactUnavailable(
            "no firewall view: " + "; ".join(f"{t}: {e}" for t, e in errors.items())
        )
    return Firewall(tuple(views), errors)
