"""libvirt configuration files for LIB008's tests: ones libvirt parses, and ones the lab's
real libvirtd 9.0 refuses, with where its parser stops."""

from __future__ import annotations

# From Debian's libvirtd.conf and qemu.conf, uncommented as an operator would.
GOOD = {
    "/etc/libvirt/libvirtd.conf": 'unix_sock_group = "libvirt"\nunix_sock_rw_perms = "0770"\n'
    'listen_tls = 0\nauth_unix_rw = "none"\n',
    "/etc/libvirt/qemu.conf": 'user = "libvirt-qemu"\ngroup = "kvm"\ncgroup_device_acl = [\n'
    '    "/dev/null", "/dev/full", "/dev/zero",\n    "/dev/kvm"\n]\n',
}
# What the lab's libvirtd refuses, and where its parser stops.
BAD = {
    "unquoted string": ("listen_tls = 0\nunix_sock_group = libvirt\n", "line 2: expecting a value"),
    "unterminated quote": ('user = "libvirt-qemu\n', "line 1: unterminated string"),
    "unclosed list": ('cgroup_device_acl = [ "/dev/null",\n', "line 2: expecting a value"),
}
