#!/usr/bin/python
"""Read an image, point a reference at it, and read the image a container runs: the rollback's own docker work."""

from __future__ import annotations

DOCUMENTATION = r"""
module: rollback_image
short_description: Read an image, optionally point a reference at it, optionally read the image a container runs
description:
  - Reads O(image) (an ID or a reference) as C(docker image inspect) reports it.
  - With O(tag), points that reference at O(image), which must exist; changed only when the reference named another
    image (or none).
  - With O(container), also reads the image ID that container runs.
  - Runs the C(docker) CLI, which honours C(DOCKER_HOST) from the environment.
options:
  image:
    description: Image ID or reference.
    type: str
    required: true
  tag:
    description: Reference to point at O(image); empty for none.
    type: str
    default: ""
  container:
    description: Container whose image ID to read; empty for none.
    type: str
    default: ""
attributes:
  check_mode:
    support: full
"""

RETURN = r"""
images:
  description: O(image) as C(docker image inspect) reports it, in a list; empty when the host lacks it.
  type: list
  elements: dict
  returned: success
container_exists:
  description: Whether O(container) exists.
  type: bool
  returned: success
container_image_id:
  description: The image ID O(container) runs; empty when it does not exist or none was asked for.
  type: str
  returned: success
"""

from ansible.module_utils.deploy_docker import run_step_module
from ansible.module_utils.deploy_image import rollback_image

ARGUMENT_SPEC = {
    "image": {"type": "str", "required": True},
    "tag": {"type": "str", "default": ""},
    "container": {"type": "str", "default": ""},
}


def main() -> None:
    run_step_module(ARGUMENT_SPEC, rollback_image)


if __name__ == "__main__":
    main()
