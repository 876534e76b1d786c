#!/usr/bin/env bash
# The API's image, from the plain Dockerfile, on a machine that cannot pull from Docker Hub: the two
# images the Dockerfile starts from are made here and given to it as build arguments.
#   python      Debian bookworm (minbase, merged /usr) with python3 and its venv module, made by
#               mmdebstrap from Debian's packages and imported; it trusts the CAs the host trusts
#               (the host's bundle is copied in), so pip works behind a TLS-inspecting proxy too
#   docker-cli  the host's docker CLI and compose v2 plugin, where Docker's CLI image has them
# Usage: tests/rig/image.sh [TAG] (deploy-api:test). Each base is made once per engine: its tag is
# a digest of how it is made. Docker's layer cache keeps a rebuild to the layers that changed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log_tag=image
# shellcheck source=tests/rig/lib.sh
. "$here/lib.sh"

tag="${1:-deploy-api:test}"
export DOCKER_BUILDKIT=0 # the legacy builder: no buildx plugin here, and the Dockerfile needs none
started=$SECONDS
bundle=/etc/ssl/certs/ca-certificates.crt
sources=/etc/apt/sources.list.d/debian.sources
[ -f "$sources" ] || sources=http://deb.debian.org/debian
recipe=(
  --variant=minbase --include=python3,python3-venv,ca-certificates
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr # else usrmerge pulls in perl (50 MB)
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  # A mirror pinned to a snapshot serves Release files whose Valid-Until has passed.
  --aptopt='Acquire::Check-Valid-Until "false"'
  --customize-hook="upload $bundle $bundle"
)
digest() { sha256sum | cut -c1-12; }

python_base="deploy-api-base/python:bookworm-$({ printf '%s\n' "${recipe[@]}"; cat "$sources" "$bundle"; } | digest)"
if ! docker image inspect "$python_base" >/dev/null 2>&1; then
  command -v mmdebstrap >/dev/null || { log "installing mmdebstrap"; apt_install mmdebstrap; }
  command -v eatmydata >/dev/null || { log "installing eatmydata"; apt_install eatmydata; }
  log "making $python_base from Debian's packages (mmdebstrap)"
  mmdebstrap --quiet "${recipe[@]}" --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata bookworm - "$sources" |
    docker import --change "ENV PIP_CERT=$bundle" --change 'CMD ["python3"]' - "$python_base" >/dev/null
fi

docker_cli="$(command -v docker)"
compose="$(docker info --format '{{range .ClientInfo.Plugins}}{{if eq .Name "compose"}}{{.Path}}{{end}}{{end}}')"
[ -n "$compose" ] || { log "no compose v2 plugin: run make compose-plugin"; exit 1; }
cli_base="deploy-api-base/docker-cli:$(cat "$docker_cli" "$compose" | digest)"
if ! docker image inspect "$cli_base" >/dev/null 2>&1; then
  log "making $cli_base from $docker_cli and $compose"
  root="$(mktemp -d)"
  trap 'rm -rf "$root"' EXIT
  install -D -m 0755 "$docker_cli" "$root/usr/local/bin/docker"
  install -D -m 0755 "$compose" "$root/usr/local/libexec/docker/cli-plugins/docker-compose"
  tar -C "$root" -c . | docker import - "$cli_base" >/dev/null
fi

log "building $tag"
docker build --quiet --build-arg "PYTHON_IMAGE=$python_base" --build-arg "DOCKER_CLI_IMAGE=$cli_base" \
  -t "$tag" "$top" >/dev/null
size() { docker image inspect --format '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1e6}'; }
log "$tag: $(size "$tag") (bases: python $(size "$python_base"), docker-cli $(size "$cli_base")), ready in $((SECONDS - started)) s"
