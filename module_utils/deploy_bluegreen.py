"""The Docker work of a blue-green deploy besides compose_up's (deploy_compose.compose_service, `beside`): the new
container's address for its health URL, watching it while the old one still serves, and retiring a container.

Rotation is the service's name on the project network, which Docker's DNS answers with every running container of the
service: the new container is in it from its start, and the old one until it stops. A proxy that resolves the name
retries a refused connection on another address, so neither a new container that does not listen yet nor an old one
that stopped listening costs a request (README, "Zero-downtime deploys").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypedDict

from ansible.module_utils.deploy_docker import Docker, StepError, service_containers
from ansible.module_utils.deploy_health import DOWN, OK_STATUS, inspect_container, probe
from ansible.module_utils.deploy_rules import ADDRESS

# How often the observation looks at the new container.
OBSERVE_POLL_SECONDS = 0.5


class Retired(TypedDict):
    """What retire did: how long the container drained, and the seconds its stop took."""

    drained: float
    stopped_in: float


def container_address(docker: Docker, container_id: str) -> str:
    """The container's IP address on its first network (by name); a StepError when it has none."""
    found = inspect_container(docker, container_id)
    networks: dict[str, Any] = ((found or {}).get("NetworkSettings") or {}).get("Networks") or {}
    for name in sorted(networks):
        address = str(networks[name].get("IPAddress") or "")
        if address:
            return address
    raise StepError(
        f"Container {container_id[:12]} has no IP address on a network, so its health URL cannot be probed at "
        f"{ADDRESS}: give the service a network (not network_mode none or container:...)"
    )


def health_url_for(docker: Docker, url: str, container_id: str) -> str:
    """The health URL to probe for a container: `{address}` in it replaced by the container's own address."""
    if ADDRESS not in url:
        return url
    return url.replace(ADDRESS, container_address(docker, container_id))


def observe(
    docker: Docker,
    container_id: str,
    seconds: int,
    url: str,
    interval: int,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Watch a container that passed its health check for `seconds`: it must keep running without a restart, not turn
    unhealthy, and (with `url`) answer 2xx every `interval` seconds. Returns what went wrong, in one sentence, or ""."""
    began = clock()
    start = inspect_container(docker, container_id)
    next_probe = began
    while True:
        elapsed = clock() - began
        poll = inspect_container(docker, container_id)
        if start is None or poll is None:
            return f"Container {container_id[:12]} disappeared {elapsed:.0f} s into the observation"
        state = poll["State"]
        if state["Status"] in DOWN or poll["RestartCount"] > start["RestartCount"]:
            return (
                f"Container {container_id[:12]} stopped {elapsed:.0f} s into the observation "
                f"({state['Status']}, exit code {state.get('ExitCode', 0)})"
            )
        health = (state.get("Health") or {}).get("Status")
        if health == "unhealthy":
            return f"Container {container_id[:12]} turned unhealthy {elapsed:.0f} s into the observation"
        if url and clock() >= next_probe:
            status, message = probe(url, min(interval, 5) or 1)
            if status not in OK_STATUS:
                return f"Health URL {url} answered {message} {elapsed:.0f} s into the observation"
            next_probe = clock() + interval
        if elapsed >= seconds:
            return ""
        sleep(min(OBSERVE_POLL_SECONDS, max(0.0, seconds - elapsed)))


def retire(
    docker: Docker,
    container_id: str,
    drain_seconds: int,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Retired:
    """Let a container serve `drain_seconds` more, then stop it with its own grace period (compose's
    stop_grace_period: it gets its stop signal, stops accepting, finishes what it serves) and remove it."""
    began = clock()
    sleep(drain_seconds)
    drained = clock() - began
    docker.output("stop", container_id, what=f"Stopping container {container_id[:12]}")
    stopped_in = clock() - began - drained
    docker.output("rm", container_id, what=f"Removing container {container_id[:12]}")
    return {"drained": drained, "stopped_in": stopped_in}


def discard(docker: Docker, container_id: str) -> bool:
    """Stop (with its own grace period) and remove a container; False when it was gone already."""
    if inspect_container(docker, container_id) is None:
        return False
    docker.output("stop", container_id, what=f"Stopping container {container_id[:12]}")
    docker.output("rm", container_id, what=f"Removing container {container_id[:12]}")
    return True


def others(docker: Docker, project: str, service: str, keep: str) -> list[dict[str, Any]]:
    """The service's containers other than `keep`: their `docker ps` rows."""
    return [row for row in service_containers(docker, project, service) if row["ID"] != keep]
