"""A service's history and the two steps that keep it: capture_state reads it and protects the running image,
cleanup stamps the image a deploy made current and removes what the history no longer needs.

The history is the repository `<prefix>/<project>/<service>`, whose tags `<stamp>-<short image id>` say when each
image last became current for this service (`<stamp>` is UTC `%Y%m%dT%H%M%S%f`, so the tags sort by time). A tag in
the older form `<short image id>` reads as the oldest entry.
"""

from __future__ import annotations

import re
from typing import Any, TypedDict

from ansible.module_utils.deploy_compose import Project, read_project, service_config
from ansible.module_utils.deploy_docker import (
    Docker,
    StepError,
    cli_cause,
    cli_error,
    cli_time,
    json_lines,
    service_container,
)

STAMPED_TAG = re.compile(r"^([0-9]{8}T[0-9]{12})-[0-9a-f]{12}$")


class HistoryEntry(TypedDict):
    """One image of a service's history: its ID, `stamp` (empty for a tag without one), `ref` (its newest tag) and
    `created` (epoch seconds)."""

    id: str
    stamp: str
    ref: str
    created: int


class ListedEntry(HistoryEntry):
    """A history entry as cleanup reads it: every tag it has in the history, and whether a deploy replaced it."""

    refs: list[str]
    replaced: bool


class Capture(TypedDict):
    """What capture_state found: the compose project and file, the service's container and the image it runs, and
    the service's history."""

    project: str
    project_dir: str
    compose_file: str
    file_image: str
    container_id: str
    container_state: str
    image_id: str
    image: str
    history_repository: str
    history_ref: str
    history: list[HistoryEntry]


class CaptureResult(TypedDict):
    """What capture_state returns."""

    changed: bool
    capture: Capture


class CleanupResult(TypedDict):
    """What cleanup returns: image IDs removed and kept."""

    changed: bool
    removed: list[str]
    kept: list[str]


def history_repository(prefix: str, project: str, service: str) -> str:
    """`<prefix>/<project>/<service>`, the service's name made a valid repository path component."""
    component = re.sub(r"^-|-$", "", re.sub(r"[^a-z0-9]+", "-", service.lower()))
    return f"{prefix}/{project}/{component}"


def read_history(rows: list[dict[str, Any]], repository: str, previous_image_id: str = "") -> list[ListedEntry]:
    """One entry per image, newest first, from `docker images --format json` rows (one per tag).

    A tag `<stamp>-<short id>` says when the image last became current for this service; an image's newest tag
    counts. A tag without a stamp (the older `<short id>` form) reads as the oldest. Among equal stamps the image a
    deploy replaced (`previous_image_id`) comes first, then the one built last.

    Each entry: `id`, `stamp`, `ref` (the newest tag), `created`, and for cleanup `refs` (every tag) and `replaced`.
    """
    images: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.get("Tag") in (None, "", "<none>") or row.get("Repository") != repository:
            continue
        image = images.setdefault(row["ID"], {"id": row["ID"], "created": cli_time(row["CreatedAt"]), "tags": []})
        match = STAMPED_TAG.match(row["Tag"])
        image["tags"].append({"ref": f"{repository}:{row['Tag']}", "stamp": match.group(1) if match else ""})
    history: list[ListedEntry] = []
    for image in images.values():
        newest = max(image["tags"], key=lambda tag: (tag["stamp"], tag["ref"]))
        history.append(
            {
                "id": image["id"],
                "stamp": newest["stamp"],
                "ref": newest["ref"],
                "created": image["created"],
                "refs": [tag["ref"] for tag in image["tags"]],
                "replaced": image["id"] == previous_image_id,
            }
        )
    return sorted(history, key=lambda entry: (entry["stamp"], entry["replaced"], entry["created"]), reverse=True)


def list_history(docker: Docker, repository: str, previous_image_id: str = "") -> list[ListedEntry]:
    listing = docker.output(
        "images", "--no-trunc", "--format", "{{json .}}", repository, what=f"Listing the images of {repository}"
    )
    return read_history(
        json_lines(listing),
        repository,
        previous_image_id,
    )


