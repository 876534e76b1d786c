#!/usr/bin/python
"""Pin one compose service to an image in a compose override file, leaving the operator's file alone."""

from __future__ import annotations

DOCUMENTATION = r"""
module: compose_image_pin
short_description: Pin or unpin the image of one compose service in an override file
description:
  - Keeps a compose override file that holds only C(services.<name>.image) entries, so the
    operator's own compose file is never rewritten and an operator's
    C(docker compose -f <file> -f <override> up -d) keeps the image a deploy chose.
  - The file is written as JSON (valid YAML, readable by compose) under an exclusive lock on
    its directory and replaced atomically, so deploys of different services in the same
    project never lose each other's pins.
options:
  path:
    description: The override file.
    type: path
    required: true
  service:
    description: The compose service.
    type: str
    required: true
  image:
    description: Image reference to pin; required with O(state=present).
    type: str
  state:
    description: V(present) pins the service to O(image), V(absent) removes its pin.
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
"""

RETURN = r"""
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
import tempfile

from ansible.module_utils.basic import AnsibleModule

HEADER_KEY = "x-deploy"
HEADER = (
    "Written by the deploy playbook: images chosen by deploys that differ from the compose file. "
    "Use it with: docker compose -f <compose file> -f <this file> up -d"
)


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


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "service": {"type": "str", "required": True},
            "image": {"type": "str"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        },
        required_if=[("state", "present", ["image"])],
        supports_check_mode=True,
    )
    path = module.params["path"]
    image = module.params["image"] if module.params["state"] == "present" else None
    try:
        before, after, existed = update_pin(path, module.params["service"], image, module.check_mode)
    except (OSError, ValueError) as error:
        module.fail_json(msg=f"cannot update image pins in {path}: {error}")

    changed = after != before
    module.exit_json(
        changed=changed,
        exists=os.path.exists(path),
        pins=after,
        diff={"before": render(before) if existed else "", "after": render(after) if existed or changed else ""},
    )


if __name__ == "__main__":
    main()
