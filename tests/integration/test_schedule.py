"""Planned deploys and the registry watch on the real engine and registry: a deploy signed now to run a few seconds
later runs then, once, through the same steps as any other, and its record says when it was planned and what started
it. A watched service deploys an image pushed under its compose file's tag within one polling interval, nothing while
the registry holds what runs, and rolls a crash image back by itself, once."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from conftest import push_as, service

from tests.support.apiserver import ApiServer, serving
from tests.support.dockercli import REGISTRY, docker, image, image_id

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


# The watch's polling interval in these tests; the default is 300 s.
WATCH_INTERVAL = 3


def push_under(source: str, tag: str) -> tuple[str, float]:
    """Push `source` as `tag`, then drop the local tag, so that only the registry knows what `tag` names: the watch
    must ask it. The image ID, and when the push ended."""
    docker("pull", "-q", source)
    pushed = push_as(source, tag)
    pushed_at = time.time()
    docker("image", "rm", tag)
    return pushed, pushed_at


def watch_records(server: ApiServer) -> list[dict]:
    return [item for item in server.get("/deployments", service="portal").json()["items"] if item["trigger"] == "watch"]


def until(what: str, check, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.2)
    return found


def test_a_watched_tag_deploys_what_is_pushed_within_an_interval_and_rolls_back_a_crash_once(
    compose_project, api_server
):
    tag = f"{REGISTRY}/deploytest/watched-{uuid.uuid4().hex[:8]}:stable"
    first, _ = push_under(image("healthy", "v1"), tag)
    project = compose_project(
        {"portal": service(tag)},
        {"portal": {"health_timeout": 20, "schedule": {"watch": True, "interval": WATCH_INTERVAL}}},
    )
    project.up()
    server = api_server(project)
    skipped = {
        reason: lambda reason=reason: server.metric(
            "deployer_skipped_deployments_total", service="portal", reason=reason
        )
        for reason in ("unchanged", "failed_before", "watch_failed")
    }

    # The registry holds what runs: looks, and no deploy.
    until("a look that found the running image", lambda: (skipped["unchanged"]() or 0) >= 1)
    assert watch_records(server) == [] and skipped["watch_failed"]() == 0
    assert project.container("portal")["Image"] == first

    # A push under the tag: deployed, from a tick within one interval of the push.
    second, pushed_at = push_under(image("healthy", "v2"), tag)
    (record,) = until("a watch deploy of the push", lambda: watch_records(server))
    record = server.follow(record["id"], until=lambda seen: seen["outcome"] not in ("scheduled", "running"))[-1]
    assert record["outcome"] == "succeeded", record
    assert moment(record["planned_at"]).timestamp() <= pushed_at + WATCH_INTERVAL, (record["planned_at"], pushed_at)
    assert record["message"].startswith(f"watch: {tag} is {second[7:19]} in the registry"), record["message"]
    assert project.container("portal")["Image"] == second != first

    # A crash image under the tag: deployed, rolled back to the one before, and not deployed again.
    crash, _ = push_under(image("crash", "v1"), tag)
    records = until("a watch deploy of the crash image", lambda: watch_records(server)[1:] and watch_records(server))
    crashed = server.follow(records[0]["id"], until=lambda seen: seen["outcome"] not in ("scheduled", "running"))[-1]
    assert crashed["outcome"] == "rolled_back", crashed
    assert crashed["new_image_id"] == crash
    assert project.container("portal")["Image"] == second
    until("a look that found the image rolled back", lambda: (skipped["failed_before"]() or 0) >= 1)
    assert len(watch_records(server)) == 2, "the crash image was deployed once"
    assert project.container("portal")["Image"] == second