def capture_state(
    docker: Docker,
    project_dir: str,
    compose_file: str,
    service: str,
    history_prefix: str,
    stamp: str,
    check_mode: bool,
    read: Project | None = None,
) -> CaptureResult:
    """What the service runs, its history, and a protecting tag for a running image the history lacks.

    `project_dir` may hold `~` and `$VAR`, expanded here. An empty `compose_file` is found as `docker compose` finds
    it (deploy_compose.find_compose_file: the first of compose.yaml, compose.yml, docker-compose.yml,
    docker-compose.yaml in the directory, else in the nearest directory above it that has one). An override file
    compose would add to a file it found (compose.override.yml...) is not read, with a warning: compose_up names the
    file it found, and compose reads no override then.

    Returns `changed` and `capture` (what the later steps read of it), which names the compose file
    read (`compose_file`, relative to `project_dir`) and `project_dir` (expanded, absolute). `read`: the project as
    an earlier step of the same round trip read it (read_project), not read again.
    """
    found = read or read_project(docker, project_dir, compose_file)
    project_dir, compose_file, project = found["project_dir"], found["compose_file"], found["config"]
    settings = service_config(found, service)

    repository = history_repository(history_prefix, project["name"], service)
    history = list_history(docker, repository)

    container = service_container(docker, project["name"], service)
    image_id = (
        docker.output(
            "inspect",
            "--type",
            "container",
            "--format",
            "{{.Image}}",
            container["ID"],
            what=f"Inspecting container {container['ID']}",
        ).strip()
        if container
        else ""
    )
    entry = next((entry for entry in history if entry["id"] == image_id), None)
    if entry:
        history_ref = entry["ref"]
    elif container:
        history_ref = f"{repository}:{stamp}-{image_id[7:19]}"
    else:
        history_ref = ""

    # The running image's tag in the history when it has one; else the tag that protects it from now on.
    changed = bool(image_id) and entry is None
    if changed and not check_mode:
        docker.output("tag", image_id, history_ref, what=f"Tagging {image_id} as {history_ref}")

    return {
        "changed": changed,
        "capture": {
            "project": project["name"],
            "project_dir": project_dir,
            "compose_file": compose_file,
            "file_image": settings.get("image", ""),
            "container_id": container.get("ID", ""),
            "container_state": container.get("State", "absent"),
            "image_id": image_id,
            # The reference the container was created from, or its image ID once that reference names another image.
            "image": container.get("Image", ""),
            "history_repository": repository,
            "history_ref": history_ref,
            # As found, before this capture: the running image's new protecting tag is not in it.
            "history": [
                {"id": entry["id"], "stamp": entry["stamp"], "ref": entry["ref"], "created": entry["created"]}
                for entry in history
            ],
        },
    }


def plan(
    history: list[ListedEntry], current_image_id: str, keep_images: int, in_use: set[str]
) -> tuple[bool, list[str]]:
    """Whether the running image needs a new stamp, and the previous images that go (beyond those kept, unused)."""
    current = next((entry for entry in history if entry["id"] == current_image_id), None)
    previous = [entry for entry in history if entry["id"] != current_image_id]
    # The running image must be the newest entry: it became current after every other one.
    newest_previous = max((entry["stamp"] for entry in previous), default="")
    restamp = current is None or current["stamp"] == "" or current["stamp"] < newest_previous
    going = [entry["id"] for rank, entry in enumerate(previous) if rank >= keep_images and entry["id"] not in in_use]
    return restamp, going


def removals(
    history: list[ListedEntry],
    current_image_id: str,
    restamp: bool,
    going: list[str],
    going_images: list[dict[str, Any]],
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


def inspect_existing(docker: Docker, kind: str, names: list[str], template: str) -> str:
    """`docker inspect` of what still exists: a container or image removed since it was listed is left out."""
    if not names:
        return ""
    args = ("inspect", "--type", kind, "--format", template, *names)
    rc, stdout, stderr = docker.run(*args)
    # The cause is read from the other lines: one of them says why the whole command failed.
    other_errors = "\n".join(line for line in stderr.splitlines() if line.strip() and "No such" not in line)
    if rc != 0 and other_errors:
        cause = cli_cause(other_errors, rc)
        raise StepError(
            f"Inspecting {len(names)} {kind}(s) failed: {cause}", rc=rc, stderr=stderr, cmd=[docker.binary, *args]
        )
    return stdout


def containers_in_use(docker: Docker) -> tuple[set[str], set[str]]:
    """The image IDs every container uses, running or not, and the references they were created from."""
    listed = json_lines(docker.output("ps", "--all", "--no-trunc", "--format", "{{json .}}"))
    image_ids = inspect_existing(docker, "container", [container["ID"] for container in listed], "{{.Image}}")
    return set(image_ids.split()), {container["Image"] for container in listed}


def remove_image(docker: Docker, name: str, force: bool) -> bool:
    """Remove an image or a tag; whether there was one to remove."""
    args = ("rmi", *(["--force"] if force else []), name)
    rc, _, stderr = docker.run(*args)
    if rc == 0:
        return True
    if "No such image" in stderr:
        return False
    raise cli_error(f"Removing image {name} failed", [docker.binary, *args], rc, stderr)


def cleanup(
    docker: Docker,
    repository: str,
    current_image_id: str,
    previous_image_id: str,
    keep_images: int,
    stamp: str,
    check_mode: bool,
) -> CleanupResult:
    """Stamp the running image as the newest of the history, keep `keep_images` previous images, remove the rest.

    Returns `changed`, `removed` and `kept` (image IDs).
    """
    history = list_history(docker, repository, previous_image_id)
    in_use, in_use_refs = containers_in_use(docker)
    restamp, going = plan(history, current_image_id, keep_images, in_use)

    changed = restamp
    if restamp and not check_mode:
        docker.output("tag", current_image_id, f"{repository}:{stamp}-{current_image_id[7:19]}")
    going_images = json_lines(inspect_existing(docker, "image", going, "{{json .}}"))
    for name, force in removals(history, current_image_id, restamp, going, going_images, in_use_refs, repository):
        # Every name was read just now: in check mode each counts as a removal.
        removed = True if check_mode else remove_image(docker, name, force)
        changed = changed or removed

    previous = [entry["id"] for entry in history if entry["id"] != current_image_id]
    return {"changed": changed, "removed": going, "kept": [image_id for image_id in previous if image_id not in going]}
