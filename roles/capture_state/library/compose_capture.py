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

import json
import os
import re
from datetime import datetime

from ansible.module_utils.basic import AnsibleModule

STAMPED_TAG = re.compile(r"^([0-9]{8}T[0-9]{12})-[0-9a-f]{12}$")


def history_repository(prefix: str, project: str, service: str) -> str:
    """`<prefix>/<project>/<service>`, the service's name made a valid repository path component."""
    component = re.sub(r"^-|-$", "", re.sub(r"[^a-z0-9]+", "-", service.lower()))
    return f"{prefix}/{project}/{component}"


def cli_time(text: str) -> int:
    """Epoch seconds of the CLI's `CreatedAt` (`2006-01-02 15:04:05 -0700 MST`), as the Engine API counts them."""
    return int(datetime.strptime(" ".join(text.split()[:3]), "%Y-%m-%d %H:%M:%S %z").timestamp())


def json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


# The cleanup role's module reads the history the same way; a role's module_utils/ is on Ansible's path only once
# that role is loaded, so the few lines are repeated there rather than shared.
def read_history(rows: list[dict], repository: str) -> list[dict]:
    """One entry per image, newest first, from `docker images --format json` rows (one per tag).

    A tag `<stamp>-<short id>` says when the image last became current for this service; an image's newest tag
    counts. A tag without a stamp (the older `<short id>` form) reads as the oldest; among those, the image built
    last comes first.
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
        history.append({"id": image["id"], "stamp": newest["stamp"], "ref": newest["ref"], "created": image["created"]})
    return sorted(history, key=lambda entry: (entry["stamp"], entry["created"]), reverse=True)


def newest_container(rows: list[dict]) -> dict:
    """The container created last; among containers of the same second, the one the engine lists last."""
    return sorted(rows, key=lambda row: cli_time(row["CreatedAt"]))[-1] if rows else {}


class Docker:
    """The docker CLI, with the module's environment (DOCKER_HOST included)."""

    def __init__(self, module: AnsibleModule):
        self.module = module
        self.binary = module.get_bin_path("docker", required=True)

    def run(self, *args: str, cwd: str | None = None) -> tuple[int, str, str]:
        return self.module.run_command([self.binary, *args], cwd=cwd)

    def output(self, *args: str) -> str:
        rc, stdout, stderr = self.run(*args)
        if rc != 0:
            self.module.fail_json(msg=f"docker {' '.join(args[:2])} failed: {stderr.strip()}", rc=rc, stderr=stderr)
        return stdout


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "project_dir": {"type": "str", "required": True},
            "compose_file": {"type": "str", "default": "docker-compose.yml"},
            "service": {"type": "str", "required": True},
            "history_prefix": {"type": "str", "default": "deploy-history"},
            "stamp": {"type": "str", "required": True},
        },
        supports_check_mode=True,
    )
    params = module.params
    docker = Docker(module)
    service = params["service"]

    config_args = ["compose", "-f", params["compose_file"], "config", "--format", "json"]
    project_dir = os.path.expanduser(os.path.expandvars(params["project_dir"]))
    rc, stdout, stderr = docker.run(*config_args, cwd=project_dir)
    if rc != 0:
        # As ansible.builtin.command reports it, which this step used to be.
        module.fail_json(msg="non-zero return code", rc=rc, stdout=stdout, stderr=stderr, cmd=["docker", *config_args])
    project = json.loads(stdout)
    if service not in (project.get("services") or {}):
        module.fail_json(msg=f"Service '{service}' is not defined in {params['project_dir']}/{params['compose_file']}")

    repository = history_repository(params["history_prefix"], project["name"], service)
    containers = json_lines(
        docker.output(
            "ps",
            "--all",
            "--no-trunc",
            "--filter",
            f"label=com.docker.compose.project={project['name']}",
            "--filter",
            f"label=com.docker.compose.service={service}",
            "--format",
            "{{json .}}",
        )
    )
    tag_rows = json_lines(docker.output("images", "--no-trunc", "--format", "{{json .}}", repository))
    history = read_history(tag_rows, repository)

    container = newest_container(containers)
    image_id = (
        docker.output("inspect", "--type", "container", "--format", "{{.Image}}", container["ID"]).strip()
        if container
        else ""
    )
    entry = next((entry for entry in history if entry["id"] == image_id), None)
    if entry:
        history_ref = entry["ref"]
    elif container:
        history_ref = f"{repository}:{params['stamp']}-{image_id[7:19]}"
    else:
        history_ref = ""

    # The running image's tag in the history when it has one; else the tag that protects it from now on.
    changed = bool(image_id) and entry is None
    if changed and not module.check_mode:
        docker.output("tag", image_id, history_ref)

    module.exit_json(
        changed=changed,
        capture={
            "project": project["name"],
            "file_image": project["services"][service].get("image", ""),
            "container_id": container.get("ID", ""),
            "container_state": container.get("State", "absent"),
            "image_id": image_id,
            # The reference the container was created from, or its image ID once that reference names another image.
            "image": container.get("Image", ""),
            "history_repository": repository,
            "history_ref": history_ref,
            # As found, before this capture: the running image's new protecting tag is not in it.
            "history": history,
        },
    )


if __name__ == "__main__":
    main()
