"""Images: the pull_image step, and the rollback's reading and re-pointing of an image."""

from __future__ import annotations

import json
from typing import Any, TypedDict

from ansible.module_utils.deploy_docker import Docker, StepError, cli_error


class PullResult(TypedDict):
    """What pull_image returns."""

    changed: bool
    image_id: str


class RollbackImageResult(TypedDict):
    """What rollback_image returns: `images` holds the `docker inspect` of the image read, when there is one."""

    changed: bool
    images: list[dict[str, Any]]
    container_exists: bool
    container_image_id: str


def image_id(docker: Docker, name: str) -> str:
    """The ID the host's image of that name has; empty when there is none."""
    args = ("image", "inspect", "--format", "{{.Id}}", name)
    rc, stdout, stderr = docker.run(*args)
    if rc == 0:
        return stdout.strip()
    if "No such image" in stderr:
        return ""
    raise cli_error(f"Inspecting image {name} failed", [docker.binary, *args], rc, stderr)


def pull_image(docker: Docker, name: str, pull: bool, platform: str, check_mode: bool) -> PullResult:
    """Pull `name`, always asking the registry (a moved tag is seen), or find it on the host when `pull` is off.

    Returns `changed` (the name points to another image ID now; under check mode, any pull) and `image_id` (empty
    under check mode when the host lacks the image).
    """
    before = image_id(docker, name)
    if not pull:
        if not before:
            raise StepError(f"Image {name} is not on the host, and pulling is off for this service")
        return {"changed": False, "image_id": before}
    if check_mode:
        # Only the registry knows whether the tag moved: a pull is reported as a change.
        return {"changed": True, "image_id": before}

    args = ("pull", "--quiet", *(["--platform", platform] if platform else []), name)
    rc, _, stderr = docker.run(*args)
    if rc != 0:
        raise cli_error(f"Pulling {name} failed", [docker.binary, *args], rc, stderr)
    after = image_id(docker, name)
    return {"changed": after != before, "image_id": after}


def inspect(docker: Docker, kind: str, name: str) -> dict[str, Any] | None:
    """`docker inspect` of one image or container; None when the host has none of that name."""
    args = ("inspect", "--type", kind, name)
    rc, stdout, stderr = docker.run(*args)
    if rc == 0:
        found: list[dict[str, Any]] = json.loads(stdout)
        return found[0]
    if "No such" in stderr:
        return None
    raise cli_error(f"Inspecting {kind} {name} failed", [docker.binary, *args], rc, stderr)


def rollback_image(docker: Docker, image: str, tag: str, container: str, check_mode: bool) -> RollbackImageResult:
    """Read `image`; with `tag`, point that reference at it; with `container`, read the image ID it runs.

    Returns `changed` (the reference named another image, or none), `images`, `container_exists` and
    `container_image_id`.
    """
    found = inspect(docker, "image", image)
    changed = False
    if tag:
        if found is None:
            raise StepError(f"Cannot find image {image}")
        tagged = inspect(docker, "image", tag)
        changed = tagged is None or tagged["Id"] != found["Id"]
        if changed and not check_mode:
            args = ("tag", found["Id"], tag)
            rc, _, stderr = docker.run(*args)
            if rc != 0:
                raise cli_error(f"Tagging {image} ({found['Id']}) as {tag} failed", [docker.binary, *args], rc, stderr)

    running = inspect(docker, "container", container) if container else None
    return {
        "changed": changed,
        "images": [found] if found else [],
        "container_exists": running is not None,
        "container_image_id": running["Image"] if running else "",
    }
