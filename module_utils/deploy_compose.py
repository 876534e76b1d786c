"""The compose_up step: pin one service's image in an override file, and start or remove only that service.

The override file holds only `services.<name>.image` entries, so the operator's compose file is never rewritten. It
is JSON (valid YAML, readable by compose), written under an exclusive lock on its directory and replaced atomically,
so deploys of different services in the same project never lose each other's pins. Compose's changes and errors are
read from its JSON events as community.docker's docker_compose_v2 reads them.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import tempfile

from ansible.module_utils.deploy_docker import Docker, StepError, service_container

HEADER_KEY = "x-deploy"
HEADER = (
    "Written by the deploy playbook: images chosen by deploys that differ from the compose file. "
    "Use it with: docker compose -f <compose file> -f <this file> up -d"
)

# docker compose --progress json: statuses that mean something was done (pulls and builds excepted),
# and the progress of a layer being pulled.
WORKING = frozenset(("Creating", "Starting", "Restarting", "Stopping", "Killing", "Removing", "Recreate"))
LAYER_WORKING = frozenset(("Pulling fs layer", "Waiting", "Downloading", "Verifying Checksum", "Extracting", "Working"))
LAYER_DONE = frozenset(("Already exists", "Download complete", "Pull complete"))
DONE = frozenset(
    ("Started", "Healthy", "Exited", "Restarted", "Running", "Created", "Stopped", "Killed", "Removed", "Recreated")
)
KNOWN_STATUS = WORKING | DONE | frozenset(("Pulled", "Pulling", "Built", "Building", "Error", "Warning", "Waiting"))


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


def update_pin(path: str, service: str, image: str | None, check_mode: bool = False) -> tuple[dict, dict, bool]:
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


RESOURCE_TYPES = {
    "Network": "network",
    "Image": "image",
    "Volume": "volume",
    "Container": "container",
    "Service": "service",
}


def parse_events(stderr: str) -> list[dict]:
    """The events of `docker compose --progress json` (one JSON object a line on stderr), read as
    community.docker's docker_compose_v2 reads them: `type` (container, network, ..., image-layer, unknown), `id`,
    `status` and `msg`."""
    events = []
    for line in stderr.splitlines():
        line = line.strip()
        if not (line.startswith("{") and line.endswith("}")):
            if line.startswith("Warning: "):
                events.append({"type": "unknown", "id": None, "status": "Warning", "msg": line[len("Warning: ") :]})
            continue
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if data.get("tail"):
            text = data.get("text")
            warning = isinstance(text, str) and text.lower().startswith("warning:")
            status, text = ("Warning", text[len("warning:") :].lstrip()) if warning else ("Error", text)
            events.append({"type": "unknown", "id": None, "status": status, "msg": text})
            continue
        if data.get("error"):
            events.append({"type": "unknown", "id": data.get("id"), "status": "Error", "msg": data.get("message")})
            continue
        kind, resource, status, text = "unknown", data.get("id"), data.get("status"), data.get("text")
        parent = data.get("parent_id")
        if status in ("Working", "Done") and isinstance(parent, str) and parent.startswith("Image "):
            kind, resource = "image-layer", parent[len("Image ") :]
        elif isinstance(resource, str) and " " in resource:
            type_name, resource = resource.split(" ", 1)
            kind = RESOURCE_TYPES.get(type_name, "unknown")
        elif text in ("Pulled", "Pulling"):
            kind, status, text = "image", text, status
        elif text in LAYER_DONE or text in LAYER_WORKING:
            kind, status, text = "image-layer", text, status
        elif status is None and isinstance(text, str) and text.startswith("Skipped - "):
            status, text = text.split(" - ", 1)
        elif data.get("level") in ("warning", "error") and "msg" in data:
            status, text = data["level"].capitalize(), data["msg"]
        if status not in KNOWN_STATUS and text in KNOWN_STATUS:
            status, text = text, status
        events.append({"type": kind, "id": resource, "status": status, "msg": text})
    return events


def has_changes(events: list[dict]) -> bool:
    """Whether compose did something (pulls and builds do not count): created, started, stopped, removed..."""
    return any(event["status"] in (LAYER_WORKING if event["type"] == "image-layer" else WORKING) for event in events)


def error_message(events: list[dict], rc: int) -> str:
    """What went wrong, in the words docker_compose_v2 used for it."""
    errors = []
    for event in events:
        if event["status"] != "Error":
            continue
        if not event["id"]:
            prefix = "General error: "
        elif event["type"] == "unknown":
            prefix = f"Error when processing {event['id']}: "
        else:
            prefix = f"Error when processing {event['type']} {event['id']}: "
        errors.append(prefix + (event["status"] if event["msg"] is None else str(event["msg"])))
    return "\n".join(errors) or f"Return code {rc} is non-zero"


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
) -> dict:
    """Pin `image` (or drop the pin: an empty `image`, `file_image`, or state absent) and run
    `docker compose up --detach --no-deps --pull missing -- <service>` and `ps`, or `down -- <service>`.

    `project_dir` is expanded already (an Ansible `path`). Under check mode no pin is written and compose runs with
    `--dry-run`. Returns `changed`, `container_id` (empty with state absent), `exists` (the pin file), `pins` and
    `diff` (the pin file before and after). With the compose `project`'s name (a capture knows it), the container
    is found by its labels with `docker ps`, a fifth of the time `docker compose ps` takes to read the project.
    """
    project_dir = os.path.abspath(project_dir)
    pin_path = os.path.join(project_dir, pin_file)
    if not os.path.isdir(project_dir):
        raise StepError(f'"{project_dir}" is not a directory')

    pinned = state == "present" and image and image != file_image
    try:
        before, after, existed = update_pin(pin_path, service, image if pinned else None, check_mode)
    except (OSError, ValueError) as error:
        raise StepError(f"cannot update image pins in {pin_path}: {error}") from None
    pin_changed = after != before
    exists = os.path.exists(pin_path)
    result = {
        "exists": exists,
        "pins": after,
        "diff": {"before": render(before) if existed else "", "after": render(after) if existed or pin_changed else ""},
    }

    files = [compose_file, *([pin_file] if exists else [])]
    for name in files:
        if not os.path.exists(os.path.join(project_dir, name)):
            raise StepError(f'Cannot find Compose file "{name}" relative to project directory "{project_dir}"')
    compose = [docker.binary, "compose", "--ansi", "never", "--progress", "json", "--project-directory", project_dir]
    compose += [argument for name in files for argument in ("--file", name)]
    timeout = ["--timeout", str(stop_timeout)]
    dry_run = ["--dry-run"] if check_mode else []
    if state == "present":
        up = ["up", "--detach", "--no-color", "--quiet-pull", "--pull", "missing", "--no-deps"]
        command = [*compose, *up, *timeout, *dry_run, "--", service]
    else:
        command = [*compose, "down", *timeout, *dry_run, "--", service]
    rc, stdout, stderr = docker.run_argv(command, cwd=project_dir)
    events = parse_events(stderr)
    for event in events:
        if event["status"] == "Warning" or (event["status"] is None and event["msg"] is not None):
            docker.warn(f"Docker compose: {event['type']} {event['id']}: {event['msg']}")
    if rc != 0:
        raise StepError(
            error_message(events, rc), cmd=shlex.join(command), rc=rc, stdout=stdout, stderr=stderr, **result
        )
    changed = pin_changed or has_changes(events)

    container_id = ""
    if state == "present" and project:
        container_id = service_container(docker, project, service).get("ID", "")
    elif state == "present":
        rc, stdout, stderr = docker.run_argv(
            [*compose, "ps", "--format", "json", "--all", "--no-trunc"], cwd=project_dir
        )
        if rc != 0:
            raise StepError(error_message(parse_events(stderr), rc), rc=rc, stdout=stdout, stderr=stderr)
        containers = [json.loads(line) for line in stdout.splitlines() if line.strip()]
        container_id = next((entry["ID"] for entry in containers if entry.get("Service") == service), "")
    return {"changed": changed, "container_id": container_id, **result}
