#!/usr/bin/env bash
# The reference's flow (../shared/reference/deployment-api.md, "Deployment Flow"): capture the
# running image, pull, `docker compose up -d SERVICE`, wait 5 s, check the container is running.
#   bench/reference.sh COMPOSE_DIR SERVICE IMAGE
# The compose file names its image ${IMAGE}. Finds the container as bench/plain.sh does.
set -euo pipefail

if [ $# -ne 3 ]; then
  echo "usage: $0 COMPOSE_DIR SERVICE IMAGE" >&2
  exit 2
fi
dir=$1 service=$2 image=$3
cd "$dir"
export IMAGE="$image"
project=${COMPOSE_PROJECT_NAME:-$(sed -n 's/^name:[[:space:]]*//p' docker-compose.yml | tr -d "\"'" | head -1)}
project=${project:-$(basename "$PWD" | tr '[:upper:]' '[:lower:]' | tr -cd 'a-z0-9_-')}
container_of() {
  docker ps -q "$@" --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.service=$service"
}

# Capture state.
old=$(container_of)
old_image=
if [ -n "$old" ]; then
  old_image=$(docker inspect --format '{{.Image}}' "$old")
fi

# Pull image, restart service.
docker pull -q "$image" >/dev/null
docker compose up -d --quiet-pull "$service" 2>/dev/null

# Health check: wait 5 s, then the container must be running.
sleep 5
container=$(container_of -a)
read -r running new_image < <(docker inspect --format '{{.State.Running}} {{.Image}}' "$container")
if [ "$running" != true ]; then
  echo "reference: $service is not running" >&2
  exit 1
fi
echo "old=${old_image:-none} new=$new_image"
