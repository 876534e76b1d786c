"""playbooks/rollback.yml: back to the previous kept image, or a named one, with the deploy's own checks."""

from __future__ import annotations

import pytest
from conftest import ROLLBACK_PLAYBOOK, fingerprint, image, image_id, service

pytestmark = pytest.mark.usefixtures("registry")


def test_rollback_goes_back_to_the_previous_image_and_then_forth(compose_project):
    project = compose_project({"app": service(image("healthy", "v1"))}, {"app": {"keep_images": 2}})
    project.up()
    for version in ("v2", "v3"):
        assert project.deploy("app", image("healthy", version)).rc == 0

    back = project.deploy("app", playbook=ROLLBACK_PLAYBOOK)

    assert back.rc == 0, back.stdout
    container = project.container("app")
    assert container["Image"] == image_id(image("healthy", "v2"))
    assert container["State"]["Health"]["Status"] == "healthy"
    assert back.result["old_image"] == image("healthy", "v3")
    # The image's own name when it has exactly one, else the history tag that names it by ID.
    assert back.result["new_image"] in (
        image("healthy", "v2"),
        f"deploy-history/{project.name}/app:{container['Image'][7:19]}",
    )
    assert back.result["steps"][1]["detail"].startswith("Not pulled")

    forth = project.deploy("app", playbook=ROLLBACK_PLAYBOOK)

    assert forth.rc == 0, forth.stdout
    assert project.container("app")["Image"] == image_id(image("healthy", "v3")), "what ran before is v3 again"


def test_rollback_follows_what_ran_last_when_a_version_is_deployed_again(compose_project):
    project = compose_project({"app": service(image("healthy", "v1"))}, {"app": {"keep_images": 3}})
    project.up()
    for version in ("v2", "v3", "v1", "v2"):
        assert project.deploy("app", image("healthy", version)).rc == 0

    back = project.deploy("app", playbook=ROLLBACK_PLAYBOOK)

    assert back.rc == 0, back.stdout
    assert project.container("app")["Image"] == image_id(image("healthy", "v1"))


def test_rollback_to_a_named_image(compose_project):
    project = compose_project({"app": service(image("healthy", "v1"))})
    project.up()
    assert project.deploy("app", image("healthy", "v3")).rc == 0

    named = project.deploy("app", image("healthy", "v2"), playbook=ROLLBACK_PLAYBOOK)

    assert named.rc == 0, named.stdout
    assert project.container("app")["Image"] == image_id(image("healthy", "v2"))


def test_rollback_without_history_refuses_and_touches_nothing(compose_project):
    project = compose_project({"app": service(image("healthy", "v1"))})
    project.up()
    before = fingerprint(project.container("app"))

    completed = project.playbook_cli("-e", "service=app", playbook=ROLLBACK_PLAYBOOK)

    assert completed.returncode != 0
    assert "No previous image of app is kept" in completed.stdout
    assert fingerprint(project.container("app")) == before
