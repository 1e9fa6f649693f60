"""Secrets never reach a snapshot: configuration passwords are blanked, keys not recorded."""

from __future__ import annotations

import json
from pathlib import Path

from doctor.sources.base import Unavailable
from doctor.sources.live import LiveSource
from doctor.sources.redact import REDACTED, never_recorded, scrub
from doctor.sources.snapshot import RecordingSource, SnapshotSource

# From Debian's /etc/libvirt/qemu.conf (commented examples), uncommented as an operator would.
QEMU_CONF = b"""vnc_listen = "0.0.0.0"
vnc_password = "hunter22"
spice_password = 'spice-secret'
#vnc_password = "commented-out"
remote_display_port_min = 5900
"""


def test_config_passwords_are_blanked_and_named() -> None:
    data, keys = scrub("/etc/libvirt/qemu.conf", QEMU_CONF)
    text = data.decode()
    assert "hunter22" not in text and "spice-secret" not in text
    assert f'vnc_password = "{REDACTED}"' in text
    assert 'vnc_listen = "0.0.0.0"' in text and "remote_display_port_min = 5900" in text
    assert keys == ["spice_password", "vnc_password"]
    # A commented-out password is often the real one the operator disabled: blanked too.
    assert "commented-out" not in text and f'#vnc_password = "{REDACTED}"' in text


def test_other_files_are_recorded_as_they_are() -> None:
    assert scrub("/proc/cpuinfo", b"flags : vmx secret\n") == (b"flags : vmx secret\n", [])


def test_key_material_and_libvirt_secrets_are_never_recorded() -> None:
    assert never_recorded("/etc/pki/libvirt/private/serverkey.pem")
    assert never_recorded("/etc/pki/libvirt-vnc/server-key.pem")
    assert never_recorded("/etc/libvirt/secrets/0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f.base64")
    assert never_recorded("/etc/pki/libvirt/servercert.pem") is None


def test_a_collected_snapshot_holds_no_secret(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc/libvirt").mkdir(parents=True)
    (tree / "etc/libvirt/qemu.conf").write_bytes(QEMU_CONF)
    (tree / "etc/pki/libvirt/private").mkdir(parents=True)
    (tree / "etc/pki/libvirt/private/serverkey.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    recorder = RecordingSource(LiveSource(str(tree)))
    assert b"hunter22" in recorder.read_file("/etc/libvirt/qemu.conf")  # the check sees it
    recorder.read_file("/etc/pki/libvirt/private/serverkey.pem")
    snap = tmp_path / "snap"
    recorder.write(str(snap))
    everything = b"".join(p.read_bytes() for p in snap.rglob("*") if p.is_file())
    assert b"hunter22" not in everything and b"PRIVATE KEY" not in everything
    manifest = json.loads((snap / "manifest.json").read_text())
    conf = next(a for a in manifest["answers"] if a.get("path") == "/etc/libvirt/qemu.conf")
    assert conf["redacted"] == ["spice_password", "vnc_password"]
    replay = SnapshotSource(str(snap))
    try:
        replay.read_file("/etc/pki/libvirt/private/serverkey.pem")
    except Unavailable as exc:
        assert "never recorded" in exc.reason
    else:
        raise AssertionError("a private key was answered from a snapshot")


def test_qemu_log_command_lines_lose_their_passwords_and_secret_data() -> None:
    # The shape of a QEMU command line as libvirt logs it (spice with an inline password and a
    # secret object with inline data, as older libvirt wrote them).
    line = (
        b"2026-11-26 07:00:00.000+0000: starting up libvirt version: 9.0.0\n"
        b"/usr/bin/qemu-system-x86_64 -name guest=kd-x -spice port=5901,addr=127.0.0.1,"
        b"password=hunter22 -object secret,id=masterKey0,format=raw,data=c2VjcmV0 "
        b'-object {"qom-type":"secret","id":"sec0","data":"dG9wc2VjcmV0"} '
        b"-blockdev driver=file,filename=/var/lib/libvirt/images/data=1.qcow2\n"
    )
    data, keys = scrub("/var/log/libvirt/qemu/kd-x.log", line)
    assert b"hunter22" not in data and b"c2VjcmV0" not in data and b"dG9wc2VjcmV0" not in data
    assert b"port=5901" in data and b"filename=/var/lib/libvirt/images/data=1.qcow2" in data
    assert keys == ["data", "password"]


def test_xml_passwords_are_blanked_with_spaces_around_the_equals_sign() -> None:
    xml = (
        b"""<graphics type='vnc' passwd = "kdsecret1" port='5900'/><graphics passwd='kdsecret2'/>"""
    )
    data, keys = scrub("/etc/libvirt/qemu/web1.xml", xml)
    assert b"kdsecret1" not in data and b"kdsecret2" not in data
    assert keys == ["passwd"]
