#!/usr/bin/python
"""Capture what one compose service runs, read its history, and protect the running image: one round trip."""

from __future__ import annotations

DOCUMENTATION = r"""
module: compose_capture
short_description: Record what a compose service runs, read its history, and protect the running image
description:
  - Reads the compose project with C(docker compose config) (its C(name:) key, else the directory's name) and the
    image the compose file names for O(service).
  - Finds the service's newest container by its compose labels, also when it is stopped.
  - Reads the service's history, the repository C(<history_prefix>/<project>/<service>) whose tags
    C(<stamp>-<short id>) say when each image last became current; a tag C(<short id>) (the older form) reads as
    the oldest.
  - When the running image has no tag in the history, tags it C(<stamp>-<short id>) so that pruning cannot remove
    the image a rollback needs.
  - Runs the C(docker) CLI, which honours C(DOCKER_HOST) from the environment.
options:
  project_dir:
    description: Directory that holds the compose file.
    type: str
    required: true
  compose_file:
    description: Compose file, relative to O(project_dir).
    type: str
    default: docker-compose.yml
  service:
    description: Compose service to capture.
    type: str
    required: true
  history_prefix:
    description: Repository prefix of the services' histories.
    type: str
    default: deploy-history
  stamp:
    description: UTC C(%Y%m%dT%H%M%S%f) for a new history tag; the role passes the controller's clock.
    type: str
    required: true
attributes:
  check_mode:
    support: full
"""

RETURN = r"""
capture:
  description: >-
    C(project), C(file_image), C(container_id), C(container_state), C(image_id), C(image), C(history_repository),
    C(history_ref) and C(history) (newest first, each with C(id), C(stamp), C(ref), C(created)), as the capture_state
    role's README describes them.
  type: dict
  returned: success
"""

from ansible.module_utils.deploy_docker import run_step_module
from ansible.module_utils.deploy_history import capture_state

ARGUMENT_SPEC = {
    "project_dir": {"type": "str", "required": True},
    "compose_file": {"type": "str", "default": "docker-compose.yml"},
    "service": {"type": "str", "required": True},
    "history_prefix": {"type": "str", "default": "deploy-history"},
    "stamp": {"type": "str", "required": True},
}


def main() -> None:
    run_step_module(ARGUMENT_SPEC, capture_state)


if __name__ == "__main__":
    main()
