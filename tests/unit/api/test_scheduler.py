"""Planned deploys (`at`), with a fake runner and the app's clock in the test's hands: a pass of the scheduler is run
with tick(), in the app's own event loop, so that no test waits for a time to come."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from clock import NOW
from fakerunner import FakeRunner
from fastapi.testclient import TestClient
from test_history import make_settings, read, signed_post, wait_for
from test_metrics import sample, scrape
from test_routes import SECRET

from api.main import create_app
from api.models import parse_at
from api.scheduler import BUSY_RETRY_SECONDS
from api.signature import sign

AT = "2027-01-15T09:00:00Z"  # an hour after NOW
AT_EPOCH = NOW + 3600


@pytest.fixture
def settings(tmp_path: Path):
    return make_settings(tmp_path)


def tick(client: TestClient) -> float | None:
    """One pass of the scheduler, in the app's event loop; the seconds until the next is due."""
    result: float | None = client.portal.call(client.app.state.scheduler.tick)
    return result


def plan(client: TestClient, at: str = AT, path: str = "/deploy", **fields):
    return signed_post(client, path, {"service": "portal", "at": at, **fields})


def cancel(client: TestClient, deployment_id: str, secret: str = SECRET, purpose: str = "cancel"):
    signature = sign(secret.encode(), deployment_id.encode(), purpose)
    return client.delete(f"/deployments/{deployment_id}", headers={"X-Hub-Signature-256": signature})


def record_of(client: TestClient, deployment_id: str) -> dict:
    return read(client, f"/deployments/{deployment_id}").json()


def deploys(fake_runner: FakeRunner) -> list[str]:
    return [call["extravars"]["service"] for call in fake_runner.calls if call["playbook"].name == "deploy.yml"]


def finished(record: dict) -> bool:
    return record["outcome"] not in ("scheduled", "running")


# Receipt.


def test_a_planned_deploy_answers_202_with_its_time_in_utc_and_runs_nothing_yet(client, fake_runner):
    response = plan(client, at="2027-01-15T10:00:00.750+01:00", image="ghcr.io/acme/portal:2")

    assert response.status_code == 202
    deployment_id = response.headers["X-Deployment-Id"]
    assert response.headers["Location"] == f"/deployments/{deployment_id}"
    assert response.json() == {
        "deployment_id": deployment_id,
        "service": "portal",
        "status": "scheduled",
        "at": AT,
        "status_url": f"/deployments/{deployment_id}",
    }
    record = record_of(client, deployment_id)
    assert (record["outcome"], record["planned_at"], record["trigger"]) == ("scheduled", AT, "webhook")
    assert (record["image"], record["finished_at"]) == ("ghcr.io/acme/portal:2", None)
    assert "signers" not in record, "internal"
    assert fake_runner.calls == []
    assert tick(client) == pytest.approx(AT_EPOCH - NOW)
    assert fake_runner.calls == []


def test_wait_is_ignored_for_a_planned_deploy_and_a_planned_rollback_is_one_too(client, fake_runner):
    assert plan(client, path="/deploy?wait=true").status_code == 202
    rollback = plan(client, path="/rollback", message="back")
    assert rollback.status_code == 202
    assert record_of(client, rollback.json()["deployment_id"])["action"] == "rollback"
    assert fake_runner.calls == []


def test_a_planned_deploy_claims_nothing_at_receipt(client, fake_runner):
    fake_runner.hold.add("portal")
    running = signed_post(client, "/deploy?wait=false", {"service": "portal"})
    assert fake_runner.entered.wait(10)

    assert plan(client).status_code == 202, "no 409 for a deploy planned while one runs"

    fake_runner.release.set()
    wait_for(client, running.json()["deployment_id"], finished)


@pytest.mark.parametrize(
    ("at", "detail"),
    [
        ("2027-01-15T08:00:00Z", "at 2027-01-15T08:00:00Z is in the past"),
        ("2027-01-15T07:59:59+00:00", "at 2027-01-15T07:59:59Z is in the past"),
        ("2027-04-15T08:00:01Z", "more than DEPLOY_SCHEDULE_HORIZON (7776000 s, 90 days) ahead"),
    ],
    ids=["now", "past", "beyond-horizon"],
)
def test_at_must_lie_ahead_within_the_horizon(client, fake_runner, at, detail):
    response = plan(client, at=at)

    assert response.status_code == 400
    assert detail in response.json()["detail"]
    (refused,) = read(client, "/deployments", outcome="rejected").json()["items"]
    assert refused["http_status"] == 400
    assert fake_runner.calls == []


