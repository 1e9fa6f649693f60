"""kvmdoctor.toml: gate settings and ignores, each ignore with the reason the report shows.

fail_on = "warn"                 # optional: info, warn or fail
select = ["KVM", "LIB001"]       # optional: codes, prefixes or names

[[ignore]]
check = "KVM008"                 # a code, a prefix or a name
subject = "device:/dev/vhost-net"  # optional: only this subject
reason = "CI runners use user-mode networking"
"""

from __future__ import annotations

import os
import sys
from dataclasses import field
from typing import Any, Optional

from doctor.engine import IgnoreRule
from doctor.record import record

CONFIG_NAME = "kvmdoctor.toml"
_KEYS = {"fail_on", "select", "ignore"}
_IGNORE_KEYS = {"check", "subject", "reason"}


class ConfigError(ValueError):
    pass


@record
class Config:
    path: Optional[str] = None
    fail_on: Optional[str] = None
    select: tuple[str, ...] = ()
    ignores: tuple[IgnoreRule, ...] = field(default_factory=tuple)


def find(explicit: Optional[str]) -> Optional[str]:
    """The file given with --config, else kvmdoctor.toml in the working directory, if any."""
    if explicit is not None:
        if not os.path.isfile(explicit):
            raise ConfigError(f"{explicit}: no such config file")
        return explicit
    return CONFIG_NAME if os.path.isfile(CONFIG_NAME) else None


def load(explicit: Optional[str] = None) -> Config:
    path = find(explicit)
    if path is None:
        return Config()
    # Imported only when there is a file to read: most runs have none.
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.9/3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    return parse(data, path)


def parse(data: dict[str, Any], path: str) -> Config:
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}"
        )
    fail_on = data.get("fail_on")
    if fail_on is not None and fail_on not in ("info", "warn", "fail"):
        raise ConfigError(f"{path}: fail_on must be info, warn or fail, not {fail_on!r}")
    select = data.get("select", [])
    if not isinstance(select, list) or not all(isinstance(s, str) for s in select):
        raise ConfigError(f"{path}: select must be a list of check codes, prefixes or names")
    raw = data.get("ignore", [])
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: ignore must be an array of tables ([[ignore]])")
    ignores = []
    for number, entry in enumerate(raw, 1):
        where = f"{path}: ignore #{number}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table with check and reason")
        extra = sorted(set(entry) - _IGNORE_KEYS)
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)}")
        token = entry.get("check")
        if not isinstance(token, str) or not token.strip():
            raise ConfigError(f'{where} names no check (check = "KVM008")')
        reason = entry.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise ConfigError(f"{where} ({token}) has no reason; every ignore needs one")
        subject = entry.get("subject")
        if subject is not None and not isinstance(subject, str):
            raise ConfigError(f"{where} ({token}): subject must be a string")
        ignores.append(IgnoreRule(token.strip(), reason.strip(), f"config {path}", subject))
    return Config(path, fail_on, tuple(select), tuple(ignores))
