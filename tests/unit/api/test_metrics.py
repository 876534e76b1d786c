"""GET /metrics and the notifications of finished deploys, through the app with a fake runner."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from fakerunner import success_result
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from receiver import BlackHole, Receiver
from test_history import (
    NEW_ID,
    OLD_ID,
    leave_running_record,
    make_settings,
    read,
    signed_post,
    status_run,
    wait_for,
)
from test_routes import post

from api.main import create_app
from api.runner import RunResult

METRICS_TOKEN = "metrics-token-0123456789"


def scrape(client: TestClient, token: str | None = None) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics by name and labels."""
    response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def client(tmp_path, fake_runner):
    with TestClient(create_app(make_settings(tmp_path))) as test_client:
        yield test_client


def test_every_series_of_an_allowed_service_starts_at_zero(client):
    samples = scrape(client)

    for service in ("portal", "hello-world"):
        assert sample(samples, "deployer_deployments_total", service=service, action="deploy", outcome="failed") == 0
        assert sample(samples, "deployer_rollbacks_total", service=service, trigger="manual", result="failed") == 0
        assert sample(samples, "deployer_deployments_in_progress", service=service) == 0
    assert sample(samples, "deployer_webhook_requests_total", endpoint="deploy", result="rate_limited") == 0
    assert not [key for key in samples if key[0] == "deployer_last_success_timestamp_seconds"]
    assert sample(samples, "process_open_fds") > 0


def test_deploys_rollbacks_and_refusals_are_counted_by_what_became_of_them(client, fake_runner):
    succeeded = post(client, {"service": "portal"})
    rolled_back = {**success_result(), "success": False, "outcome": "rolled_back", "error": "boom"}
    fake_runner.result = RunResult(status="failed", rc=2, results={"localhost": rolled_back})
    failed = post(client, {"service": "portal", "commit": "second"})
    fake_runner.result = RunResult(status="successful", rc=0, results={"localhost": success_result()})
    manual = signed_post(client, "/rollback", {"service": "portal"})
    refused = [
        post(client, {"service": "portal"}, signature="sha256=" + "0" * 64),
        post(client, {"service": "ghost"}),
        post(client, b"{not json"),
        post(client, {"service": "portal", "image": "UPPER/case"}),
        post(client, b"x" * 70_000),
    ]
    assert [response.status_code for response in (succeeded, failed, manual)] == [200, 500, 200]
    assert [response.status_code for response in refused] == [403, 400, 400, 422, 413]

    samples = scrape(client)

    def deployments(action: str, outcome: str) -> float:
        return sample(samples, "deployer_deployments_total", service="portal", action=action, outcome=outcome)

    assert (deployments("deploy", "succeeded"), deployments("deploy", "rolled_back")) == (1, 1)
    assert (deployments("rollback", "succeeded"), deployments("deploy", "failed")) == (1, 0)
    rollbacks = {
        (trigger, result): sample(samples, "deployer_rollbacks_total", service="portal", trigger=trigger, result=result)
        for trigger in ("automatic", "manual", "recovery")
        for result in ("succeeded", "failed")
    }
    assert {key: value for key, value in rollbacks.items() if value} == {
        ("automatic", "succeeded"): 1,
        ("manual", "succeeded"): 1,
    }
    assert (
        sample(
            samples,
            "deployer_deployment_duration_seconds_count",
            service="portal",
            action="deploy",
            strategy="recreate",
        )
        == 2
    )
    webhook = {
        (labels["endpoint"], labels["result"]): value
        for (name, label_set), value in samples.items()
        if name == "deployer_webhook_requests_total" and value
        for labels in [dict(label_set)]
    }
    assert webhook == {
        ("deploy", "accepted"): 2,
        ("rollback", "accepted"): 1,
        ("deploy", "invalid_signature"): 1,
        ("deploy", "not_allowed"): 1,
        ("deploy", "invalid_body"): 2,
        ("deploy", "too_large"): 1,
    }
    record = read(client, f"/deployments/{succeeded.headers['X-Deployment-Id']}").json()
    finished = datetime.fromisoformat(record["finished_at"]).timestamp()
    assert sample(samples, "deployer_last_success_timestamp_seconds", service="portal") == pytest.approx(finished)


