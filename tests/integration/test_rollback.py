"""playbooks/rollback.yml: back to the service's previous image, or a named one, with the deploy's own checks.

What a service ran before is read from the engine (container and image IDs), and the order of a
service's history from its own tags, never from the playbook's words alone.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from conftest import ROLLBACK_PLAYBOOK, ComposeProject, build_unique, fingerprint, image_exists, service

from tests.support.apiserver import free_port
from tests.support.dockercli import docker, image, image_id

pytestmark = pytest.mark.usefixtures("registry")

STEPS_OK = ["preflight", "capture_state", "choose_image", "pull_image", "compose_up", "health_check", "cleanup"]


def unique_images(project: ComposeProject, *versions: str) -> tuple[str, dict[str, str]]:
    """Images no other test shares, in a repository of the project's own: (repository, {version: image ID})."""
    repo = f"{image('healthy').rsplit('/deploytest', 1)[0]}/{project.name}-repo/app"
    return repo, {version: build_unique(f"{repo}:{version}") for version in versions}


def run_on(project: ComposeProject, image_ref: str, settings: dict[str, Any] | None = None) -> None:
    """Point the project's `app` at image_ref in its compose file, allow it, and start it."""
    project.compose_file.write_text(yaml.safe_dump({"name": project.name, "services": {"app": service(image_ref)}}))
    project.write_inventory(
        {"localhost": {"deploy_compose_dir": str(project.dir), "deploy_services": {"app": settings or {}}}}
    )
    project.up()


def history_ids(project: ComposeProject, service_name: str = "app") -> list[str]:
    return [entry.image_id for entry in project.history(service_name)]


def test_rollback_goes_to_the_previous_image_and_a_second_one_goes_back_again(compose_project):
    project = compose_project({}, {})
    repo, ids = unique_images(project, "v1", "v2", "v3")
    run_on(project, f"{repo}:v1")
    for version in ("v2", "v3"):
        deploy = project.deploy("app", f"{repo}:{version}")
        assert deploy.rc == 0, deploy.stdout
        assert deploy.result["action"] == "deploy"
    assert history_ids(project) == [ids["v3"], ids["v2"]], "keep_images 1: v1 is gone"

    back = project.rollback("app")

    assert back.rc == 0, back.stdout
    container = project.container("app")
    assert container["Image"] == ids["v2"]
    assert container["State"]["Health"]["Status"] == "healthy"
    result = back.result
    assert (result["action"], result["outcome"], result["success"]) == ("rollback", "succeeded", True)
    assert result["message"] == "Rollback successful"
    assert (result["old_image"], result["old_image_id"]) == (f"{repo}:v3", ids["v3"])
    # The image's own name, not its history tag, and not pulled: the host has it.
    assert (result["new_image"], result["new_image_id"]) == (f"{repo}:v2", ids["v2"])
    assert back.steps == back.announced == STEPS_OK
    assert result["steps"][3]["detail"].startswith("Not pulled (on the host already)")
    # The image we left is now the newest previous one.
    assert history_ids(project) == [ids["v2"], ids["v3"]], "one tag per image, the one we left newest"

    again = project.rollback("app")

    assert again.rc == 0, again.stdout
    assert project.container("app")["Image"] == ids["v3"]
    assert (again.result["old_image_id"], again.result["new_image_id"]) == (ids["v2"], ids["v3"])
    assert history_ids(project) == [ids["v3"], ids["v2"]]


def test_rollback_to_a_named_older_image_pulls_what_the_host_lacks(compose_project):
    project = compose_project({}, {})
    repo, ids = unique_images(project, "v1", "v2", "v3")
    run_on(project, f"{repo}:v2")
    assert project.deploy("app", f"{repo}:v3").rc == 0
    docker("rmi", f"{repo}:v1")
    assert not image_exists(ids["v1"])

    named = project.rollback("app", f"{repo}:v1")

    assert named.rc == 0, named.stdout
    assert project.container("app")["Image"] == ids["v1"]
    result = named.result
    assert (result["action"], result["new_image"], result["new_image_id"]) == ("rollback", f"{repo}:v1", ids["v1"])
    assert named.steps == STEPS_OK
    assert result["steps"][2]["detail"] == f"Requested {repo}:v1, not on the host: pulling it"
    assert result["steps"][3]["detail"].startswith(f"Pulled {repo}:v1")
    assert history_ids(project) == [ids["v1"], ids["v3"]]


