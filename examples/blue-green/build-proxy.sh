#!/usr/bin/env bash
# Builds a Caddy image from Debian's caddy package, for hosts that cannot pull caddy:2.6 from
# Docker Hub: the binary, the two libraries it links (libc, libzstd) and the dynamic loader in a
# FROM scratch image. Nothing is installed: `apt-get download` fetches the package into a
# temporary directory. Does nothing when the image exists already.
#   examples/blue-green/build-proxy.sh [IMAGE]     IMAGE: $PROXY_IMAGE, else bluegreen/caddy:2.6
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
image="${1:-${PROXY_IMAGE:-bluegreen/caddy:2.6}}"

if ! docker info >/dev/null 2>&1; then
  echo "build-proxy: no Docker engine reachable" >&2; exit 1
fi
if docker image inspect "$image" >/dev/null 2>&1; then exit 0; fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# apt-get download writes into the current directory. As root it downloads as its sandbox user
# _apt, which cannot write into a private mktemp directory: the download directory is _apt's.
mkdir "$work/deb"
chmod 0755 "$work"
if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$work/deb"; fi
(cd "$work/deb" && apt-get download -qq caddy) || {
  echo "build-proxy: apt-get download caddy failed (Debian 12 or later; run apt-get update first?)" >&2; exit 1
}
deb="$(echo "$work"/deb/caddy_*.deb)"
dpkg-deb -x "$deb" "$work/package"
version="$(dpkg-deb -f "$deb" Version)"
binary="$work/package/usr/bin/caddy"

# Each shared object the binary needs, at the path the host's loader found it: the image's loader
# then finds it at the same place, whatever the architecture's library directory is called.
rootfs="$work/context/rootfs"
mkdir -p "$rootfs/usr/bin"
cp "$binary" "$rootfs/usr/bin/caddy"
needed="$(ldd "$binary")"
if grep -q "not found" <<<"$needed"; then
  echo "build-proxy: the caddy binary needs libraries this host lacks:" >&2
  grep "not found" <<<"$needed" >&2; exit 1
fi
awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$needed" | while read -r library; do
  mkdir -p "$rootfs$(dirname "$library")"
  cp -L "$library" "$rootfs$library"
done

cat >"$work/context/Dockerfile" <<DOCKERFILE
FROM scratch
LABEL org.opencontainers.image.title="caddy" org.opencontainers.image.version="$version" \
      org.opencontainers.image.description="Debian's caddy $version, built by $(basename "$here")/build-proxy.sh"
COPY rootfs/ /
ENTRYPOINT ["/usr/bin/caddy"]
CMD ["run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
DOCKERFILE
# The legacy builder: the engine may have no buildx plugin. Its deprecation notice is not shown.
if ! built="$(DOCKER_BUILDKIT=0 docker build -q -t "$image" "$work/context" 2>&1)"; then
  echo "$built" >&2; exit 1
fi
echo "build-proxy: built $image (Debian's caddy $version)"
