"""The compose_up step: pin one service's image in an override file, and start or remove only that service; and
how a project's compose file is found when none is named.

The override file holds only `services.<name>.image` entries, so the operator's compose file is never rewritten. It
is JSON (valid YAML, readable by compose), written under an exclusive lock on its directory and replaced atomically,
so deploys of different services in the same project never lose each other's pins.

Whether compose changed anything is read from the engine, not from compose's progress output: the service's
container before and after `up`.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
from typing import Any, TypedDict

from ansible.module_utils.deploy_docker import (
    Docker,
    StepError,
    cli_error,
    logrus_record,
    newest_container,
    service_container,
    service_containers,
)
from ansible.module_utils.deploy_image import image_id

HEADER_KEY = "x-deploy"
HEADER = (
    "Written by the deploy playbook: images chosen by deploys that differ from the compose file. "
    "Use it with: docker compose -f <compose file> -f <this file> up -d"
)


# The names `docker compose` looks for when no file is named, in its order (compose v2.40 takes docker-compose.yml
# before docker-compose.yaml), and the override files it then adds from the same directory.
COMPOSE_FILE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
OVERRIDE_FILE_NAMES = (
    "compose.override.yml",
    "compose.override.yaml",
    "docker-compose.override.yml",
    "docker-compose.override.yaml",
)
# A container in one of these states is up; a crash-looping one moves between them without anyone touching it.
UP_STATES = ("running", "restarting")


class PinDiff(TypedDict):
    """The pin file before and after, as Ansible's diff shows it; empty for a file that is not there."""

    before: str
    after: str


class PinFile(TypedDict):
    """The pin file after compose_service: whether it exists, its pins by service, and its diff."""

    exists: bool
    pins: dict[str, str]
    diff: PinDiff


class ComposeResult(PinFile):
    """What compose_service returns: `container_id` the service's container after `up` (beside: the new one)."""

    changed: bool
    container_id: str
    beside: bool


def find_compose_file(project_dir: str) -> str:
    """The compose file `docker compose` reads when run in `project_dir` without `-f`, relative to `project_dir`.

    As compose does: the first of compose.yaml, compose.yml, docker-compose.yml, docker-compose.yaml that exists in
    the directory (with several, compose warns and takes the first); with none, the same search in the parent
    directory, and so on up to the root, so the file may be `../compose.yaml`. Compose then counts that file's
    directory as the project directory, as it does when run with `-f <that file>` in `project_dir`.
    """
    start = os.path.abspath(project_dir)
    if not os.path.isdir(start):
        raise StepError(f"Project directory {start} is not a directory")
    directory = start
    while True:
        for name in COMPOSE_FILE_NAMES:
            # Existence, not the type: compose takes a directory of that name too, and then fails to read it.
            if os.path.exists(os.path.join(directory, name)):
                return os.path.relpath(os.path.join(directory, name), start)
        parent = os.path.dirname(directory)
        if parent == directory:
            raise StepError(
                f"No compose file in {start} nor in a directory above it: looked for {', '.join(COMPOSE_FILE_NAMES)}"
            )
        directory = parent


def locate(docker: Docker, project_dir: str, compose_file: str) -> tuple[str, str, str]:
    """The project directory (absolute), the compose file relative to it (found as compose finds it when empty) and
    the compose file's own path; a StepError names what is missing."""
    project_dir = os.path.abspath(project_dir)
    if not os.path.isdir(project_dir):
        raise StepError(f"Project directory {project_dir} is not a directory")
    compose_file = compose_file or discover_compose_file(docker, project_dir)
    compose_path = os.path.normpath(os.path.join(project_dir, compose_file))
    if not os.path.exists(compose_path):
        raise StepError(f"Compose file {compose_path} does not exist")
    return project_dir, compose_file, compose_path


class Project(TypedDict):
    """A compose project as `docker compose config` reads it: where it is, and its configuration."""

    project_dir: str
    compose_file: str
    compose_path: str
    config: dict[str, Any]


def read_project(docker: Docker, project_dir: str, compose_file: str) -> Project:
    """The project in `project_dir` (`~` and `$VAR` expanded) with its compose file (found as compose finds it when
    empty), as `docker compose -f <file> config --format json` reads it; a StepError names the file at fault."""
    expanded = os.path.expanduser(os.path.expandvars(project_dir))
    project_dir, compose_file, compose_path = locate(docker, expanded, compose_file)
    config_args = ["compose", "-f", compose_file, "config", "--format", "json"]
    rc, stdout, stderr = docker.run(*config_args, cwd=project_dir)
    if rc != 0:
        # With the keys of ansible.builtin.command's failures (rc, stdout, stderr, cmd), which callers read.
        what = f"docker compose config failed for {compose_path}"
        raise cli_error(what, [docker.binary, *config_args], rc, stderr, stdout=stdout)
    return {
        "project_dir": project_dir,
        "compose_file": compose_file,
        "compose_path": compose_path,
        "config": json.loads(stdout),
    }


