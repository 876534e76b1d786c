# What the rig's scripts share, sourced by tests/rig/up.sh, tests/rig/hosts.sh and bench/tools.sh: where things
# are, logging, polling, installing Debian packages. Sets top (the repository), venv, state (absolute, created),
# registry_port and registry.
# shellcheck shell=bash

top="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$(realpath -m "${VENV:-$top/.venv}")"
state="${DEPLOY_TEST_STATE:-$top/var/test-rig}"
mkdir -p "$state"
state="$(cd "$state" && pwd)" # absolute: sshd and dockerd are given paths in it
registry_port="${DEPLOY_TEST_REGISTRY_PORT:-5099}"
registry="127.0.0.1:$registry_port"

log() { printf '%s: %s\n' "${log_tag:-rig}" "$*"; }

wait_for() { # wait_for SECONDS COMMAND...: polls until COMMAND succeeds; fails when SECONDS have passed
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then return 1; fi
    sleep 0.2
  done
}

apt_install() { # apt_install PACKAGE...: as root on Debian, else it fails (exit 1) saying what is missing
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    log "missing $*, and cannot install it here (needs root on Debian)"; exit 1
  fi
  if [ ! -f "$state/apt-updated" ]; then apt-get update -qq && touch "$state/apt-updated"; fi
  # A package's postinst must not start a system service (openssh-server would listen on :22,
  # docker-registry on :5000).
  local guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    guard=/usr/sbin/policy-rc.d; printf '#!/bin/sh\nexit 101\n' >"$guard"; chmod 0755 "$guard"
  fi
  DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -qq "$@" >/dev/null || { [ -z "$guard" ] || rm -f "$guard"; exit 1; }
  [ -z "$guard" ] || rm -f "$guard"
}
