"""Progress as the API follows it (api/contract.py): the steps announced are the steps that ran, read from the deploy
module's results through the real runner, never from task names; a normal deploy never announces a rollback."""

from __future__ import annotations

import pytest
from conftest import service

from tests.support.dockercli import image, image_id

pytestmark = pytest.mark.usefixtures("registry")

DEPLOY = ["capture_state", "pull_image", "compose_up", "health_check", "cleanup"]


def test_each_step_that_ran_is_announced_once_and_only_a_failure_announces_the_rollback(compose_project):
    project = compose_project({"app": service(image("healthy", "v1"))})
    project.up()
    project.wait_healthy("app")

    changed = project.deploy("app", image("healthy", "v2"))
    unchanged = project.deploy("app", image("healthy", "v2"))
    failed = project.deploy("app", image("crash", "v1"))
    rollback = project.rollback("app")

    assert [changed.result["outcome"], unchanged.result["outcome"]] == ["succeeded", "succeeded"]
    assert changed.announced == changed.steps == DEPLOY
    assert unchanged.announced == unchanged.steps == DEPLOY, "one round trip, every step announced once"
    assert failed.result["outcome"] == "rolled_back"
    assert failed.announced == failed.steps == ["capture_state", "pull_image", "compose_up", "health_check", "rollback"]
    assert rollback.announced == rollback.steps == ["capture_state", "choose_image", *DEPLOY[1:]]
    # What the engine runs, after all four: the rollback brought back v1, by its image ID.
    assert project.container("app")["Image"] == image_id(image("healthy", "v1"))
