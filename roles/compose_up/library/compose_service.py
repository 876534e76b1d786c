#!/usr/bin/python
"""Pin one compose service to an image in an override file and start it, or remove it: one round trip."""

from __future__ import annotations

DOCUMENTATION = r"""
module: compose_service
short_description: Pin one compose service's image in an override file, and start or remove only that service
description:
  - Keeps a compose override file that holds only C(services.<name>.image) entries, so the
    operator's own compose file is never rewritten and an operator's
    C(docker compose -f <file> -f <override> up -d) keeps the image a deploy chose.
  - The file is written as JSON (valid YAML, readable by compose) under an exclusive lock on
    its directory and replaced atomically, so deploys of different services in the same
    project never lose each other's pins.
  - With O(state=present), pins O(image) (or drops the pin when O(image) is empty or O(file_image)), then runs
    C(docker compose up --detach --no-deps --pull missing -- <service>) with the compose file and, when it exists,
    the override file, and reads the service's container.
  - With O(state=absent), drops the service's pin and runs C(docker compose down -- <service>).
  - Runs the C(docker) CLI, which honours C(DOCKER_HOST) from the environment.
options:
  project_dir:
    description: Directory that holds the compose file.
    type: path
    required: true
  compose_file:
    description: Compose file, relative to O(project_dir).
    type: str
    default: docker-compose.yml
  pin_file:
    description: Override file with the pins, relative to O(project_dir).
    type: str
    required: true
  service:
    description: The compose service.
    type: str
    required: true
  image:
    description: Image to run; empty for the compose file's. Only with O(state=present).
    type: str
    default: ""
  file_image:
    description: The image the compose file names; pinning it drops the pin instead.
    type: str
    default: ""
  stop_timeout:
    description: Seconds the old container gets to stop.
    type: int
    default: 10
  state:
    description: V(present) pins and starts the service, V(absent) drops its pin and removes its container.
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    support: full
    details: Writes no pin and runs compose with C(--dry-run).
  diff_mode:
    support: full
    details: The pin file before and after.
"""

RETURN = r"""
container_id:
  description: The service's container after C(up) (its current one under check mode); empty with O(state=absent).
  type: str
  returned: success
exists:
  description: Whether the override file exists after the task (in check mode, whether it exists now).
  type: bool
  returned: always
pins:
  description: Every pinned service and its image after the task.
  type: dict
  returned: always
"""

import fcntl
import json
import os
import shlex
import tempfile

from ansible.module_utils.basic import AnsibleModule

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


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "project_dir": {"type": "path", "required": True},
            "compose_file": {"type": "str", "default": "docker-compose.yml"},
            "pin_file": {"type": "str", "required": True},
            "service": {"type": "str", "required": True},
            "image": {"type": "str", "default": ""},
            "file_image": {"type": "str", "default": ""},
            "stop_timeout": {"type": "int", "default": 10},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        },
        supports_check_mode=True,
    )
    params = module.params
    project_dir = os.path.abspath(params["project_dir"])
    service = params["service"]
    pin_path = os.path.join(project_dir, params["pin_file"])
    if not os.path.isdir(project_dir):
        module.fail_json(msg=f'"{project_dir}" is not a directory')

    image = params["image"]
    pinned = params["state"] == "present" and image and image != params["file_image"]
    try:
        before, after, existed = update_pin(pin_path, service, image if pinned else None, module.check_mode)
    except (OSError, ValueError) as error:
        module.fail_json(msg=f"cannot update image pins in {pin_path}: {error}")
    pin_changed = after != before
    exists = os.path.exists(pin_path)
    result = {
        "exists": exists,
        "pins": after,
        "diff": {"before": render(before) if existed else "", "after": render(after) if existed or pin_changed else ""},
    }

    files = [params["compose_file"], *([params["pin_file"]] if exists else [])]
    for name in files:
        if not os.path.exists(os.path.join(project_dir, name)):
            module.fail_json(msg=f'Cannot find Compose file "{name}" relative to project directory "{project_dir}"')
    docker = module.get_bin_path("docker", required=True)
    compose = [docker, "compose", "--ansi", "never", "--progress", "json", "--project-directory", project_dir]
    compose += [argument for name in files for argument in ("--file", name)]
    timeout = ["--timeout", str(params["stop_timeout"])]
    dry_run = ["--dry-run"] if module.check_mode else []
    if params["state"] == "present":
        up = ["up", "--detach", "--no-color", "--quiet-pull", "--pull", "missing", "--no-deps"]
        command = [*compose, *up, *timeout, *dry_run, "--", service]
    else:
        command = [*compose, "down", *timeout, *dry_run, "--", service]
    rc, stdout, stderr = module.run_command(command, cwd=project_dir)
    events = parse_events(stderr)
    for event in events:
        if event["status"] == "Warning" or (event["status"] is None and event["msg"] is not None):
            module.warn(f"Docker compose: {event['type']} {event['id']}: {event['msg']}")
    if rc != 0:
        module.fail_json(
            msg=error_message(events, rc), cmd=shlex.join(command), rc=rc, stdout=stdout, stderr=stderr, **result
        )
    changed = pin_changed or has_changes(events)

    container_id = ""
    if params["state"] == "present":
        rc, stdout, stderr = module.run_command(
            [*compose, "ps", "--format", "json", "--all", "--no-trunc"], cwd=project_dir
        )
        if rc != 0:
            module.fail_json(msg=error_message(parse_events(stderr), rc), rc=rc, stdout=stdout, stderr=stderr)
        containers = [json.loads(line) for line in stdout.splitlines() if line.strip()]
        container_id = next((entry["ID"] for entry in containers if entry.get("Service") == service), "")
    module.exit_json(changed=changed, container_id=container_id, **result)


if __name__ == "__main__":
    main()
