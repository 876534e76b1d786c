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

import json
import re
from datetime import datetime

from ansible.module_utils.basic import AnsibleModule

STAMPED_TAG = re.compile(r"^([0-9]{8}T[0-9]{12})-[0-9a-f]{12}$")


def cli_time(text: str) -> int:
    """Epoch seconds of the CLI's `CreatedAt` (`2006-01-02 15:04:05 -0700 MST`), as the Engine API counts them."""
    return int(datetime.strptime(" ".join(text.split()[:3]), "%Y-%m-%d %H:%M:%S %z").timestamp())


def json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


# capture_state's module reads the history the same way; a role's module_utils/ is on Ansible's path only once that
# role is loaded, so the few lines are repeated here rather than shared.
def read_history(rows: list[dict], repository: str, previous_image_id: str) -> list[dict]:
    """One entry per image, newest first, from `docker images --format json` rows (one per tag).

    A tag `<stamp>-<short id>` says when the image last became current for this service; an image's newest tag
    counts. A tag without a stamp (the older `<short id>` form) reads as the oldest. Among equal stamps the image the
    deploy replaced comes first, then the one built last.
    """
    images: dict[str, dict] = {}
    for row in rows:
        if row.get("Tag") in (None, "", "<none>") or row.get("Repository") != repository:
            continue
        image = images.setdefault(row["ID"], {"id": row["ID"], "created": cli_time(row["CreatedAt"]), "tags": []})
        match = STAMPED_TAG.match(row["Tag"])
        image["tags"].append({"ref": f"{repository}:{row['Tag']}", "stamp": match.group(1) if match else ""})
    history = []
    for image in images.values():
        newest = max(image["tags"], key=lambda tag: (tag["stamp"], tag["ref"]))
        history.append(
            {
                "id": image["id"],
                "refs": [tag["ref"] for tag in image["tags"]],
                "ref": newest["ref"],
                "stamp": newest["stamp"],
                "replaced": image["id"] == previous_image_id,
                "created": image["created"],
            }
        )
    return sorted(history, key=lambda entry: (entry["stamp"], entry["replaced"], entry["created"]), reverse=True)


def plan(history: list[dict], current_image_id: str, keep_images: int, in_use: set[str]) -> tuple[bool, list[str]]:
    """Whether the running image needs a new stamp, and the previous images that go (beyond those kept, unused)."""
    current = next((entry for entry in history if entry["id"] == current_image_id), None)
    previous = [entry for entry in history if entry["id"] != current_image_id]
    # The running image must be the newest entry: it became current after every other one.
    newest_previous = max((entry["stamp"] for entry in previous), default="")
    restamp = current is None or current["stamp"] == "" or current["stamp"] < newest_previous
    going = [entry["id"] for rank, entry in enumerate(previous) if rank >= keep_images and entry["id"] not in in_use]
    return restamp, going


def removals(
    history: list[dict],
    current_image_id: str,
    restamp: bool,
    going: list[str],
    going_images: list[dict],
    in_use_refs: set[str],
    repository: str,
) -> list[tuple[str, bool]]:
    """What to remove, in order, as (name, force).

    An image kept keeps one tag in the history, its newest (the running image its new one), and any tag a container
    was created from. An image that goes is removed by ID with every tag, unless another service keeps it in its own
    history (a tag under the same prefix): then it only loses this service's tags. Inspected images carry all their
    tags (a listing filtered by repository shows only that repository's).
    """
    actions = []
    for entry in history:
        if entry["id"] in going:
            continue
        for tag in entry["refs"]:
            if tag in in_use_refs:
                continue
            if tag != entry["ref"] or (entry["id"] == current_image_id and restamp):
                actions.append((tag, False))
    own_prefix = f"{repository}:"
    any_history_prefix = f"{repository.split('/')[0]}/"
    for image in going_images:
        tags = image.get("RepoTags") or []
        own = [tag for tag in tags if tag.startswith(own_prefix)]
        shared = any(tag.startswith(any_history_prefix) and not tag.startswith(own_prefix) for tag in tags)
        actions.extend((tag, False) for tag in own) if shared else actions.append((image["Id"], True))
    return actions


class Docker:
    """The docker CLI, with the module's environment (DOCKER_HOST included)."""

    def __init__(self, module: AnsibleModule):
        self.module = module
        self.binary = module.get_bin_path("docker", required=True)

    def run(self, *args: str) -> tuple[int, str, str]:
        return self.module.run_command([self.binary, *args])

    def output(self, *args: str) -> str:
        rc, stdout, stderr = self.run(*args)
        if rc != 0:
            self.module.fail_json(msg=f"docker {' '.join(args[:2])} failed: {stderr.strip()}", rc=rc, stderr=stderr)
        return stdout

    def inspect(self, kind: str, names: list[str], template: str) -> str:
        """`docker inspect` of what still exists: a container or image removed since it was listed is left out."""
        if not names:
            return ""
        rc, stdout, stderr = self.run("inspect", "--type", kind, "--format", template, *names)
        if rc != 0 and any(line and "No such" not in line for line in stderr.splitlines()):
            self.module.fail_json(msg=f"docker inspect failed: {stderr.strip()}", rc=rc, stderr=stderr)
        return stdout

    def containers(self) -> tuple[set[str], set[str]]:
        """The image IDs every container uses, running or not, and the references they were created from."""
        listed = json_lines(self.output("ps", "--all", "--no-trunc", "--format", "{{json .}}"))
        image_ids = self.inspect("container", [container["ID"] for container in listed], "{{.Image}}")
        return set(image_ids.split()), {container["Image"] for container in listed}

    def remove(self, name: str, force: bool) -> bool:
        """Remove an image or a tag; whether there was one to remove."""
        rc, _, stderr = self.run("rmi", *(["--force"] if force else []), name)
        if rc == 0:
            return True
        if "No such image" in stderr:
            return False
        self.module.fail_json(msg=f"Error removing image {name} - {stderr.strip()}", rc=rc, stderr=stderr)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "history_repository": {"type": "str", "required": True},
            "current_image_id": {"type": "str", "required": True},
            "previous_image_id": {"type": "str", "default": ""},
            "keep_images": {"type": "int", "default": 1},
            "stamp": {"type": "str", "required": True},
        },
        supports_check_mode=True,
    )
    params = module.params
    repository, current_image_id = params["history_repository"], params["current_image_id"]
    docker = Docker(module)

    rows = json_lines(docker.output("images", "--no-trunc", "--format", "{{json .}}", repository))
    history = read_history(rows, repository, params["previous_image_id"])
    in_use, in_use_refs = docker.containers()
    restamp, going = plan(history, current_image_id, params["keep_images"], in_use)

    changed = restamp
    if restamp and not module.check_mode:
        docker.output("tag", current_image_id, f"{repository}:{params['stamp']}-{current_image_id[7:19]}")
    going_images = json_lines(docker.inspect("image", going, "{{json .}}"))
    for name, force in removals(history, current_image_id, restamp, going, going_images, in_use_refs, repository):
        # Every name was read just now: in check mode each counts as a removal.
        removed = True if module.check_mode else docker.remove(name, force)
        changed = changed or removed

    previous = [entry["id"] for entry in history if entry["id"] != current_image_id]
    module.exit_json(changed=changed, removed=going, kept=[image_id for image_id in previous if image_id not in going])


if __name__ == "__main__":
    main()
