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

from ansible.module_utils.basic import AnsibleModule


def image_id(module: AnsibleModule, docker: str, name: str) -> str:
    """The ID the host's image of that name has; empty when there is none."""
    rc, stdout, stderr = module.run_command([docker, "image", "inspect", "--format", "{{.Id}}", name])
    if rc == 0:
        return stdout.strip()
    if "No such image" in stderr:
        return ""
    module.fail_json(msg=f"Error inspecting image {name} - {stderr.strip()}", rc=rc, stderr=stderr)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "pull": {"type": "bool", "default": True},
            "platform": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    name = module.params["name"]
    docker = module.get_bin_path("docker", required=True)

    before = image_id(module, docker, name)
    if not module.params["pull"]:
        if not before:
            module.fail_json(msg=f"Image {name} is not on the host, and pulling is off for this service")
        module.exit_json(changed=False, image_id=before)
    if module.check_mode:
        # Only the registry knows whether the tag moved: a pull is reported as a change.
        module.exit_json(changed=True, image_id=before)

    platform = ["--platform", module.params["platform"]] if module.params["platform"] else []
    rc, _, stderr = module.run_command([docker, "pull", "--quiet", *platform, name])
    if rc != 0:
        module.fail_json(msg=f"Error pulling image {name} - {stderr.strip()}", rc=rc, stderr=stderr)
    after = image_id(module, docker, name)
    module.exit_json(changed=after != before, image_id=after)


if __name__ == "__main__":
    main()
