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
# The compose project, without running compose for it: COMPOSE_PROJECT_NAME, else the compose
# file's top-level name, else the directory's name.
project=${COMPOSE_PROJECT_NAME:-$(sed -n 's/^name:[[:space:]]*//p' docker-compose.yml | tr -d "\"'" | head -1)}
project=${project:-$(basename "$PWD" | tr '[:upper:]' '[:lower:]' | tr -cd 'a-z0-9_-')}
container_of() { # container_of [-a]: the service's container (-a: also when it is not running)
  docker ps -q "$@" --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.service=$service"
}

# 1. What runs now (what a rollback would go back to).
old=$(container_of)
old_image=
if [ -n "$old" ]; then
  old_image=$(docker inspect --format '{{.Image}}' "$old")
fi

# 2. Pull, always asking the registry.
docker pull -q "$image" >/dev/null
new_image=$(docker image inspect --format '{{.Id}}' "$image")

# 3. Start the service with the new image.
docker compose up -d --quiet-pull "$service" 2>/dev/null

# 4. Wait until healthy (a container without a HEALTHCHECK: until running), reading the image too.
container=$(container_of -a)
deadline=$((SECONDS + timeout))
while :; do
  read -r state running < <(docker inspect --format \
    '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}} {{.Image}}' "$container")
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
if [ "$running" != "$new_image" ]; then
  echo "plain: $service runs $running, not $new_image" >&2
  exit 1
fi
echo "old=${old_image:-none} new=$new_image"
