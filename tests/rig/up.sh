#!/usr/bin/env bash
# Brings up the test rig: a Docker engine, compose v2, a registry on loopback and the test
# images pushed into it. Uses what already runs; installs what is missing when run as root
# on Debian. Idempotent: a second call only checks.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/rig/lib.sh
. "$here/lib.sh"

ensure_compose() { # installed as `make run` installs it: the Makefile's compose-plugin target
  if docker compose version >/dev/null 2>&1; then return; fi
  log "installing the compose plugin (make compose-plugin)"
  make -C "$top" --no-print-directory VENV="$venv" compose-plugin
  docker compose version >/dev/null
}

ensure_registry() {
  if curl -fsS "http://$registry/v2/" >/dev/null 2>&1; then return; fi
  command -v docker-registry >/dev/null || { log "installing docker-registry"; apt_install docker-registry; }
  mkdir -p "$state/registry"
  cat >"$state/registry.yml" <<YAML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $state/registry}
  delete: {enabled: true}
http:
  addr: $registry
YAML
  log "starting registry on $registry"
  setsid docker-registry serve "$state/registry.yml" >"$state/registry.log" 2>&1 < /dev/null &
  wait_for 30 curl -fsS "http://$registry/v2/" || { tail -20 "$state/registry.log"; exit 1; }
}

build_images() {
  # The test images need a static busybox; Debian's plain busybox package is dynamic.
  if [ ! -x /bin/busybox ] || ! { ldd /bin/busybox 2>&1 || true; } | grep -q "not a dynamic"; then
    log "installing busybox-static"; apt_install busybox-static
  fi
  local ctx="$state/build"
  rm -rf "$ctx" && mkdir -p "$ctx" && cp /bin/busybox "$ctx/busybox"
  cp "$here"/images/Dockerfile.* "$ctx/"
  export DOCKER_BUILDKIT=0
  docker build -q -t deploytest/base:1 -f "$ctx/Dockerfile.base" "$ctx" >/dev/null 2>>"$state/build.log"
  local kind version
  for kind in healthy crash unhealthy dies plain slow deaf; do
    for version in v1 v2 v3; do
      docker build -q --build-arg "VERSION=$kind-$version" -t "$registry/deploytest/$kind:$version" \
        -f "$ctx/Dockerfile.$kind" "$ctx" >/dev/null 2>>"$state/build.log"
      docker push -q "$registry/deploytest/$kind:$version" >/dev/null
    done
  done
}

"$here/engine.sh" # as `make run` brings it up
ensure_compose
ensure_registry
# deployctl's --json is read with jq in its help, and so in the integration tests.
command -v jq >/dev/null || { log "installing jq"; apt_install jq; }
images_stamp="$state/images.sha"
images_sum="$(cat "$here"/images/Dockerfile.* | sha256sum | cut -c1-16)-$registry"
if [ "$(cat "$images_stamp" 2>/dev/null)" != "$images_sum" ] || \
   ! curl -fsS "http://$registry/v2/deploytest/healthy/tags/list" 2>/dev/null | grep -q v3; then
  log "building test images"
  build_images
  echo "$images_sum" >"$images_stamp"
fi
# The Caddy of examples/blue-green for the zero-downtime test and bench; nothing to do when it exists.
"$top/examples/blue-green/build-proxy.sh" deploytest/caddy:2.6
log "ready: engine $(docker version -f '{{.Server.Version}}'), compose $(docker compose version --short), registry $registry"
# Three more engines (h1..h3), an sshd on loopback and $state/hosts.json: tests/rig/hosts.sh.
"$here/hosts.sh"
