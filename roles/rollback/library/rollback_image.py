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

import json

from ansible.module_utils.basic import AnsibleModule


class Docker:
    """The docker CLI, with the module's environment (DOCKER_HOST included)."""

    def __init__(self, module: AnsibleModule):
        self.module = module
        self.binary = module.get_bin_path("docker", required=True)

    def inspect(self, kind: str, name: str) -> dict | None:
        rc, stdout, stderr = self.module.run_command([self.binary, "inspect", "--type", kind, name])
        if rc == 0:
            return json.loads(stdout)[0]
        if "No such" in stderr:
            return None
        self.module.fail_json(msg=f"Error inspecting {kind} {name} - {stderr.strip()}", rc=rc, stderr=stderr)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "image": {"type": "str", "required": True},
            "tag": {"type": "str", "default": ""},
            "container": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    params = module.params
    docker = Docker(module)

    image = docker.inspect("image", params["image"])
    changed = False
    if params["tag"]:
        if image is None:
            module.fail_json(msg=f"Cannot find image {params['image']}")
        tagged = docker.inspect("image", params["tag"])
        changed = tagged is None or tagged["Id"] != image["Id"]
        if changed and not module.check_mode:
            rc, _, stderr = module.run_command([docker.binary, "tag", image["Id"], params["tag"]])
            if rc != 0:
                module.fail_json(msg=f"Error: failed to tag image as {params['tag']} - {stderr.strip()}", rc=rc)

    container = docker.inspect("container", params["container"]) if params["container"] else None
    module.exit_json(
        changed=changed,
        images=[image] if image else [],
        container_exists=container is not None,
        container_image_id=container["Image"] if container else "",
    )


if __name__ == "__main__":
    main()
