"""Images: the pull_image step, and the rollback's reading and re-pointing of an image."""

from __future__ import annotations

import json

from ansible.module_utils.deploy_docker import Docker, StepError


def image_id(docker: Docker, name: str) -> str:
    """The ID the host's image of that name has; empty when there is none."""
    rc, stdout, stderr = docker.run("image", "inspect", "--format", "{{.Id}}", name)
    if rc == 0:
        return stdout.strip()
    if "No such image" in stderr:
        return ""
    raise StepError(f"Error inspecting image {name} - {stderr.strip()}", rc=rc, stderr=stderr)


def pull_image(docker: Docker, name: str, pull: bool, platform: str, check_mode: bool) -> dict:
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

    rc, _, stderr = docker.run("pull", "--quiet", *(["--platform", platform] if platform else []), name)
    if rc != 0:
        raise StepError(f"Error pulling image {name} - {stderr.strip()}", rc=rc, stderr=stderr)
    after = image_id(docker, name)
    return {"changed": after != before, "image_id": after}


def inspect(docker: Docker, kind: str, name: str) -> dict | None:
    """`docker inspect` of one image or container; None when the host has none of that name."""
    rc, stdout, stderr = docker.run("inspect", "--type", kind, name)
    if rc == 0:
        return json.loads(stdout)[0]
    if "No such" in stderr:
        return None
    raise StepError(f"Error inspecting {kind} {name} - {stderr.strip()}", rc=rc, stderr=stderr)


def rollback_image(docker: Docker, image: str, tag: str, container: str, check_mode: bool) -> dict:
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
            rc, _, stderr = docker.run("tag", found["Id"], tag)
            if rc != 0:
                raise StepError(f"Error: failed to tag image as {tag} - {stderr.strip()}", rc=rc)

    running = inspect(docker, "container", container) if container else None
    return {
        "changed": changed,
        "images": [found] if found else [],
        "container_exists": running is not None,
        "container_image_id": running["Image"] if running else "",
    }
