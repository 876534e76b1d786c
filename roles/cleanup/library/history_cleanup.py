#!/usr/bin/python
"""Stamp the running image as the newest of a service's history and remove what the history no longer needs."""

from __future__ import annotations

DOCUMENTATION = r"""
module: history_cleanup
short_description: Keep the newest previous images of a service's history and remove the others
description:
  - Reads the service's history (C(<history_repository>:<stamp>-<short id>), see the capture_state role) and every
    container, running or not, in one go.
  - Stamps O(current_image_id) as the newest entry (a tag C(<stamp>-<short id>)), unless it is already.
  - Each image keeps one tag in the history, its newest; older ones are removed as tags, the images stay.
  - Keeps O(keep_images) previous images, newest stamp first, and removes the older ones by ID with every tag.
  - Never removes an image a container uses, nor a tag a container was created from. An image that another
    service keeps in its own history only loses this service's tags.
  - Runs the C(docker) CLI, which honours C(DOCKER_HOST) from the environment.
options:
  history_repository:
    description: Repository of the service's history tags, from capture_state.
    type: str
    required: true
  current_image_id:
    description: Image ID the service runs now.
    type: str
    required: true
  previous_image_id:
    description: Image ID the deploy replaced; first among images of equal stamp (tags of the older form).
    type: str
    default: ""
  keep_images:
    description: How many previous images to keep for rollback.
    type: int
    default: 1
  stamp:
    description: UTC C(%Y%m%dT%H%M%S%f) for the running image's new tag; the role passes the controller's clock.
    type: str
    required: true
attributes:
  check_mode:
    support: full
"""

RETURN = r"""
removed:
  description: Previous images removed, or untagged where another service keeps them (IDs).
  type: list
  elements: str
  returned: success
kept:
  description: Previous images kept (IDs).
  type: list
  elements: str
  returned: success
"""

from ansible.module_utils.deploy_docker import run_step_module
from ansible.module_utils.deploy_history import cleanup

ARGUMENT_SPEC = {
    "history_repository": {"type": "str", "required": True},
    "current_image_id": {"type": "str", "required": True},
    "previous_image_id": {"type": "str", "default": ""},
    "keep_images": {"type": "int", "default": 1},
    "stamp": {"type": "str", "required": True},
}


def main() -> None:
    run_step_module(ARGUMENT_SPEC, cleanup, renamed={"history_repository": "repository"})


if __name__ == "__main__":
    main()
