"""The deploy playbook against a real engine, compose v2 and a loopback registry.

Every assertion about an outcome reads the engine (container and image IDs, state, start
time), not the playbook's own words; the published result is checked against the engine.
"""

from __future__ import annotations

import hashlib

import pytest
from conftest import build_unique, fingerprint, image_exists, push_as, service

from tests.support.apiserver import free_port
from tests.support.dockercli import REGISTRY, docker, image, image_id

pytestmark = pytest.mark.usefixtures("registry")

STEPS_OK = ["preflight", "capture_state", "pull_image", "compose_up", "health_check", "cleanup"]


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_success_runs_exactly_the_requested_image(compose_project):
    project = compose_project({"app": service(image("healthy", "v1")), "other": service(image("plain", "v1"))})
    project.up()
    project.wait_healthy("app")
    other_before = fingerprint(project.container("other"))
    old_id = image_id(image("healthy", "v1"))

    deploy = project.deploy("app", image("healthy", "v2"))

    assert deploy.rc == 0, deploy.stdout
    container = project.container("app")
    assert container["Image"] == image_id(image("healthy", "v2"))
    assert container["State"]["Health"]["Status"] == "healthy"
    assert fingerprint(project.container("other")) == other_before
    result = deploy.result
    assert result["success"] is True and result["outcome"] == "succeeded"
    assert result["message"] == "Deployment successful"
    assert (result["old_image"], result["old_image_id"]) == (image("healthy", "v1"), old_id)
    assert (result["new_image"], result["new_image_id"]) == (image("healthy", "v2"), container["Image"])
    assert deploy.steps == STEPS_OK
    # Progress (api/contract.py) announced each step that ran, from the module's results; never a rollback.
    assert deploy.announced == STEPS_OK
    assert all(step["success"] for step in result["steps"])
    # The replaced image stays, protected by a history tag, for a rollback; the running image is the newest entry.
    history = project.history("app")
    assert [entry.image_id for entry in history] == [container["Image"], old_id]
    assert all(entry.stamp for entry in history)


@pytest.mark.parametrize(
    ("broken", "error", "log_line"),
    [
        ("crash", "Container is restarting", "fatal: configuration file /etc/app.conf not found"),
        ("unhealthy", "Container is unhealthy", "waiting for a database that never comes"),
        ("dies", "Container is restarting", "panic: lost connection to queue"),
    ],
    ids=["exits-at-start", "never-healthy", "no-healthcheck-dies"],
)
def test_failed_start_or_health_rolls_back_to_captured_image(compose_project, broken, error, log_line):
    previous = "plain" if broken == "dies" else "healthy"
    project = compose_project({"app": service(image(previous, "v1"))}, {"app": {"health_timeout": 30}})
    project.up()
    before = project.container("app")

    deploy = project.deploy("app", image(broken, "v1"))

    assert deploy.rc != 0
    container = project.container("app")
    assert container["Image"] == before["Image"] == image_id(image(previous, "v1"))
    assert container["Id"] != before["Id"], "the broken image must have been started and replaced"
    assert container["State"]["Running"] and not container["State"]["Restarting"]
    if previous == "healthy":
        assert container["State"]["Health"]["Status"] == "healthy"
    result = deploy.result
    assert result["success"] is False and result["outcome"] == "rolled_back"
    assert result["error"].startswith(error)
    assert log_line in result["logs"]
    assert deploy.steps == ["preflight", "capture_state", "pull_image", "compose_up", "health_check", "rollback"]
    assert deploy.announced == deploy.steps, "the rollback is announced because the failed result named it next"
    assert [step["success"] for step in result["steps"]] == [True, True, True, True, False, True]
    # The operator's compose file names the previous image, so no pin is left behind.
    assert "app" not in project.pin_file.read_text()


def test_moved_latest_tag_rolls_back_by_image_id(compose_project):
    project = compose_project({}, {})
    latest = f"{project.name}-repo/app:latest"
    remote = f"{image('healthy').rsplit('/deploytest', 1)[0]}/{latest}"
    good_id = push_as(image("healthy", "v1"), remote)
    project.compose_file.write_text(
        f"name: {project.name}\nservices:\n  app:\n    image: {remote}\n    init: true\n    restart: unless-stopped\n"
    )
    project.write_inventory({"localhost": {"deploy_compose_dir": str(project.dir), "deploy_services": {"app": {}}}})
    project.up()
    project.wait_healthy("app")
    broken_id = push_as(image("crash", "v1"), remote)
    docker("tag", good_id, remote)  # the host still has the good image under the tag, as before the push

    deploy = project.deploy("app")  # no image: re-pull what the compose file names

    assert deploy.rc != 0
    assert deploy.result["new_image_id"] == broken_id
    container = project.container("app")
    assert container["Image"] == good_id
    assert container["State"]["Health"]["Status"] == "healthy"
    assert image_id(remote) == good_id, "the tag points at the captured image again"
    assert deploy.result["outcome"] == "rolled_back"


