#!/usr/bin/python
"""Pull an image, always asking the registry, and report its image ID: one round trip."""

from __future__ import annotations

DOCUMENTATION = r"""
module: image_pull
short_description: Pull an image, always asking the registry, and report its image ID
description:
  - Pulls even when an image of that name is present, so a moved tag (C(latest) pushed again) is seen. Changed only
    when the name now points to another image ID.
  - With O(pull=false), pulls nothing and fails when the host lacks the image.
  - Runs the C(docker) CLI, which honours C(DOCKER_HOST) from the environment.
options:
  name:
    description: Image reference, C(repository[:tag]) or C(repository@sha256:digest).
    type: str
    required: true
  pull:
    description: V(false) for an image built on the host; it must be there already, and nothing is pulled.
    type: bool
    default: true
  platform:
    description: Platform to ask for, for example C(linux/arm64); empty for the engine's own.
    type: str
    default: ""
attributes:
  check_mode:
    support: full
    details: Pulls nothing; reports a pull as a change, and the image ID the host has now (empty when it has none).
"""

RETURN = r"""
image_id:
  description: The image ID the name points to after the task; empty under check mode when the host lacks the image.
  type: str
  returned: success
"""

from ansible.module_utils.deploy_docker import run_step_module
from ansible.module_utils.deploy_image import pull_image

ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True},
    "pull": {"type": "bool", "default": True},
    "platform": {"type": "str", "default": ""},
}


def main() -> None:
    run_step_module(ARGUMENT_SPEC, pull_image)


if __name__ == "__main__":
    main()