def test_the_horizon_itself_is_accepted(client):
    assert plan(client, at="2027-04-15T08:00:00Z").status_code == 202


@pytest.mark.parametrize(
    ("at", "problem"),
    [
        ("2027-01-15T09:00:00", "without offset"),
        ("2027-01-15 09:00", "not an RFC 3339"),
        ("20270115T090000Z", "not an RFC 3339"),
        ("tomorrow", "not an RFC 3339"),
        ("2027-02-30T09:00:00Z", "not a valid date-time"),
        ("2027-01-15T09:00:00Z ", "not an RFC 3339"),
    ],
)
def test_a_naive_or_malformed_at_is_422_naming_it(client, fake_runner, at, problem):
    response = plan(client, at=at)

    assert response.status_code == 422
    (line,) = response.json()["detail"]
    assert line.startswith("at: ") and problem in line
    assert fake_runner.calls == []


def test_at_is_normalized_to_utc_seconds():
    assert parse_at("2027-01-15t10:00:00.999999z") == "2027-01-15T10:00:00Z"
    assert parse_at("2027-01-15 04:30:00-04:30") == "2027-01-15T09:00:00Z"
    with pytest.raises(ValueError, match="not a valid date-time"):
        parse_at("0001-01-01T00:00:00+01:00")


def test_an_unknown_field_is_422_naming_it_and_runs_nothing(client, fake_runner):
    response = signed_post(client, "/deploy", {"service": "portal", "when": "tonight"})

    assert response.status_code == 422
    assert response.json()["detail"] == ["when: Extra inputs are not permitted"]
    assert fake_runner.calls == []


# Running at its time.


def test_a_planned_deploy_runs_at_its_time_through_the_webhook_path_and_is_recorded(client, fake_runner, clock):
    deployment_id = plan(client, commit="abc123").json()["deployment_id"]
    received = record_of(client, deployment_id)["started_at"]
    listed = read(client, "/deployments", outcome="scheduled").json()
    assert [item["id"] for item in listed["items"]] == [deployment_id]

    clock.now = AT_EPOCH - 1
    assert tick(client) == pytest.approx(1)
    assert deploys(fake_runner) == []
    clock.now = AT_EPOCH
    assert tick(client) is None, "nothing else is planned"

    record = wait_for(client, deployment_id, finished)
    assert (record["outcome"], record["trigger"], record["planned_at"]) == ("succeeded", "webhook", AT)
    assert record["started_at"] >= received and record["finished_at"]
    assert (record["new_image"], record["strategy"], record["commit"]) == (
        "ghcr.io/acme/portal:2",
        "recreate",
        "abc123",
    )
    assert deploys(fake_runner) == ["portal"]
    (call,) = fake_runner.calls
    assert call["run_id"] == deployment_id and call["extravars"]["deploy_request"]["commit"] == "abc123"
    assert read(client, "/deployments", outcome="scheduled").json()["total"] == 0
    tick(client)
    assert deploys(fake_runner) == ["portal"], "it ran once"


def test_the_scheduler_wakes_by_itself_at_the_planned_time(tmp_path, fake_runner):
    """The task, not a test's tick: a plan a moment ahead on the real clock runs."""
    with TestClient(create_app(make_settings(tmp_path))) as client:
        at = datetime.fromtimestamp(int(datetime.now(UTC).timestamp()) + 2, UTC).isoformat()
        deployment_id = plan(client, at=at).json()["deployment_id"]
        record = wait_for(client, deployment_id, finished)
    assert record["outcome"] == "succeeded"


def test_a_planned_deploy_refused_when_it_comes_to_run_is_rejected(tmp_path, fake_runner, clock):
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings, clock=clock)) as client:
        deployment_id = plan(client).json()["deployment_id"]
        inventory = settings.deploy_inventory
        inventory.write_text(inventory.read_text().replace("portal: {}", "grafana: {}"))
        os.utime(inventory, (NOW + 10, NOW + 10))
        clock.now = AT_EPOCH
        tick(client)
        record = record_of(client, deployment_id)

    assert (record["outcome"], record["http_status"]) == ("rejected", 400)
    assert record["error"].startswith("Refused when it came to run: Service 'portal' not allowed")
    assert deploys(fake_runner) == []