def service_config(project: Project, service: str) -> dict[str, Any]:
    """The service's entry of the project's configuration; a StepError when the compose file does not define it."""
    config: dict[str, Any] | None = (project["config"].get("services") or {}).get(service)
    if config is None:
        raise StepError(f"Service '{service}' is not defined in {project['compose_path']}")
    return config


def unread_override(project_dir: str, compose_file: str) -> str:
    """The override file `docker compose` would add to a compose file it found itself (compose.override.yml and the
    like, beside it), relative to `project_dir`; empty when there is none. The deploy names its compose file to
    compose, and compose reads no override file then."""
    directory = os.path.dirname(compose_file)
    return next(
        (
            os.path.join(directory, name)
            for name in OVERRIDE_FILE_NAMES
            if os.path.exists(os.path.join(project_dir, directory, name))
        ),
        "",
    )


def discover_compose_file(docker: Docker, project_dir: str) -> str:
    """find_compose_file, with a warning when compose, run without `-f`, would read an override file beside it."""
    found = find_compose_file(project_dir)
    override = unread_override(project_dir, found)
    if override:
        docker.warn(
            f"{override} is not read: the deploy reads only {found} and its pin file, as "
            f"`docker compose -f {found}` does. Name the compose file to read it, or merge the override into it."
        )
    return found


def pin_file_for(compose_file: str) -> str:
    """The pin file beside a compose file: its name without .yml or .yaml, plus `.deploy.yml`."""
    return re.sub(r"\.ya?ml$", "", compose_file) + ".deploy.yml"


