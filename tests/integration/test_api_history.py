"""The deployment history, asynchronous deploys and crash safety over HTTP, against the real engine."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import datetime

import httpx
import pytest
from conftest import service
from prometheus_client.parser import text_string_to_metric_families
from receiver import BlackHole, Receiver, closed_port_url

from api.signature import sign
from tests.support.apiserver import READ_TOKEN, SECRET, serving
from tests.support.dockercli import image, image_id

METRICS_TOKEN = "integration-metrics-token-0123"
NOTIFY_PASSWORD = "notify-password-0123456789"

pytestmark = pytest.mark.usefixtures("registry")


@pytest.fixture
def api_server(tmp_path):
    yield from serving(tmp_path)


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def black_hole():
    black_hole = BlackHole()
    yield black_hole
    black_hole.close()


def scrape(server) -> dict[tuple[str, frozenset], float]:
    response = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name.startswith("deployer_")
    }


def test_history_records_success_rollback_and_pull_failure_then_a_manual_rollback(
    compose_project, api_server, receiver, black_hole
):
    """Also what the operators watch: metrics, notifications (one target hangs, one refuses) and JSON logs."""
    project = compose_project({"portal": service(image("healthy", "v1"))}, {"portal": {"health_timeout": 30}})
    project.up()
    good_target = receiver.url.replace("json://", f"json://deploy:{NOTIFY_PASSWORD}@")
    server = api_server(
        project,
        DEPLOY_NOTIFY_URLS=f"{good_target} {black_hole.url} {closed_port_url()}",
        DEPLOY_METRICS_TOKEN=METRICS_TOKEN,
        LOG_FORMAT="json",
    )

    ok = server.post(
        {"service": "portal", "image": image("healthy", "v2"), "repository": "acme/portal", "commit": "c2"}
    )
    crashed = server.post({"service": "portal", "image": image("crash", "v1"), "commit": "c3"})
    missing = server.post({"service": "portal", "image": image("healthy", "no-such-tag"), "commit": "c4"})
    assert (ok.status_code, crashed.status_code, missing.status_code) == (200, 500, 500)

    page = server.get("/deployments", service="portal").json()
    assert page["total"] == 3
    records = page["items"]
    assert [record["outcome"] for record in records] == ["failed", "rolled_back", "succeeded"]
    assert [record["commit"] for record in records] == ["c4", "c3", "c2"]
    assert [record["id"] for record in records] == [
        response.headers["X-Deployment-Id"] for response in (missing, crashed, ok)
    ]
    succeeded, rolled_back, failed = reversed(records)
    # What the records say is what the engine did.
    assert succeeded["old_image_id"] == image_id(image("healthy", "v1"))
    assert succeeded["new_image_id"] == image_id(image("healthy", "v2"))
    assert (succeeded["repository"], succeeded["http_status"]) == ("acme/portal", 200)
    assert [step["step"] for step in succeeded["steps"]] == [
        "preflight",
        "capture_state",
        "pull_image",
        "compose_up",
        "health_check",
        "cleanup",
    ]
    assert rolled_back["old_image_id"] == image_id(image("healthy", "v2"))
    assert rolled_back["steps"][-1]["step"] == "rollback" and rolled_back["steps"][-1]["rolled_back"] is True
    assert "fatal: configuration file /etc/app.conf not found" in rolled_back["logs"]
    assert rolled_back["error"].startswith("Container is restarting")
    assert [step["step"] for step in failed["steps"]] == ["preflight", "capture_state", "pull_image"]
    assert failed["finished_at"] and failed["duration_seconds"] > 0
    assert project.container("portal")["Image"] == image_id(image("healthy", "v2"))

    assert server.get("/deployments", outcome="rolled_back").json()["total"] == 1
    second = server.get("/deployments", limit=1, offset=1).json()
    assert (second["total"], [record["id"] for record in second["items"]]) == (3, [rolled_back["id"]])
    assert server.get("/deployments", service="grafana").json() == {"items": [], "total": 0, "limit": 20, "offset": 0}
    assert server.get("/deployments", token=None).status_code == 401
    assert server.get("/deployments", token="wrong-token-0123456789").status_code == 401
    assert server.get(f"/deployments/{ok.headers['X-Deployment-Id']}", token=None).status_code == 401
    assert server.get("/deployments", outcome="exploded").status_code == 422

    # Manual rollback through the API: v2 runs, the previous image of the service's history is v1.
    response = server.post({"service": "portal", "commit": "undo"}, path="/rollback")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["message"] == "Rollback successful"
    assert (body["old_image"], body["new_image"]) == (image("healthy", "v2"), image("healthy", "v1"))
    assert project.container("portal")["Image"] == image_id(image("healthy", "v1"))
    record = server.record(response.headers["X-Deployment-Id"])
    assert (record["action"], record["outcome"], record["commit"]) == ("rollback", "succeeded", "undo")
    assert record["new_image_id"] == image_id(image("healthy", "v1"))
    assert server.post({"service": "ghost"}, path="/rollback").status_code == 400
    assert server.post({"service": "portal"}, path="/rollback", signature="sha256=" + "0" * 64).status_code == 403
    assert server.post({"service": "portal"}, signature="sha256=" + "0" * 64).status_code == 403

    # Notifications: one per finished deploy, in order, to the target that works.
    notified = receiver.wait_for(lambda messages: len(messages) == 4)
    assert [(message["type"], message["title"]) for message in notified] == [
        ("success", "✅ Deployed portal"),
        ("warning", "⏪ Deploy of portal failed and was rolled back"),
        ("failure", "❌ Deploy of portal failed"),
        ("success", "⏪ Rolled back portal"),
    ]
    short_id = image_id(image("healthy", "v2")).removeprefix("sha256:")[:12]
    assert f"Image: {image('healthy', 'v2')} ({short_id})\n" in notified[0]["message"]
    assert f"Previous image: {image('healthy', 'v1')}" in notified[0]["message"]
    assert "Commit: acme/portal@c2" in notified[0]["message"]
    assert "Error: Container is restarting" in notified[1]["message"]
    assert "fatal: configuration file /etc/app.conf not found" in notified[1]["message"].split("Last log lines:")[1]
    # The hanging target and the refusing one held up no answer: each came with its deploy's end.
    black_hole.wait_for_a_connection()
    for response, record in ((ok, succeeded), (crashed, rolled_back), (missing, failed)):
        assert response.elapsed.total_seconds() - record["duration_seconds"] < 1.5

    # Metrics, with values.
    assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 401
    samples = scrape(server)

    def value(name: str, **labels: str) -> float:
        return samples[(name, frozenset(labels.items()))]

    portal = {"service": "portal"}
    for action, outcome, count in [
        ("deploy", "succeeded", 1),
        ("deploy", "rolled_back", 1),
        ("deploy", "failed", 1),
        ("deploy", "rollback_failed", 0),
        ("rollback", "succeeded", 1),
    ]:
        assert value("deployer_deployments_total", **portal, action=action, outcome=outcome) == count, outcome
    assert value("deployer_rollbacks_total", **portal, trigger="automatic", result="succeeded") == 1
    assert value("deployer_rollbacks_total", **portal, trigger="manual", result="succeeded") == 1
    assert value("deployer_deployment_duration_seconds_count", **portal, action="deploy", strategy="recreate") == 3
    assert value(
        "deployer_deployment_duration_seconds_sum", **portal, action="deploy", strategy="recreate"
    ) == pytest.approx(sum(record["duration_seconds"] for record in records), abs=0.01)
    assert value("deployer_last_success_timestamp_seconds", **portal) == pytest.approx(
        datetime.fromisoformat(succeeded["finished_at"]).timestamp()
    )
    assert value("deployer_deployments_in_progress", **portal) == 0
    for endpoint, result, count in [
        ("deploy", "accepted", 3),
        ("rollback", "accepted", 1),
        ("rollback", "not_allowed", 1),
        ("rollback", "invalid_signature", 1),
        ("deploy", "invalid_signature", 1),
        ("deploy", "conflict", 0),
    ]:
        assert value("deployer_webhook_requests_total", endpoint=endpoint, result=result) == count, (endpoint, result)
    assert value("deployer_notifications_total", scheme="json", result="sent") == 4

    # JSON logs for Loki: every line an object; a deploy's lines carry its id, service and step.
    lines = [json.loads(line) for line in server.log_file.read_text().splitlines()]
    health_checks = [line for line in lines if "Checking container health" in line["message"]]
    assert {"level": "INFO", "deployment_id": ok.headers["X-Deployment-Id"], "service": "portal"}.items() <= (
        health_checks[0].items()
    )
    assert health_checks[0]["step"] == "health_check" and health_checks[0]["time"]
    log_text = server.log_file.read_text()
    for secret in (SECRET, READ_TOKEN, METRICS_TOKEN, NOTIFY_PASSWORD):
        assert secret not in log_text
    assert not [line for line in lines if '"commit": "c2"' in line["message"]], "no request body is logged"


def test_wait_false_answers_202_at_once_and_the_record_follows_each_step(compose_project, api_server):
    project = compose_project({"portal": service(image("healthy", "v1"))})
    project.up()
    server = api_server(project)

    started = time.monotonic()
    response = server.post({"service": "portal", "image": image("healthy", "v2")}, path="/deploy?wait=false")
    answered = time.monotonic() - started

    assert response.status_code == 202, response.text
    deployment_id = response.json()["deployment_id"]
    assert response.headers["Location"] == f"/deployments/{deployment_id}"
    assert answered < 5, "the 202 does not wait for the deploy"
    # CI holds only the webhook secret: it follows its own deploy with a signature over the id.
    signed = httpx.get(
        f"{server.url}{response.headers['Location']}",
        headers={"X-Hub-Signature-256": sign(SECRET.encode(), deployment_id.encode(), "read")},
        timeout=10,
    )
    assert signed.status_code == 200
    seen = server.follow(deployment_id)
    final = seen[-1]
    assert final["outcome"] == "succeeded" and final["http_status"] == 200
    assert [step["step"] for step in final["steps"]] == [
        "preflight",
        "capture_state",
        "pull_image",
        "compose_up",
        "health_check",
        "cleanup",
    ]
    in_progress = [record["current_step"] for record in seen if record["outcome"] == "running"]
    assert "health_check" in in_progress, f"progress was visible step by step: {in_progress}"
    partial = [len(record["steps"]) for record in seen if record["outcome"] == "running"]
    assert any(0 < count < 6 for count in partial), f"finished steps appear while the deploy runs: {partial}"
    assert project.container("portal")["Image"] == image_id(image("healthy", "v2"))


def test_kill_9_mid_deploy_then_restart_marks_it_interrupted_and_restores_the_previous_image(
    compose_project, api_server, receiver
):
    project = compose_project({"portal": service(image("healthy", "v1"))}, {"portal": {"health_timeout": 120}})
    project.up()
    server = api_server(project)
    earlier = server.post({"service": "portal", "image": image("healthy", "v2")})
    assert earlier.status_code == 200

    response = server.post({"service": "portal", "image": image("unhealthy", "v1")}, path="/deploy?wait=false")
    deployment_id = response.json()["deployment_id"]
    server.follow(deployment_id, until=lambda record: record["current_step"] == "health_check")
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)
    left = project.container("portal")
    assert left["Image"] == image_id(image("unhealthy", "v1")), "the kill left the service half-deployed"

    restarted = api_server(project, state_dir=server.state_dir, DEPLOY_NOTIFY_URLS=receiver.url)
    record = restarted.follow(deployment_id, until=lambda record: record["recovery_action"])[-1]
    orphans = subprocess.run(["pgrep", "-f", f"runs/{deployment_id}"], capture_output=True, text=True)
    assert orphans.stdout == "", "nothing of the interrupted run is left"

    assert record["outcome"] == "interrupted"
    assert record["finished_at"]
    assert record["running_image_id"] == left["Image"], "the record says what the engine ran after the crash"
    assert record["running_state"] == "running, unhealthy"
    assert record["error"] == "Interrupted: the deployment API stopped during health_check"
    assert record["recovery"] == f"Now the service runs the new image {image('unhealthy', 'v1')}, running, unhealthy"
    rollback_id = record["recovered_by"]
    assert record["recovery_action"] == f"Rolled back to the previous image by {rollback_id}"
    rollback = restarted.record(rollback_id)
    assert (rollback["action"], rollback["source"], rollback["outcome"]) == ("rollback", "recovery", "succeeded")
    container = project.container("portal")
    assert container["Image"] == image_id(image("healthy", "v2"))
    assert container["State"]["Health"]["Status"] == "healthy"
    assert restarted.record(earlier.headers["X-Deployment-Id"])["outcome"] == "succeeded", "records survive"
    # Someone hears of it: the automatic rollback, then the interrupted deploy with what ran and what was done.
    notified = receiver.wait_for(lambda messages: len(messages) == 2)
    assert [message["title"] for message in notified] == [
        "⏪ Rolled back portal",
        "⚠️ Deploy of portal was interrupted",
    ]
    assert f"Deployment: {rollback_id} (from recovery)" in notified[0]["message"]
    assert f"Running now: {image('unhealthy', 'v1')} (" in notified[1]["message"]
    assert f"Rolled back to the previous image by {rollback_id}" in notified[1]["message"]