def test_the_signer_recorded_at_receipt_is_checked_again_when_it_runs(tmp_path, fake_runner, clock, monkeypatch):
    own = "portal-secret-0123456789abcdef-0123456789"
    monkeypatch.setenv("WEBHOOK_SECRET_PORTAL", own)
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings, clock=clock)) as client:
        deployment_id = plan(client).json()["deployment_id"]
        inventory = settings.deploy_inventory
        inventory.write_text(inventory.read_text().replace("portal: {}", "portal: {secret_env: WEBHOOK_SECRET_PORTAL}"))
        os.utime(inventory, (NOW + 10, NOW + 10))
        clock.now = AT_EPOCH
        tick(client)
        record = record_of(client, deployment_id)

    assert (record["outcome"], record["http_status"]) == ("rejected", 403)
    assert "may not deploy 'portal'" in record["error"]
    assert deploys(fake_runner) == []


# Busy.


def test_a_busy_service_makes_it_wait_then_it_runs(client, fake_runner, clock):
    deployment_id = plan(client).json()["deployment_id"]
    fake_runner.hold.add("portal")
    running = signed_post(client, "/deploy?wait=false", {"service": "portal"}).json()["deployment_id"]
    assert fake_runner.entered.wait(10)

    clock.now = AT_EPOCH + 300
    assert tick(client) == BUSY_RETRY_SECONDS
    assert record_of(client, deployment_id)["outcome"] == "scheduled"

    fake_runner.hold.clear()
    fake_runner.release.set()
    wait_for(client, running, finished)
    tick(client)
    assert wait_for(client, deployment_id, finished)["outcome"] == "succeeded"
    assert deploys(fake_runner) == ["portal", "portal"]


def test_a_service_busy_beyond_the_grace_makes_it_missed(client, fake_runner, clock):
    deployment_id = plan(client).json()["deployment_id"]
    fake_runner.hold.add("portal")
    running = signed_post(client, "/deploy?wait=false", {"service": "portal"}).json()["deployment_id"]
    assert fake_runner.entered.wait(10)

    clock.now = AT_EPOCH + 601
    assert tick(client) is None
    record = record_of(client, deployment_id)

    fake_runner.release.set()
    wait_for(client, running, finished)
    assert (record["outcome"], record["error"]) == ("missed", f"portal was busy from {AT} to 2027-01-15T09:10:01Z")
    assert record["finished_at"]
    assert deploys(fake_runner) == ["portal"]
    assert sample(scrape(client), "deployer_missed_deployments_total", service="portal") == 1


# Cancel.


def test_a_planned_deploy_is_cancelled_until_it_starts(client, fake_runner, clock):
    deployment_id = plan(client).json()["deployment_id"]

    response = cancel(client, deployment_id)

    assert response.status_code == 200
    assert (response.json()["outcome"], response.json()["planned_at"]) == ("cancelled", AT)
    assert response.json()["finished_at"]
    clock.now = AT_EPOCH
    tick(client)
    assert deploys(fake_runner) == []
    again = cancel(client, deployment_id)
    assert again.status_code == 409
    assert again.json() == {"detail": f"Deployment {deployment_id} is cancelled: only a scheduled one can be cancelled"}


def test_a_started_or_finished_deploy_cannot_be_cancelled(client, fake_runner, clock):
    planned = plan(client).json()["deployment_id"]
    clock.now = AT_EPOCH
    fake_runner.hold.add("portal")
    tick(client)
    assert fake_runner.entered.wait(10)

    assert cancel(client, planned).status_code == 409
    assert "is running: only a scheduled one" in cancel(client, planned).json()["detail"]

    fake_runner.release.set()
    assert wait_for(client, planned, finished)["outcome"] == "succeeded"
    webhook = signed_post(client, "/deploy", {"service": "hello-world"}).headers["X-Deployment-Id"]
    assert cancel(client, webhook).status_code == 409


