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

from ansible.module_utils.deploy_compose import compose_service
from ansible.module_utils.deploy_docker import run_step_module

ARGUMENT_SPEC = {
    "project_dir": {"type": "path", "required": True},
    "compose_file": {"type": "str", "default": "docker-compose.yml"},
    "pin_file": {"type": "str", "required": True},
    "service": {"type": "str", "required": True},
    "image": {"type": "str", "default": ""},
    "file_image": {"type": "str", "default": ""},
    "stop_timeout": {"type": "int", "default": 10},
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
}


def main() -> None:
    run_step_module(ARGUMENT_SPEC, compose_service)


if __name__ == "__main__":
    main()
