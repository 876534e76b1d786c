# The deploy API in a container, driving the host's Docker engine through its mounted socket.
#   docker compose -f deployment.yml up -d --build
# The docker CLI and the compose v2 plugin come from Docker's own CLI image (which checks the
# compose release binary against its sha256), Python from the official slim image; every Python
# package from requirements.lock, checked by hash: ansible-core, not the community bundle, since
# every deploy step is the project's own module.
# Where Docker Hub cannot be reached, tests/rig/image.sh makes both bases from Debian's packages and
# the host's docker CLI, and passes them as PYTHON_IMAGE and DOCKER_CLI_IMAGE.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG DOCKER_CLI_IMAGE=docker:28.2-cli
FROM ${DOCKER_CLI_IMAGE} AS docker-cli

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
COPY --from=docker-cli /usr/local/bin/docker /usr/local/bin/docker
COPY --from=docker-cli /usr/local/libexec/docker/cli-plugins/docker-compose /usr/local/libexec/docker/cli-plugins/docker-compose

WORKDIR /app
COPY requirements.lock ./
# A venv, so that the same steps work on either base (Debian's python3 or the official image's).
# pip first, from the lock, then everything else, checked by hash; then pip and setuptools go
# (20 MB): nothing installs at run time.
RUN python3 -m venv /opt/venv \
 && sed -n '/^pip==/,/[^\\]$/p' requirements.lock | python -m pip install --require-hashes --no-deps -r /dev/stdin \
 && pip install --require-hashes --build-constraint requirements.lock -r requirements.lock \
 && python -m pip uninstall --yes --quiet pip setuptools \
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
# GET /health on DEPLOY_HOST:DEPLOY_PORT: unhealthy while the API does not answer, or refuses its inventory (503).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["python", "-m", "api.healthcheck"]
CMD ["python", "-m", "api"]
