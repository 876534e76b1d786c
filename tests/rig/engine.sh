#!/usr/bin/env bash
# A Docker engine for `make run` and the test rig: the one that answers, else one started here.
# As root on Debian, docker.io is installed if it is missing and its engine started (by systemd
# where systemd runs and knows docker.service, else dockerd in the background, its log in
# var/dockerd.log). Anywhere else it stops, naming the command that brings an engine up.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log_tag=engine
# shellcheck source=tests/rig/lib.sh
. "$here/lib.sh"

answer="$(docker info --format '{{.ServerVersion}}' 2>&1)" && exit 0
where="${DOCKER_HOST:-unix:///var/run/docker.sock}"
stop() { log "no Docker engine answers at $where ($(printf '%s' "$answer" | tail -1)): $*"; exit 1; }

if [ "$where" != unix:///var/run/docker.sock ]; then
  stop "start the engine DOCKER_HOST names, or unset DOCKER_HOST to use this machine's own"
fi
if printf '%s' "$answer" | grep -qi 'permission denied'; then
  stop "let this user use it: sudo usermod -aG docker $(id -un), then log in again"
fi
systemd=false
if [ -d /run/systemd/system ] && systemctl cat docker.service >/dev/null 2>&1; then systemd=true; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  if "$systemd"; then stop "start it with: sudo systemctl start docker"; fi
  if command -v dockerd >/dev/null; then stop "start it with: sudo dockerd"; fi
  stop "install Docker Engine (Debian: sudo apt-get install docker.io; elsewhere" \
    "https://docs.docker.com/engine/install/), then run this again"
fi

command -v dockerd >/dev/null && command -v docker >/dev/null || { log "installing docker.io"; apt_install docker.io; }
if "$systemd"; then
  log "starting docker.service"
  systemctl start docker
else
  mkdir -p "$top/var"
  log "starting dockerd (its log: $top/var/dockerd.log)"
  setsid dockerd >>"$top/var/dockerd.log" 2>&1 </dev/null &
fi
wait_for 60 docker info || { tail -20 "$top/var/dockerd.log" 2>/dev/null; log "the engine did not start"; exit 1; }
log "engine $(docker version --format '{{.Server.Version}}') answers"
