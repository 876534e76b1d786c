"""The docker CLI and API on the rig's engines: commands, the test images in the loopback registry, a compose service's
container, a compose project's removal."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx

REGISTRY = os.environ.get("DEPLOY_TEST_REGISTRY", "127.0.0.1:5099")


class DockerError(RuntimeError):
    """A docker command failed, or the engine shows what a test or a benchmark does not expect."""


def docker(*args: str, check: bool = True, host: str | None = None, cwd: Path | None = None) -> str:
    """The docker CLI (compose too) on the rig's own engine, or on `host` (a DOCKER_HOST such as
    unix:///run/deploytest-h1.sock); its stdout, stripped. A failure raises DockerError unless `check` is false."""
    env = {**os.environ, "DOCKER_HOST": host} if host else None
    completed = subprocess.run(["docker", *args], capture_output=True, text=True, env=env, cwd=cwd)
    if check and completed.returncode != 0:
        where = host or "the rig's engine"
        raise DockerError(f"docker {' '.join(args)} on {where} failed: {completed.stderr.strip()}")
    return completed.stdout.strip()


def docker_on(host: str | None, *args: str, check: bool = True) -> str:
    """docker() on engine `host` (None: the rig's own engine), named first as the multi-host tests read best."""
    return docker(*args, check=check, host=host)


def image(kind: str, version: str = "v1") -> str:
    """A test image in the loopback registry (tests/rig/images): healthy, crash, unhealthy, dies, plain; v1 to v3."""
    return f"{REGISTRY}/deploytest/{kind}:{version}"


def image_id(reference: str) -> str:
    return docker("image", "inspect", "--format", "{{.Id}}", reference)


def container_of(project: str, service: str, host: str | None = None) -> dict[str, Any] | None:
    """The one container of a compose service, as `docker inspect` shows it; None when there is none."""
    found = containers_of(project, service, host)
    if len(found) > 1:
        raise DockerError(f"{project}/{service} has {len(found)} containers")
    return found[0] if found else None


def containers_of(project: str, service: str, host: str | None = None) -> list[dict[str, Any]]:
    """Every container of a compose service, running or not, as `docker inspect` shows them (blue_green runs two),
    newest first. Read from the engine's API: tests poll this, and a docker CLI process per read costs a fair share
    of a core at ten reads a second. A container removed between the listing and its inspection is left out."""
    client = engine_api(host)
    labels = [f"com.docker.compose.project={project}", f"com.docker.compose.service={service}"]
    listed = client.get("/containers/json", params={"all": "1", "filters": json.dumps({"label": labels})})
    found = []
    for entry in _answered(listed, host):
        answer = client.get(f"/containers/{entry['Id']}/json")
        if answer.status_code != 404:  # else removed since it was listed
            found.append(_answered(answer, host))
    return found


_clients = threading.local()


def engine_api(host: str | None = None) -> httpx.Client:
    """A client of the Docker engine's API on its unix socket, one per thread: the rig's own engine (DOCKER_HOST, or
    /var/run/docker.sock), or `host` (unix:///run/deploytest-h1.sock)."""
    address = host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if not address.startswith("unix://"):
        raise DockerError(f"the rig's engines listen on unix sockets, not on {address}")
    clients: dict[str, httpx.Client] = _clients.__dict__.setdefault("by_address", {})
    if address not in clients:
        transport = httpx.HTTPTransport(uds=address.removeprefix("unix://"))
        clients[address] = httpx.Client(transport=transport, base_url="http://engine", timeout=30)
    return clients[address]


def _answered(answer: httpx.Response, host: str | None) -> Any:
    if answer.is_error:
        where = host or "the rig's engine"
        raise DockerError(f"GET {answer.request.url.path} on {where} answered {answer.status_code}: {answer.text}")
    return answer.json()


def compose_down(project: str, host: str | None = None) -> None:
    """Remove a compose project's containers and network, and the history tags the deploy playbook kept for it."""
    docker("compose", "-p", project, "down", "--timeout", "1", check=False, host=host)
    history = docker("images", "--format", "{{.Repository}}:{{.Tag}}", f"deploy-history/{project}/*", host=host)
    for tag in history.split():
        docker("rmi", tag, check=False, host=host)
