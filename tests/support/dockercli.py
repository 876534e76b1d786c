"""The docker CLI on the rig's engines: commands, the test images in the loopback registry, a compose service's
container, a compose project's removal."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

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
    """Every container of a compose service, running or not, as `docker inspect` shows them (blue_green runs two)."""
    ids = docker(
        "ps",
        "-aq",
        "--filter",
        f"label=com.docker.compose.project={project}",
        "--filter",
        f"label=com.docker.compose.service={service}",
        host=host,
    ).split()
    return json.loads(docker("inspect", *ids, host=host)) if ids else []


def compose_down(project: str, host: str | None = None) -> None:
    """Remove a compose project's containers and network, and the history tags the deploy playbook kept for it."""
    docker("compose", "-p", project, "down", "--timeout", "1", check=False, host=host)
    history = docker("images", "--format", "{{.Repository}}:{{.Tag}}", f"deploy-history/{project}/*", host=host)
    for tag in history.split():
        docker("rmi", tag, check=False, host=host)
