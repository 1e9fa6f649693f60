"""What a snapshot must never hold: secrets in configuration files and private key material.

The live answer a check gets is untouched; only what is written into a snapshot is scrubbed.
"""

from __future__ import annotations

import re
from typing import Optional

REDACTED = "<redacted by kvmdoctor>"

# Directories and names whose contents are never recorded: libvirt secrets and private keys.
_NEVER_DIRS = ("/etc/libvirt/secrets/", "/var/lib/libvirt/secrets/", "/run/libvirt/secrets/")
_NEVER_NAME = re.compile(r"(^|/)(private/|[^/]*key\.pem$|[^/]*\.key$)")

# libvirt's configuration syntax: `vnc_password = "secret"`, `spice_password = ...`, ...
_SECRET_SETTING = re.compile(
    r"""^(?P<lead>[ \t]*(?P<key>[A-Za-z0-9_]*(?:password|passwd|secret)[A-Za-z0-9_]*)[ \t]*=[ \t]*)
        (?P<value>"(?:[^"\\\n]|\\.)*"|'[^'\n]*'|[^\s#]+)""",
    re.IGNORECASE | re.MULTILINE | re.VERBOSE,
)


def never_recorded(path: str) -> Optional[str]:
    """Why the file's contents must not enter a snapshot, or None when they may."""
    if path.startswith(_NEVER_DIRS):
        return "libvirt secret values are never recorded"
    if _NEVER_NAME.search(path):
        return "private key material is never recorded"
    return None


# A PEM private key inside any other file (a certificate file that also holds its key): the
# block is replaced, up to its END line or, when it has none, to the end of the file.
_PEM_PRIVATE_KEY = re.compile(
    rb"-----BEGIN (?P<label>[A-Z0-9 ]*PRIVATE KEY)-----.*?(?:-----END (?P=label)-----|\Z)",
    re.DOTALL,
)

# Domain XML as libvirt stores it (/etc/libvirt/qemu/*.xml, status files under /run): graphics
# passwords are attributes.
_XML_PASSWD = re.compile(r"""\b(passwd|password)\s*=\s*(["'])(.*?)\2""")


def scrub(path: str, data: bytes) -> tuple[bytes, list[str]]:
    """The contents to record for `path`, and the names of the settings blanked out."""
    keys: list[str] = []

    def blank_key(match: re.Match[bytes]) -> bytes:
        keys.append("private key")
        return REDACTED.encode()

    data = _PEM_PRIVATE_KEY.sub(blank_key, data)
    data, settings = _scrub_settings(path, data)
    return data, keys + settings


# QEMU's command line as libvirt logs it (/var/log/libvirt/qemu/NAME.log): `password=...` in
# -vnc/-spice options and inline secret objects ("data":"..." or data=...).
_LOG_SECRET = re.compile(
    r"""(?P<key>\b(?:password|passwd|secret|data)\b)(?P<sep>=|"\s*:\s*")(?P<value>[^,\s"']+)""",
    re.IGNORECASE,
)


def scrub_log_line(line: str) -> str:
    """A log line as it may appear in a finding: QEMU command-line secrets blanked."""
    data, _ = _scrub_log(line.encode("utf-8", "surrogateescape"))
    return data.decode("utf-8", "surrogateescape")


def _scrub_log(data: bytes) -> tuple[bytes, list[str]]:
    text = data.decode("utf-8", "surrogateescape")
    found: list[str] = []

    def blank(match: re.Match[str]) -> str:
        key = match.group("key")
        if (
            key.lower() == "data"
            and '"' not in match.group("sep")
            and "secret" not in text[max(0, match.start() - 80) : match.start()]
        ):
            return match.group(0)  # data=... outside a secret object is not a secret
        found.append(key)
        return f"{key}{match.group('sep')}{REDACTED}"

    text = _LOG_SECRET.sub(blank, text)
    return text.encode("utf-8", "surrogateescape"), sorted(set(found))


def _scrub_settings(path: str, data: bytes) -> tuple[bytes, list[str]]:
    if path.startswith("/var/log/libvirt/"):
        return _scrub_log(data)
    if path.startswith(("/etc/libvirt/", "/run/libvirt/", "/var/run/libvirt/")) and path.endswith(
        ".xml"
    ):
        text = data.decode("utf-8", "surrogateescape")
        found: list[str] = []

        def blank_attr(match: re.Match[str]) -> str:
            found.append(match.group(1))
            quote = match.group(2)
            return f"{match.group(1)}={quote}{REDACTED}{quote}"

        text = _XML_PASSWD.sub(blank_attr, text)
        return text.encode("utf-8", "surrogateescape"), found
    if not (path.startswith("/etc/libvirt/") and path.endswith(".conf")):
        return data, []
    text = data.decode("utf-8", "surrogateescape")
    keys: list[str] = []

    def blank(match: re.Match[str]) -> str:
        keys.append(match.group("key"))
        return f'{match.group("lead")}"{REDACTED}"'

    scrubbed = _SECRET_SETTING.sub(blank, text)
    return scrubbed.encode("utf-8", "surrogateescape"), keys
