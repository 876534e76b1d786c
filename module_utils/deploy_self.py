"""The container the deploy runs in, and the refusal to replace it.

The API runs as a compose service itself, with the host's Docker socket mounted, and runs the deploy module in its own
container for the hosts it reaches with `ansible_connection: local`. A deploy, rollback, removal or settling of the
API's own service would have compose stop that container midway, and the deploy with it, where no rollback can follow:
preflight refuses it (deploy_steps.run_steps), before anything changes, with the command that updates it instead.

Docker bind-mounts /etc/hostname, /etc/hosts and /etc/resolv.conf into every container from the container's own
directory, `<data-root>/containers/<id>/`, so the mount table names the container whatever the cgroup version (under
cgroup v2, /proc/self/cgroup says only `0::/`) and wherever the data root is. A container that shares another's
network (`network_mode: service:...`) gets that one's files, and is taken for it.
"""

from __future__ import annotations

import os
import re
import shlex
from typing import Any

from ansible.module_utils.deploy_rules import REMOVE, SETTLE

MOUNTINFO = "/proc/self/mountinfo"
CONTAINER_FILES = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")
CONTAINER_DIRECTORY = re.compile(r"/containers/([0-9a-f]{64})/")
# What compose writes on each container it creates: its project and service, whether `docker compose run` made it, and
# the files and directory the project was read from (as the host that ran compose names them).
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
ONEOFF_LABEL = "com.docker.compose.oneoff"
CONFIG_FILES_LABEL = "com.docker.compose.project.config_files"
WORKING_DIR_LABEL = "com.docker.compose.project.working_dir"
# How the refusal names each action: what it refuses to do, and what the container runs.
VERBS = {"deploy": "deploy", "rollback": "roll back", REMOVE: "remove", SETTLE: "settle"}
NOUNS = {"deploy": "deploy", "rollback": "rollback", REMOVE: "removal", SETTLE: "settling"}


def mountinfo_container_id(mountinfo: str) -> str | None:
    """The ID of the Docker container whose mount table (the text of /proc/self/mountinfo) this is; None outside one.

    Fields, space-separated: mount ID, parent ID, major:minor, the root of the mount in its file system, the mount
    point, ... A container's /etc/hostname (or hosts, resolv.conf) has its root under `.../containers/<id>/`.
    """
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) > 4 and fields[4] in CONTAINER_FILES:
            found = CONTAINER_DIRECTORY.search(fields[3])
            if found:
                return found.group(1)
    return None


def own_container_id(mountinfo: str = MOUNTINFO) -> str | None:
    """The ID of the Docker container this process runs in; None outside one (or without a mount table to read)."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as table:
            return mountinfo_container_id(table.read())
    except OSError:
        return None


def labels_of(container: dict[str, Any]) -> dict[str, str]:
    """The labels of an inspected container."""
    labels: dict[str, str] = (container.get("Config") or {}).get("Labels") or {}
    return labels


def compose_identity(container: dict[str, Any]) -> tuple[str, str]:
    """(project, service) of a container compose started for a service, ("", "") for any other container and for a
    one-off of `docker compose run`, which `compose up` leaves alone."""
    labels = labels_of(container)
    if labels.get(ONEOFF_LABEL) == "True":
        return "", ""
    return labels.get(PROJECT_LABEL, ""), labels.get(SERVICE_LABEL, "")


def update_command(container: dict[str, Any], service: str, compose_path: str, builds: bool) -> str:
    """The command that replaces the service's container from outside it, with its image built again (`builds`: the
    service has a `build` section) or pulled again: with the compose files the container was created from (its
    labels), else in the project directory it was created in, else with `compose_path`."""
    labels = labels_of(container)
    working_dir = labels.get(WORKING_DIR_LABEL, "")
    names = [name.strip() for name in labels.get(CONFIG_FILES_LABEL, "").split(",")]
    files = [os.path.join(working_dir, name) for name in names if name]
    if files:
        where = [arg for name in files for arg in ("-f", name)]
    elif working_dir:
        where = ["--project-directory", working_dir]
    else:
        where = ["-f", compose_path]
    fresh = ["--build"] if builds else ["--pull", "always"]
    return shlex.join(["docker", "compose", *where, "up", "-d", *fresh, service])


def self_refusal(action: str, service: str, container: dict[str, Any], compose_path: str, builds: bool) -> str:
    """Why the deploy refuses to replace (or remove) the container it runs in, in one line that says what to run
    instead. `container` is the inspected container; `compose_path` the deploy's compose file, for a container whose
    labels do not say where its project is; `builds` whether the service builds its image."""
    noun = NOUNS[action]
    replacing = "removing" if action in (REMOVE, SETTLE) else "replacing"
    return (
        f"Refusing to {VERBS[action]} {service}: its container {container['Id'][:12]} runs this {noun}, "
        f"and {replacing} it would stop the {noun} midway. Update it from the host instead: "
        f"{update_command(container, service, compose_path, builds)}"
    )