def test_a_conflict_is_counted_and_a_running_deploy_is_in_progress(client, fake_runner):
    fake_runner.hold.add("portal")
    started = signed_post(client, "/deploy?wait=false", {"service": "portal"})
    assert fake_runner.entered.wait(10)

    conflict = post(client, {"service": "portal", "commit": "while it runs"})
    during = scrape(client)
    fake_runner.release.set()
    wait_for(client, started.json()["deployment_id"], lambda record: record["outcome"] != "running")
    after = scrape(client)

    assert conflict.status_code == 409
    assert sample(during, "deployer_webhook_requests_total", endpoint="deploy", result="conflict") == 1
    assert sample(during, "deployer_deployments_in_progress", service="portal") == 1
    assert sample(after, "deployer_deployments_in_progress", service="portal") == 0


def test_the_last_success_survives_a_restart_and_a_recovery_rollback_is_counted(tmp_path, fake_runner):
    settings = make_settings(tmp_path)
    leave_running_record(settings)
    fake_runner.by_playbook["status.yml"] = status_run(NEW_ID, "running, unhealthy")
    restored = {**success_result(), "new_image_id": OLD_ID}
    fake_runner.by_playbook["rollback.yml"] = RunResult(status="successful", rc=0, results={"localhost": restored})
    with TestClient(create_app(settings)) as client:
        wait_for(client, "20261127T000000-deadbeef", lambda record: record["recovered_by"])
        assert post(client, {"service": "portal"}).status_code == 200
        first = scrape(client)

    with TestClient(create_app(settings)) as client:
        second = scrape(client)

    labels = {"service": "portal"}
    assert sample(first, "deployer_deployments_total", **labels, action="deploy", outcome="interrupted") == 1
    assert sample(first, "deployer_rollbacks_total", **labels, trigger="recovery", result="succeeded") == 1
    last_success = sample(first, "deployer_last_success_timestamp_seconds", **labels)
    assert last_success == pytest.approx(time.time(), abs=60)
    assert sample(second, "deployer_last_success_timestamp_seconds", **labels) == last_success
    assert sample(second, "deployer_deployments_total", **labels, action="deploy", outcome="succeeded") == 0


def test_a_metrics_token_closes_metrics_to_everyone_else(tmp_path, fake_runner):
    with TestClient(create_app(make_settings(tmp_path, deploy_metrics_token=METRICS_TOKEN))) as client:
        anonymous = client.get("/metrics")
        wrong = client.get("/metrics", headers={"Authorization": "Bearer wrong-token-0123456789"})
        samples = scrape(client, token=METRICS_TOKEN)
        openmetrics = client.get(
            "/metrics",
            headers={"Authorization": f"Bearer {METRICS_TOKEN}", "Accept": "application/openmetrics-text"},
        )

    assert (anonymous.status_code, wrong.status_code) == (401, 401)
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert sample(samples, "deployer_deployments_in_progress", service="portal") == 0
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")


def test_finished_deploys_are_notified_and_a_hanging_target_holds_nothing_up(tmp_path, fake_runner):
    receiver, black_hole = Receiver(), BlackHole()
    settings = make_settings(
        tmp_path,
        deploy_notify_urls=f"{black_hole.url}?rto=30, {receiver.url}",
        deploy_notify_events="succeeded,rolled_back",
    )
    try:
        with TestClient(create_app(settings)) as client:
            started = time.monotonic()
            deployed = post(client, {"service": "portal", "commit": "c1"})
            answered = time.monotonic() - started
            rolled_back = {**success_result(), "success": False, "outcome": "rolled_back", "error": "boom"}
            failed = {**success_result(), "success": False, "outcome": "failed", "error": "pull failed"}
            for result in (failed, rolled_back):
                fake_runner.result = RunResult(status="failed", rc=2, results={"localhost": result})
                assert post(client, {"service": "portal", "commit": result["outcome"]}).status_code == 500
            messages = receiver.wait_for(lambda messages: len(messages) == 2, timeout=10)
            black_hole.wait_for_a_connection()
            samples = scrape(client)
    finally:
        receiver.close()
        black_hole.close()

    assert deployed.status_code == 200
    assert answered < 2, "the deploy did not wait for the notification targets"
    assert [(message["type"], message["title"]) for message in messages] == [
        ("success", "✅ Deployed portal"),
        ("warning", "⏪ Deploy of portal failed and was rolled back"),
    ]
    assert f"Deployment: {deployed.headers['X-Deployment-Id']}" in messages[0]["message"]
    assert "Error: boom" in messages[1]["message"]
    assert sample(samples, "deployer_notifications_total", scheme="json", result="sent") == 2
    assert sample(samples, "deployer_notifications_total", scheme="json", result="failed") == 0
