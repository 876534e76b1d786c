#!/usr/bin/env bash
# Builds the example's image, homeserver/hello-world:latest, from a static busybox, unless it
# is there already. Needs a Docker engine; installs busybox-static as root on Debian.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
image=homeserver/hello-world:latest

if ! docker info >/dev/null 2>&1; then
  echo "example: no Docker engine reachable; start one, then run: $0" >&2
  exit 0
fi
if docker image inspect "$image" >/dev/null 2>&1; then exit 0; fi
if ! { ldd /bin/busybox 2>&1 || true; } | grep -q "not a dynamic"; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
  else
    echo "example: needs a static busybox at /bin/busybox (Debian: apt-get install busybox-static)" >&2
    exit 0
  fi
fi
cp /bin/busybox "$here/hello-world/busybox"
DOCKER_BUILDKIT=0 docker build -q -t "$image" "$here/hello-world" >/dev/null 2>&1
rm -f "$here/hello-world/busybox"
echo "example: built $image"