def read_pins(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except FileNotFoundError:
        return {}
    services = document.get("services") or {}
    return {name: spec["image"] for name, spec in services.items() if isinstance(spec, dict) and "image" in spec}


def render(pins: dict[str, str]) -> str:
    document = {
        HEADER_KEY: HEADER,
        "services": {name: {"image": pins[name]} for name in sorted(pins)},
    }
    return json.dumps(document, indent=2) + "\n"


def write_atomically(path: str, content: str) -> None:
    directory = os.path.dirname(path) or "."
    fd, temporary = tempfile.mkstemp(prefix=".compose-pin-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def update_pin(
    path: str, service: str, image: str | None, check_mode: bool = False
) -> tuple[dict[str, str], dict[str, str], bool]:
    """Pin `service` to `image` (None removes its pin); returns the pins before, after, and whether the file existed."""
    lock = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        existed = os.path.exists(path)
        before = read_pins(path)
        after = dict(before)
        if image is None:
            after.pop(service, None)
        else:
            after[service] = image
        if after != before and not check_mode:
            write_atomically(path, render(after))
        return before, after, existed
    finally:
        os.close(lock)


def compose_command(docker: Docker, files: list[str]) -> list[str]:
    """`docker compose` with these files, its progress as plain text (read only for warnings and a failure's cause).

    No --project-directory: compose takes the first file's directory, as it does for an operator who runs
    `docker compose -f <compose file> -f <pin file> up -d` in the project directory (the pin file's header says so),
    and as capture_state's `docker compose config` does.
    """
    file_arguments = [argument for name in files for argument in ("--file", name)]
    return [docker.binary, "compose", "--ansi", "never", "--progress", "plain", *file_arguments]


def compose_output(docker: Docker, command: list[str], cwd: str, what: str, **extra: object) -> str:
    """Run a compose command, pass its warnings on, and return its stdout; a failure is `<what>: <cause>`."""
    rc, stdout, stderr = docker.run_argv(command, cwd=cwd)
    for level, message in map(logrus_record, stderr.splitlines()):
        if level.startswith("warn"):
            docker.warn(f"Docker compose: {message}")
    if rc != 0:
        raise cli_error(what, command, rc, stderr, stdout=stdout, **extra)
    return stdout


def is_up(container: dict[str, Any]) -> bool:
    return container.get("State") in UP_STATES


def container_changed(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether `up` did something to the service's container (`docker ps` rows, {} for none): created or
    recreated (another ID), started or stopped. Running and restarting both count as up, so a container that
    restarts by its restart policy between the two reads is no change."""
    return before.get("ID") != after.get("ID") or is_up(before) != is_up(after)


def would_change(
    docker: Docker,
    compose: list[str],
    cwd: str,
    service: str,
    container: dict[str, Any],
    reference: str,
    failure: str,
) -> bool:
    """Whether `up` with these files would create, recreate or start the service's container, decided as compose
    decides it: no container, or one not up, or one whose config hash label differs from `docker compose config
    --hash` (the service's configuration was edited), or whose image ID is not the one the host's image of the
    configured `reference` has now (a tag that moved, or an image not on the host yet). `failure` begins the error
    of a compose command that fails."""
    if not container or not is_up(container):
        return True
    hashes = compose_output(docker, [*compose, "config", "--hash", service], cwd, failure)
    configured_hash = dict(line.split(maxsplit=1) for line in hashes.splitlines() if line.strip()).get(service)
    template = '{{.Image}} {{index .Config.Labels "com.docker.compose.config-hash"}}'
    inspect = ["inspect", "--type", "container", "--format", template, container["ID"]]
    inspected = docker.output(*inspect, what=f"Inspecting container {container['ID']}")
    running_image, _, running_hash = inspected.strip().partition(" ")
    return running_hash != configured_hash or not reference or running_image != image_id(docker, reference)


def compose_service(
    docker: Docker,
    project_dir: str,
    compose_file: str,
    pin_file: str,
    service: str,
    image: str,
    file_image: str,
    stop_timeout: int,
    state: str,
    check_mode: bool,
    project: str = "",
    before: dict[str, Any] | None = None,
    beside: bool = False,
) -> ComposeResult:
    """Pin `image` (or drop the pin: an empty `image`, `file_image`, or state absent) and run
    `docker compose up --detach --no-deps --pull missing -- <service>`, or `down -- <service>`.

    `project_dir` is expanded already (an Ansible `path`). An empty `compose_file` is found as compose finds it
    (discover_compose_file), and an empty `pin_file` is the one beside the compose file (pin_file_for). Returns
    `changed`, `container_id` (empty with state absent), `exists` (the pin file), `pins` and `diff` (the pin file
    before and after).

    `changed` is read from the engine, not from compose's output: the pin file changed, or the service's container
    (found by compose's labels with `docker ps`) differs before and after `up` in its ID (created, recreated) or in
    being up (started, stopped). With state absent: the pin changed, or a container existed before. The compose
    `project`'s name (a capture knows it) saves the `docker compose config` that reads it, and `before`, the
    container as a capture just found it (its `docker ps` row's ID and State, {} for none), the `docker ps` before.

    Under check mode no pin is written and compose runs with `--dry-run`, which checks the files and the request.
    `changed` then says what `up` would do (would_change), unless the pin would change, which is a change already.
    With state absent: the pin would change, or a container exists.

    `beside` (a blue-green deploy, `before` running) starts a second container of the service with the pinned image
    and leaves `before` as it is (`--scale <service>=2 --no-recreate`); `container_id` is the new one's.
    """
    project_dir, compose_file, compose_path = locate(docker, project_dir, compose_file)
    pin_file = pin_file or pin_file_for(compose_file)
    pin_path = os.path.normpath(os.path.join(project_dir, pin_file))

    pinned = state == "present" and image and image != file_image
    try:
        pins_before, pins_after, existed = update_pin(pin_path, service, image if pinned else None, check_mode)
    except (OSError, ValueError) as error:
        raise StepError(f"Cannot update the image pins in {pin_path}: {error}") from None
    pin_changed = pins_after != pins_before
    exists = os.path.exists(pin_path)
    result: PinFile = {
        "exists": exists,
        "pins": pins_after,
        "diff": {
            "before": render(pins_before) if existed else "",
            "after": render(pins_after) if existed or pin_changed else "",
        },
    }

    where = f"service {service} of {compose_path}"
    compose = compose_command(docker, [compose_file, *([pin_file] if exists else [])])
    config: dict[str, Any] = {}
    config_failure = f"docker compose config failed for {where}"
    if not project or (check_mode and state == "present" and not pin_changed):
        command = [*compose, "config", "--format", "json"]
        config = json.loads(compose_output(docker, command, project_dir, config_failure, **result))
        project = project or config["name"]
    if before is None:
        before = service_container(docker, project, service)

    reference = image if pinned else file_image
    if beside and before.get("State") != "running":
        # Nothing serves: nothing to start beside.
        beside = False
    if beside and state == "present" and not check_mode:
        # Only a container compose would replace gets a twin: an unchanged service starts nothing.
        beside = would_change(docker, compose, project_dir, service, before, reference, config_failure)

    timeout = ["--timeout", str(stop_timeout)]
    dry_run = ["--dry-run"] if check_mode else []
    if state == "present":
        action = ["up", "--detach", "--no-color", "--quiet-pull", "--pull", "missing", "--no-deps"]
        if beside:
            action += ["--no-recreate", "--scale", f"{service}=2"]
    else:
        action = ["down"]
    command = [*compose, *action, *timeout, *dry_run, "--", service]
    compose_output(docker, command, project_dir, f"docker compose {action[0]} failed for {where}", **result)

    if state == "absent":
        return {"changed": pin_changed or bool(before), "container_id": "", "beside": False, **result}
    if check_mode:
        reference = ((config.get("services") or {}).get(service) or {}).get("image", "")
        changed = pin_changed or would_change(docker, compose, project_dir, service, before, reference, config_failure)
        return {"changed": changed, "container_id": before.get("ID", ""), "beside": beside and changed, **result}
    if beside:
        started = [row for row in service_containers(docker, project, service) if row["ID"] != before["ID"]]
        if not started:
            raise StepError(f"docker compose up started no second container of {where}")
        return {"changed": True, "container_id": newest_container(started)["ID"], "beside": True, **result}
    after = service_container(docker, project, service)
    changed = pin_changed or container_changed(before, after)
    return {"changed": changed, "container_id": after.get("ID", ""), "beside": False, **result}