def test_rollback_to_a_named_image_the_host_has_does_not_pull_it(compose_project):
    project = compose_project({}, {})
    repo, ids = unique_images(project, "v1", "v2")
    run_on(project, f"{repo}:v2")
    # The registry's v1 is another image now: a rollback wants the host's.
    build_unique(f"{repo}:v1")
    docker("tag", ids["v1"], f"{repo}:v1")

    named = project.rollback("app", f"{repo}:v1")

    assert named.rc == 0, named.stdout
    assert project.container("app")["Image"] == ids["v1"]
    assert named.result["steps"][3]["detail"].startswith("Not pulled (on the host already)")


def test_rollback_without_a_previous_image_fails_and_touches_nothing(compose_project):
    project = compose_project({"app": service(image("healthy", "v1"))})
    project.up()
    project.wait_healthy("app")
    before = project.container("app")

    rollback = project.rollback("app")

    assert rollback.rc != 0
    after = project.container("app")
    assert fingerprint(after) == fingerprint(before)
    assert after["RestartCount"] == before["RestartCount"]
    assert not project.pin_file.exists()
    result = rollback.result
    assert (result["action"], result["outcome"], result["success"]) == ("rollback", "failed", False)
    assert result["message"] == "Rollback failed"
    assert result["error"] == "No previous image of app is kept on localhost"
    assert result["new_image"] is None
    assert rollback.steps == ["preflight", "capture_state", "choose_image"]
    assert result["steps"][-1]["success"] is False
    assert "Rollback of app failed at choose_image: No previous image of app is kept on localhost" in rollback.stdout


def test_history_order_belongs_to_each_service_when_images_are_shared(compose_project):
    # Two projects run the same three images, deployed in opposite orders and interleaved: when each image was
    # last tagged says nothing about one service's order.
    first = compose_project({}, {})
    second = compose_project({}, {})
    repo, ids = unique_images(first, "a", "b", "c")
    keep = {"keep_images": 2}
    run_on(first, f"{repo}:a", keep)
    run_on(second, f"{repo}:c", keep)
    for project, version in ((first, "b"), (second, "b"), (first, "c"), (second, "a")):
        deploy = project.deploy("app", f"{repo}:{version}")
        assert deploy.rc == 0, deploy.stdout
    assert history_ids(first) == [ids["c"], ids["b"], ids["a"]]
    assert history_ids(second) == [ids["a"], ids["b"], ids["c"]]

    assert first.rollback("app").rc == 0
    assert second.rollback("app").rc == 0

    assert first.container("app")["Image"] == ids["b"]
    assert second.container("app")["Image"] == ids["b"]
    assert history_ids(first) == [ids["b"], ids["c"], ids["a"]]
    assert history_ids(second) == [ids["b"], ids["a"], ids["c"]]


def test_previous_image_that_fails_its_health_check_is_rolled_back_to_what_ran_before(compose_project):
    port = free_port()
    # /plain-v2 exists in plain:v2 only: the previous image never answers the health URL.
    project = compose_project(
        {"app": service(image("plain", "v1"), ports=[f"127.0.0.1:{port}:8080"])},
        {"app": {"health_url": f"http://127.0.0.1:{port}/plain-v2", "health_timeout": 5}},
    )
    project.up()
    assert project.deploy("app", image("plain", "v2")).rc == 0
    v2 = image_id(image("plain", "v2"))

    rollback = project.rollback("app")

    assert rollback.rc != 0
    container = project.container("app")
    assert container["Image"] == v2
    assert container["State"]["Running"] and not container["State"]["Restarting"]
    result = rollback.result
    assert (result["action"], result["outcome"], result["success"]) == ("rollback", "rolled_back", False)
    assert result["message"] == "Rollback failed, restored the image that ran before"
    assert result["new_image_id"] == image_id(image("plain", "v1"))
    assert result["error"].startswith(f"Health URL http://127.0.0.1:{port}/plain-v2 did not answer 2xx")
    assert rollback.steps == [
        "preflight",
        "capture_state",
        "choose_image",
        "pull_image",
        "compose_up",
        "health_check",
        "rollback",
    ]
    assert result["steps"][-1]["rolled_back"] is True
    # No cleanup ran: the history is as it was, the image we came from still the newest.
    assert history_ids(project) == [v2, image_id(image("plain", "v1"))]


