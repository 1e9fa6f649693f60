#!/usr/bin/env bash
# Set up kvmdoctor on this machine: system packages, .venv, the project itself.
#   scripts/setup.sh          packages needed to build and run kvmdoctor
#   scripts/setup.sh --lab    also the test lab (libvirtd, QEMU, OVMF, nftables, ...) and its daemons
# Idempotent. As a non-root user it installs nothing system-wide and says what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

LAB=0
[ "${1:-}" = "--lab" ] && LAB=1
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

say() { printf 'setup: %s\n' "$*" >&2; }

base_pkgs="python3-venv python3-dev gcc pkg-config libvirt-dev acl iproute2 kmod"
lab_pkgs="libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils ovmf dnsmasq-base
          nftables iptables ebtables tcpdump libpcap0.8 faketime"
pkgs=$base_pkgs
[ "$LAB" = 1 ] && pkgs="$pkgs $lab_pkgs"
# Headless Chromium opens the HTML report in tests/render/test_formats.py: Debian's package
# (Ubuntu's chromium is a snap, which containers do not run).
[ "$LAB" = 1 ] && grep -qx 'ID=debian' /etc/os-release 2>/dev/null && pkgs="$pkgs chromium"

missing=""
if command -v dpkg-query >/dev/null 2>&1; then
  for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
  done
fi

if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # --force-confnew: an existing /etc/libvirt/qemu.conf would otherwise stop dpkg at a prompt.
    # shellcheck disable=SC2086
    apt-get install -y -qq -o Dpkg::Options::=--force-confnew $missing >/dev/null
  else
    say "not root (or no apt-get): not installing system packages; missing:$missing"
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.kvmdoctor-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing kvmdoctor and its test dependencies into $VENV"
  log="$VENV/pip-install.log"
  if ! { "$VENV/bin/python" -m pip install -q --upgrade pip &&
         "$VENV/bin/python" -m pip install -q -e '.[test]'; } >"$log" 2>&1; then
    cat "$log" >&2
    say "pip install failed (log above, kept in $log)"
    exit 1
  fi
  touch "$stamp"
fi

[ "$LAB" = 1 ] || exit 0

# Microsoft's SARIF Multitool, which tests/render/test_formats.py runs on kvmdoctor's SARIF: an
# npm package (its Linux binary comes inside @microsoft/sarif-multitool-linux, from the registry).
sarif_tool=.sarif-tools/node_modules/.bin/sarif-multitool
if [ ! -x "$sarif_tool" ]; then
  # Debian's npm only where no npm is on the PATH (NodeSource's nodejs brings its own and
  # conflicts with Debian's).
  if ! command -v npm >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing npm"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
  fi
  if command -v npm >/dev/null 2>&1; then
    say "installing @microsoft/sarif-multitool into .sarif-tools"
    npm install --prefix .sarif-tools --no-audit --no-fund --silent @microsoft/sarif-multitool@5.7.0 >&2
  else
    say "npm is missing: not installing the SARIF Multitool; the SARIF validation test will say so"
  fi
fi

# The lab daemons. Machines without systemd (containers, this CI) start them by hand.
if [ "$(id -u)" != 0 ]; then
  say "not root: not starting libvirtd/virtlogd; integration tests that need them will say so"
  exit 0
fi
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl start virtlogd.socket libvirtd.socket libvirtd.service >/dev/null 2>&1 || true
fi
mkdir -p /var/log/libvirt /run/libvirt

# A socket file proves nothing: /run outlives the daemons on machines like this one. The state
# of a daemon's socket: up (it accepts), refused (a file nobody listens on: left over from a
# daemon that is gone), missing, or something else (a busy daemon, say), which is left alone.
socket_state() {
  "$VENV/bin/python" - "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except ConnectionRefusedError:
    print("refused")
except FileNotFoundError:
    print("missing")
except OSError as exc:
    print(f"unknown ({exc})")
else:
    print("up")
PY
}

# start NAME SOCKET: start the daemon unless something answers on its socket.
start() {
  local name=$1 sock=$2 state
  state=$(socket_state "$sock")
  case $state in
    up) return 0 ;;
    refused)
      say "removing $sock: nothing listens on it (left over from a $name that is gone)"
      rm -f "$sock" "${sock%-sock}-sock-ro" "${sock%-sock}-admin-sock" ;;
    missing) ;;
    *) say "$sock: $state; not starting another $name"; return 0 ;;
  esac
  if ! command -v "$name" >/dev/null 2>&1; then
    say "$name is not installed: integration tests that need it will say so"
    return 0
  fi
  say "starting $name"
  "$name" -d
  for _ in $(seq 1 60); do
    [ "$(socket_state "$sock")" = up ] && return 0
    sleep 0.5
  done
  say "$name did not answer on $sock within 30 s"
  return 1
}

start virtlogd /run/libvirt/virtlogd-sock
start libvirtd /run/libvirt/libvirt-sock
exit 0