def test_pull_failure_touches_nothing(compose_project):
    project = compose_project({"app": service(image("healthy", "v1"))})
    project.up()
    project.wait_healthy("app")
    before = project.container("app")

    deploy = project.deploy("app", image("healthy", "does-not-exist"))

    assert deploy.rc != 0
    after = project.container("app")
    assert fingerprint(after) == fingerprint(before)
    assert after["RestartCount"] == before["RestartCount"]
    assert deploy.result["outcome"] == "failed"
    assert deploy.steps == ["preflight", "capture_state", "pull_image"]
    assert deploy.result["steps"][-1]["success"] is False
    assert "Nothing was changed" in deploy.stdout
    assert not project.pin_file.exists()


def test_failed_first_deploy_leaves_no_container(compose_project):
    project = compose_project({"app": service(image("healthy", "v1"))}, {"app": {"health_timeout": 20}})

    deploy = project.deploy("app", image("crash", "v1"))

    assert deploy.rc != 0
    assert project.container("app") is None
    result = deploy.result
    assert result["outcome"] == "failed"
    assert result["old_image"] is None
    rollback = result["steps"][-1]
    assert rollback["step"] == "rollback" and rollback["rolled_back"] is False
    assert rollback["detail"].startswith("Nothing to roll back to")
    assert "app" not in project.pin_file.read_text()


def test_second_run_with_same_image_changes_nothing(compose_project):
    project = compose_project({"app": service(image("healthy", "v1"))})
    project.up()
    first = project.deploy("app", image("healthy", "v2"))
    assert first.rc == 0, first.stdout
    assert first.changed > 0
    before = project.container("app")

    second = project.deploy("app", image("healthy", "v2"))

    assert second.rc == 0, second.stdout
    assert second.changed == 0
    assert second.result["changed"] is False
    assert fingerprint(project.container("app")) == fingerprint(before)
    assert second.announced == second.steps == STEPS_OK, "one round trip, each step announced once"


def test_compose_file_is_never_rewritten_and_the_choice_survives(compose_project):
    project = compose_project({"app": service(image("healthy", "v1"))})
    project.up()
    compose_digest = digest(project.compose_file)

    deploy = project.deploy("app", image("healthy", "v2"))

    assert deploy.rc == 0, deploy.stdout
    assert digest(project.compose_file) == compose_digest
    deployed = project.container("app")
    both = ("docker-compose.yml", "docker-compose.deploy.yml")
    # The operator's own `up -d` with the pin file (README) keeps the container as it is.
    project.compose("up", "-d", files=both)
    assert fingerprint(project.container("app")) == fingerprint(deployed)
    # A container lost and created again (a host rebuilt after a reboot) comes back on the chosen image.
    project.compose("rm", "--stop", "--force", "app", files=both)
    assert project.container("app") is None
    project.compose("up", "-d", files=both)
    assert project.container("app")["Image"] == image_id(image("healthy", "v2"))
    # Deploying without an image goes back to what the compose file names, and drops the pin.
    back = project.deploy("app")
    assert back.rc == 0, back.stdout
    assert project.container("app")["Image"] == image_id(image("healthy", "v1"))
    assert "app" not in project.pin_file.read_text()
    assert digest(project.compose_file) == compose_digest


def test_unknown_service_is_refused_before_anything_is_touched(compose_project):
    project = compose_project(
        {"app": service(image("healthy", "v1")), "other": service(image("plain", "v1"))}, {"app": {}, "other": {}}
    )
    project.up()
    before = fingerprint(project.container("app"))

    completed = project.playbook_cli("-e", "service=ghost")

    assert completed.returncode != 0
    assert "Service 'ghost' not allowed. Allowed: app, other" in completed.stdout
    assert fingerprint(project.container("app")) == before
    assert not project.pin_file.exists()


def test_invalid_or_foreign_image_is_refused(compose_project):
    project = compose_project(
        {"app": service(image("healthy", "v1"))}, {"app": {"image_repository": [f"{REGISTRY}/deploytest/healthy"]}}
    )
    project.up()
    before = fingerprint(project.container("app"))

    invalid = project.playbook_cli("-e", "service=app", "-e", "image=UPPER/Case:bad tag")
    # By hand as by the API: the pin holds wherever the deploy comes from.
    foreign = project.playbook_cli("-e", "service=app", "-e", f"image={image('crash', 'v1')}")

    assert invalid.returncode != 0
    assert "is not a valid image reference" in invalid.stdout
    assert foreign.returncode != 0
    assert f"Image '{image('crash', 'v1')}' is not allowed for service 'app'." in foreign.stdout
    assert f"Allowed repositories: {REGISTRY}/deploytest/healthy" in foreign.stdout
    assert fingerprint(project.container("app")) == before


def test_check_mode_reports_and_changes_nothing(compose_project):
    project = compose_project({"app": service(image("healthy", "v1"))})
    project.up()
    before = project.container("app")

    deploy = project.deploy("app", image("healthy", "v2"), check=True)

    assert deploy.rc == 0, deploy.stdout
    assert deploy.changed > 0, "check mode reports what would change"
    assert deploy.result["check_mode"] is True
    assert fingerprint(project.container("app")) == fingerprint(before)
    assert not project.pin_file.exists()


