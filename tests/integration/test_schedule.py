"""Planned deploys on the real engine: a deploy signed now to run a few seconds later runs then, once, through the
same steps as any other, and its record says when it was planned and what started it."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from conftest import service

from tests.support.apiserver import serving
from tests.support.dockercli import image, image_id

pytestmark = pytest.mark.usefixtures("registry")


@pytest.fixture
def api_server(tmp_path):
    yield from serving(tmp_path)


def moment(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def test_a_deploy_planned_seconds_ahead_runs_at_its_time_once_and_is_recorded(compose_project, api_server):
    project = compose_project({"portal": service(image("healthy", "v1"))}, {"portal": {"health_timeout": 30}})
    project.up()
    server = api_server(project)
    before = project.container("portal")
    planned = (datetime.now(UTC) + timedelta(seconds=4)).replace(microsecond=0)

    accepted = server.post(
        {"service": "portal", "image": image("healthy", "v2"), "at": planned.isoformat(), "timestamp": int(time.time())}
    )

    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert (body["status"], moment(body["at"])) == ("scheduled", planned)
    assert accepted.headers["Location"] == body["status_url"] == f"/deployments/{body['deployment_id']}"
    waiting = server.record(body["deployment_id"])
    assert (waiting["outcome"], waiting["trigger"], moment(waiting["planned_at"])) == ("scheduled", "webhook", planned)
    assert project.container("portal")["Id"] == before["Id"], "nothing runs before its time"

    seen = server.follow(body["deployment_id"], until=lambda record: record["outcome"] not in ("scheduled", "running"))

    record = seen[-1]
    assert record["outcome"] == "succeeded", record
    assert moment(record["started_at"]) >= planned, "it started at its time, not before"
    assert moment(record["started_at"]) - planned < timedelta(seconds=5), "and soon after it"
    assert [step["step"] for step in record["steps"]][:2] == ["preflight", "capture_state"]
    assert project.container("portal")["Image"] == image_id(image("healthy", "v2"))
    listed = server.get("/deployments", service="portal").json()["items"]
    assert [item["id"] for item in listed] == [body["deployment_id"]], "one record: it ran once"
