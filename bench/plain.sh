#!/usr/bin/env bash
# The plain script: the Docker work of one deploy with the docker CLI alone, as tight as a shell
# script does it. What the project is measured against (bench/deploy.py).
#   bench/plain.sh COMPOSE_DIR SERVICE IMAGE
# The compose file names its image ${IMAGE}. Captures the running container's image, pulls IMAGE,
# runs `docker compose up -d SERVICE`, polls the container's health every 0.1 s until healthy
# (no fixed sleep), then checks that the container runs the image ID just pulled.
set -euo pipefail

if [ $# -ne 3 ]; then
  echo "usage: $0 COMPOSE_DIR SERVICE IMAGE" >&2
  exit 2
fi
dir=$1 service=$2 image=$3
timeout=${PLAIN_HEALTH_TIMEOUT:-60}
cd "$dir"
export IMAGE="$image"

# 1. What runs now (what a rollback would go back to).
old=$(docker compose ps -q "$service")
old_image=
if [ -n "$old" ]; then
  old_image=$(docker inspect --format '{{.Image}}' "$old")
fi

# 2. Pull, always asking the registry.
docker pull -q "$image" >/dev/null
new_image=$(docker image inspect --format '{{.Id}}' "$image")

# 3. Start the service with the new image.
docker compose up -d --quiet-pull "$service" 2>/dev/null

# 4. Wait until healthy (a container without a HEALTHCHECK: until running).
container=$(docker compose ps -q "$service")
deadline=$((SECONDS + timeout))
while :; do
  state=$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$container")
  case $state in
    healthy | running) break ;;
    unhealthy | exited | dead)
      echo "plain: $service is $state" >&2
      exit 1
      ;;
  esac
  if ((SECONDS >= deadline)); then
    echo "plain: $service not healthy after ${timeout} s ($state)" >&2
    exit 1
  fi
  sleep 0.1
done

# 5. Verify: the container runs the image just pulled.
running=$(docker inspect --format '{{.Image}}' "$container")
if [ "$running" != "$new_image" ]; then
  echo "plain: $service runs $running, not $new_image" >&2
  exit 1
fi
echo "old=${old_image:-none} new=$new_image"