def test_failed_deploy_exits_non_zero_from_the_command_line(compose_project):
    project = compose_project({"app": service(image("healthy", "v1"))}, {"app": {"health_timeout": 20}})
    project.up()
    project.wait_healthy("app")

    completed = project.playbook_cli("-e", "service=app", "-e", f"image={image('crash', 'v1')}")

    assert completed.returncode == 2, completed.stdout
    assert "Rolled back to" in completed.stdout
    assert project.container("app")["Image"] == image_id(image("healthy", "v1"))


def test_every_host_by_default_and_limit_narrows(compose_project):
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
    v2 = image_id(image("healthy", "v2"))

    narrowed = first.deploy("app", image("healthy", "v2"), limit="beta")
    assert narrowed.rc == 0, narrowed.stdout
    assert set(narrowed.results) == {"beta"}
    assert first.container("app")["Image"] == image_id(image("healthy", "v1"))
    assert second.container("app")["Image"] == v2

    everywhere = first.deploy("app", image("healthy", "v2"))
    assert everywhere.rc == 0, everywhere.stdout
    assert set(everywhere.results) == {"alpha", "beta"}
    assert first.container("app")["Image"] == second.container("app")["Image"] == v2
    assert everywhere.results["beta"]["changed"] is False


def test_cleanup_keeps_previous_images_and_never_one_in_use(compose_project):
    project = compose_project({}, {})
    repo = f"{image('healthy').rsplit('/deploytest', 1)[0]}/{project.name}-repo/app"
    ids = {version: build_unique(f"{repo}:{version}") for version in ("v1", "v2", "v3", "v4")}
    project.compose_file.write_text(
        f"name: {project.name}\nservices:\n"
        f"  app:\n    image: {repo}:v1\n    init: true\n"
        f"  pinned:\n    image: {repo}:v2\n    init: true\n"
    )
    project.write_inventory(
        {"localhost": {"deploy_compose_dir": str(project.dir), "deploy_services": {"app": {"keep_images": 1}}}}
    )
    project.up()

    for version in ("v2", "v3", "v4"):
        deploy = project.deploy("app", f"{repo}:{version}")
        assert deploy.rc == 0, deploy.stdout

    assert project.container("app")["Image"] == ids["v4"]
    assert image_exists(ids["v3"]), "the image just replaced is kept for rollback"
    assert not image_exists(ids["v1"]), "an image beyond keep_images is removed"
    assert image_exists(ids["v2"]), "an image a container uses is never removed"
    assert project.container("pinned")["Image"] == ids["v2"]


@pytest.mark.parametrize(
    ("path", "outcome"),
    [("/version", "succeeded"), ("/plain-v1", "rolled_back"), ("/missing", "rollback_failed")],
    ids=["answers-2xx", "new-image-404", "both-404"],
)
def test_health_url_is_probed_from_the_target_host(compose_project, path, outcome):
    port = free_port()
    ports = {"ports": [f"127.0.0.1:{port}:8080"]}
    project = compose_project(
        {"app": service(image("plain", "v1"), **ports)},
        {"app": {"health_url": f"http://127.0.0.1:{port}{path}", "health_timeout": 5}},
    )
    project.up()

    deploy = project.deploy("app", image("plain", "v2"))

    assert deploy.result["outcome"] == outcome
    container = project.container("app")
    assert container["State"]["Running"], "the service is never left stopped"
    if outcome == "succeeded":
        assert deploy.rc == 0, deploy.stdout
        assert container["Image"] == image_id(image("plain", "v2"))
        return
    assert deploy.rc != 0
    assert container["Image"] == image_id(image("plain", "v1"))
    assert deploy.result["error"].startswith(f"Health URL http://127.0.0.1:{port}{path} did not answer 2xx")
    rollback = deploy.result["steps"][-1]
    assert rollback["step"] == "rollback"
    assert rollback["success"] is (outcome == "rolled_back")


def test_cleanup_leaves_an_image_another_service_keeps_for_rollback(compose_project):
    first = compose_project({}, {})
    repo = f"{image('healthy').rsplit('/deploytest', 1)[0]}/{first.name}-repo/app"
    ids = {version: build_unique(f"{repo}:{version}") for version in ("u1", "u2", "u3")}
    other = compose_project({"app": service(f"{repo}:u1")})
    other.up()
    assert other.deploy("app", f"{repo}:u2").rc == 0  # the other service now keeps u1 for its rollback
    first.compose_file.write_text(f"name: {first.name}\nservices:\n  app:\n    image: {repo}:u1\n    init: true\n")
    first.write_inventory(
        {"localhost": {"deploy_compose_dir": str(first.dir), "deploy_services": {"app": {"keep_images": 1}}}}
    )
    first.up()

    for version in ("u2", "u3"):
        deploy = first.deploy("app", f"{repo}:{version}")
        assert deploy.rc == 0, deploy.stdout

    assert image_exists(ids["u1"]), "another service still keeps u1"
    assert ids["u1"] in [entry.image_id for entry in other.history("app")]
    assert [entry.image_id for entry in first.history("app")] == [ids["u3"], ids["u2"]], "this service let u1 go"