def test_a_cancel_needs_a_signature_for_cancel_by_a_secret_that_may_deploy_the_service(
    tmp_path, fake_runner, clock, monkeypatch
):
    own = "portal-secret-0123456789abcdef-0123456789"
    monkeypatch.setenv("WEBHOOK_SECRET_PORTAL", own)
    settings = make_settings(tmp_path)
    inventory = settings.deploy_inventory
    inventory.write_text(inventory.read_text().replace("portal: {}", "portal: {secret_env: WEBHOOK_SECRET_PORTAL}"))
    with TestClient(create_app(settings, clock=clock)) as client:
        raw = json.dumps({"service": "portal", "at": AT}).encode()
        headers = {"X-Hub-Signature-256": sign(own.encode(), raw)}
        deployment_id = client.post("/deploy", content=raw, headers=headers).json()["deployment_id"]

        assert cancel(client, "20270115T080000-00000000", secret=own).status_code == 404
        bad = cancel(client, deployment_id, secret="another-secret-0123456789abcdef-0123")
        assert (bad.status_code, bad.json()) == (403, {"detail": "Invalid signature"})
        read_signed = cancel(client, deployment_id, secret=own, purpose="read")
        assert read_signed.status_code == 403
        assert "made for GET /deployments/{id}, not for DELETE /deployments/{id}" in read_signed.json()["detail"]
        other_signer = cancel(client, deployment_id, secret=SECRET)
        assert other_signer.status_code == 403
        assert "may not deploy this deployment's service" in other_signer.json()["detail"]
        assert record_of(client, deployment_id)["outcome"] == "scheduled"
        assert cancel(client, deployment_id, secret=own).status_code == 200


# Restarts and crashes.


def test_at_start_a_plan_late_by_less_than_the_grace_runs_at_once(tmp_path, fake_runner, clock):
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings, clock=clock)) as client:
        deployment_id = plan(client).json()["deployment_id"]
    clock.now = AT_EPOCH + 599
    with TestClient(create_app(settings, clock=clock)) as client:
        tick(client)
        record = wait_for(client, deployment_id, finished)
    assert record["outcome"] == "succeeded"
    assert deploys(fake_runner) == ["portal"]


def test_at_start_a_plan_late_by_more_than_the_grace_is_missed_and_notified(tmp_path, fake_runner, clock, notified):
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings, clock=clock)) as client:
        deployment_id = plan(client, image="ghcr.io/acme/portal:2").json()["deployment_id"]
    clock.now = AT_EPOCH + 601
    with TestClient(create_app(settings, clock=clock)) as client:
        tick(client)
        record = record_of(client, deployment_id)
        (message,) = notified.wait_for(lambda received: len(received) == 1)
        samples = scrape(client)

    assert record["outcome"] == "missed"
    assert record["error"] == f"planned for {AT}, the API was not running until 2027-01-15T09:10:01Z"
    assert message["title"] == f"⏰ Deploy of portal was missed (planned for {AT})"
    assert f"Error: {record['error']}" in message["message"]
    assert sample(samples, "deployer_missed_deployments_total", service="portal") == 1
    assert sample(samples, "deployer_scheduled_deployments", service="portal") == 0
    assert deploys(fake_runner) == []


def test_a_plan_claimed_by_a_process_that_died_is_interrupted_and_never_run_again(tmp_path, fake_runner, clock):
    settings = make_settings(tmp_path, deploy_recover_interrupted="report")
    with TestClient(create_app(settings, clock=clock)) as client:
        deployment_id = plan(client).json()["deployment_id"]
    # What the scheduler's claim leaves when the process dies before the deploy's run began.
    with sqlite3.connect(settings.history_file) as raw:
        raw.execute(
            "UPDATE deployments SET outcome = 'running' WHERE id = ? AND outcome = 'scheduled'", (deployment_id,)
        )
    clock.now = AT_EPOCH + 1
    with TestClient(create_app(settings, clock=clock)) as client:
        tick(client)
        record = wait_for(client, deployment_id, lambda record: record["outcome"] != "running")
        tick(client)

    assert record["outcome"] == "interrupted"
    assert deploys(fake_runner) == []


def test_the_scheduled_gauge_counts_the_plans_waiting(client):
    plan(client)
    plan(client, at="2027-01-16T09:00:00Z")
    plan(client, service="hello-world")

    samples = scrape(client)

    assert sample(samples, "deployer_scheduled_deployments", service="portal") == 2
    assert sample(samples, "deployer_scheduled_deployments", service="hello-world") == 1


def test_a_method_the_record_s_path_does_not_take_is_405_listing_both_it_takes(client):
    response = client.put("/deployments/20270115T080000-00000000")

    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, DELETE"