def test_history_tags_of_the_older_form_are_still_usable(compose_project):
    project = compose_project({}, {})
    repo, ids = unique_images(project, "v1", "v2")
    history_repo = f"deploy-history/{project.name}/app"
    for id_ in ids.values():
        docker("tag", id_, f"{history_repo}:{id_[7:19]}")  # as hosts deployed before stamps existed have them
    docker("rmi", f"{repo}:v1")  # v1 is known by its history tag only
    run_on(project, f"{repo}:v2")

    back = project.rollback("app")

    assert back.rc == 0, back.stdout
    container = project.container("app")
    assert container["Image"] == ids["v1"]
    assert back.result["new_image"] == f"{history_repo}:{ids['v1'][7:19]}"
    assert container["Config"]["Image"] == back.result["new_image"]
    # v1 is stamped now; the tag its container was created from stays while the container runs it.
    newest, *older = project.history("app")
    assert (newest.image_id, bool(newest.stamp)) == (ids["v1"], True)
    assert sorted((entry.image_id, entry.stamp) for entry in older) == sorted([(ids["v1"], ""), (ids["v2"], "")])
    # The operator's own `up -d` with the pin file keeps the container: the tag it names still exists.
    project.compose("up", "-d", files=("docker-compose.yml", "docker-compose.deploy.yml"))
    assert fingerprint(project.container("app")) == fingerprint(container)

    forth = project.rollback("app")

    assert forth.rc == 0, forth.stdout
    assert project.container("app")["Image"] == ids["v2"]
    assert forth.result["new_image"] == f"{repo}:v2"
    # Migrated: one stamped tag per image.
    assert [(entry.image_id, bool(entry.stamp)) for entry in project.history("app")] == [
        (ids["v2"], True),
        (ids["v1"], True),
    ]


def test_check_mode_reports_and_changes_nothing(compose_project):
    project = compose_project({}, {})
    repo, ids = unique_images(project, "v1", "v2")
    run_on(project, f"{repo}:v1")
    assert project.deploy("app", f"{repo}:v2").rc == 0
    before = project.container("app")
    history_before = project.history("app")
    pins_before = project.pin_file.read_text()

    rollback = project.rollback("app", check=True)

    assert rollback.rc == 0, rollback.stdout
    assert rollback.changed > 0, "check mode reports what would change"
    result = rollback.result
    assert (result["action"], result["check_mode"]) == ("rollback", True)
    assert (result["new_image"], result["new_image_id"]) == (f"{repo}:v1", ids["v1"])
    assert fingerprint(project.container("app")) == fingerprint(before)
    assert project.history("app") == history_before
    assert project.pin_file.read_text() == pins_before


def test_limit_narrows_the_rollback_to_one_host(compose_project):
    first = compose_project({"app": service(image("healthy", "v1"))})
    second = compose_project({"app": service(image("healthy", "v1"))})
    first.up()
    second.up()
    settings = {"app": {}}
    first.write_inventory(
        {
            "alpha": {"deploy_compose_dir": str(first.dir), "deploy_services": settings},
            "beta": {"deploy_compose_dir": str(second.dir), "deploy_services": settings},
        }
    )
    assert first.deploy("app", image("healthy", "v2")).rc == 0
    alpha_before = fingerprint(first.container("app"))

    narrowed = first.rollback("app", limit="beta")

    assert narrowed.rc == 0, narrowed.stdout
    assert set(narrowed.results) == {"beta"}
    assert second.container("app")["Image"] == image_id(image("healthy", "v1"))
    assert fingerprint(first.container("app")) == alpha_before


def test_unknown_service_and_invalid_image_are_refused(compose_project):
    project = compose_project({"app": service(image("healthy", "v1"))})
    project.up()
    before = fingerprint(project.container("app"))

    ghost = project.playbook_cli("-e", "service=ghost", playbook=ROLLBACK_PLAYBOOK)
    invalid = project.playbook_cli("-e", "service=app", "-e", "image=UPPER/Case:bad tag", playbook=ROLLBACK_PLAYBOOK)

    assert ghost.returncode != 0
    assert "Service 'ghost' not allowed. Allowed: app" in ghost.stdout
    assert invalid.returncode != 0
    assert "is not a valid image reference" in invalid.stdout
    assert fingerprint(project.container("app")) == before
    assert not project.pin_file.exists()
