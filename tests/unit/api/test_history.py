"""The deployment history: the SQLite store, the read endpoints, 202 mode and crash recovery, with a fake runner."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from fakerunner import FakeRunner, success_result
from fastapi.testclient import TestClient
from test_routes import SECRET, post

from api import main as main_module
from api.history import SCHEMA_VERSION, History
from api.main import create_app
from api.runner import RunResult
from api.settings import Settings
from api.signature import sign
from module_utils import deploy_rules

READ_TOKEN = "read-token-0123456789abcdef"


def make_settings(tmp_path: Path, **overrides) -> Settings:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        "  vars:\n    deploy_compose_dir: /srv/homeserver\n"
        "    deploy_services:\n      portal: {}\n      hello-world: {}\n"
    )
    return Settings(
        webhook_secret=SECRET,
        deploy_inventory=inventory,
        deploy_state_dir=tmp_path / "var",
        deploy_read_token=READ_TOKEN,
        **overrides,
    )


@pytest.fixture
def client(tmp_path: Path, fake_runner: FakeRunner):
    with TestClient(create_app(make_settings(tmp_path))) as test_client:
        yield test_client


def read(client: TestClient, path: str, token: str | None = READ_TOKEN, **params):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.get(path, headers=headers, params=params)


def poll(client: TestClient, deployment_id: str, until: str = "running") -> dict:
    deadline = time.monotonic() + 10
    while True:
        record = read(client, f"/deployments/{deployment_id}").json()
        if record["outcome"] != until:
            return record
        assert time.monotonic() < deadline, record
        time.sleep(0.02)


# The store.


def test_new_database_is_wal_and_at_the_current_schema(tmp_path):
    history = History(tmp_path / "h.sqlite3")
    assert history.schema_version() == SCHEMA_VERSION
    with sqlite3.connect(tmp_path / "h.sqlite3") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (tmp_path / "h.sqlite3").stat().st_mode & 0o077 == 0, "the history is private to its owner"


def test_a_database_from_a_newer_release_is_refused(tmp_path):
    with sqlite3.connect(tmp_path / "h.sqlite3") as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer than this release"):
        History(tmp_path / "h.sqlite3")


def test_records_survive_reopening_and_list_newest_first_with_filters_and_pages(tmp_path):
    history = History(tmp_path / "h.sqlite3")
    for number in range(7):
        history.create(
            id=f"d{number}",
            action="deploy",
            service="portal" if number % 2 else "grafana",
            outcome="succeeded" if number < 5 else "rolled_back",
            started_at=f"2026-11-27T00:00:0{number}.000Z",
            steps=[{"step": "capture_state", "success": True, "detail": "done"}],
        )
    history.update("d6", finished_at="2026-11-27T00:00:08.500Z")
    history.close()

    reopened = History(tmp_path / "h.sqlite3")
    everything, total = reopened.list()
    assert total == 7
    assert [record["id"] for record in everything] == ["d6", "d5", "d4", "d3", "d2", "d1", "d0"]
    assert everything[0]["duration_seconds"] == 2.5
    assert everything[0]["steps"] == [{"step": "capture_state", "success": True, "detail": "done"}]

    portal, total = reopened.list(service="portal")
    assert (total, [record["id"] for record in portal]) == (3, ["d5", "d3", "d1"])
    page, total = reopened.list(outcome="succeeded", limit=2, offset=2)
    assert (total, [record["id"] for record in page]) == (5, ["d2", "d1"])
    both, total = reopened.list(service="grafana", outcome="rolled_back")
    assert (total, [record["id"] for record in both]) == (1, ["d6"])


# The read endpoints.


def test_history_needs_the_read_token(client):
    post(client, {"service": "portal"})

    assert read(client, "/deployments", token=None).status_code == 401
    wrong = read(client, "/deployments", token="x" * 30)
    assert wrong.status_code == 401
    assert wrong.headers["WWW-Authenticate"] == "Bearer"
    good = read(client, "/deployments")
    assert good.status_code == 200
    assert good.json()["total"] == 1


def test_without_a_read_token_configured_the_list_stays_closed(tmp_path, fake_runner):
    settings = make_settings(tmp_path).model_copy(update={"deploy_read_token": None})
    with TestClient(create_app(settings)) as client:
        response = read(client, "/deployments", token="anything-at-all-0123")
    assert response.status_code == 401
    assert "no DEPLOY_READ_TOKEN" in response.json()["detail"]


def test_one_record_opens_with_a_signature_over_its_id(client):
    deployment_id = post(client, {"service": "portal"}).headers["X-Deployment-Id"]
    other_id = post(client, {"service": "hello-world"}).headers["X-Deployment-Id"]
    path = f"/deployments/{deployment_id}"

    signed = client.get(path, headers={"X-Hub-Signature-256": sign(SECRET.encode(), deployment_id.encode(), "read")})
    assert signed.status_code == 200
    assert signed.json()["id"] == deployment_id
    other_signature = {"X-Hub-Signature-256": sign(SECRET.encode(), other_id.encode(), "read")}
    assert client.get(path, headers=other_signature).status_code == 401
    bare_id = {"X-Hub-Signature-256": sign(SECRET.encode(), deployment_id.encode())}
    assert client.get(path, headers=bare_id).status_code == 401, "a read is signed over read: and the id"
    assert client.get(path).status_code == 401
    assert read(client, "/deployments/20260101T000000-00000000").status_code == 404


def test_a_finished_deploy_is_recorded_with_its_request_and_outcome(client):
    response = post(
        client,
        {"service": "portal", "image": "ghcr.io/acme/portal:2", "repository": "acme/portal", "commit": "abc123"},
    )
    record = read(client, f"/deployments/{response.headers['X-Deployment-Id']}").json()

    assert record["action"] == "deploy"
    assert record["outcome"] == "succeeded"
    assert record["http_status"] == 200
    assert (record["service"], record["image"]) == ("portal", "ghcr.io/acme/portal:2")
    assert (record["repository"], record["commit"]) == ("acme/portal", "abc123")
    assert (record["old_image"], record["new_image"]) == ("ghcr.io/acme/portal:1", "ghcr.io/acme/portal:2")
    assert record["source"] == "testclient"
    assert record["steps"] == success_result()["steps"]
    assert record["finished_at"] >= record["started_at"]
    assert record["current_step"] is None


def test_refused_signed_requests_are_recorded_as_rejected_and_bad_signatures_are_not(client, fake_runner):
    post(client, {"service": "xyz", "commit": "c1"})
    post(client, {"service": "portal", "image": "Not A Reference"})
    post(client, b"{not json")
    post(client, {"service": "portal"}, signature="sha256=" + "0" * 64)

    records = read(client, "/deployments", outcome="rejected").json()
    assert records["total"] == 3
    statuses = [(record["http_status"], record["service"]) for record in records["items"]]
    assert statuses == [(400, None), (422, "portal"), (400, "xyz")]
    assert records["items"][2]["error"].startswith("Service 'xyz' not allowed")
    assert records["items"][2]["commit"] == "c1"
    assert fake_runner.calls == []
    assert read(client, "/deployments").json()["total"] == 3, "a request with a bad signature leaves no record"


def test_a_conflict_is_recorded_as_rejected(client, fake_runner):
    fake_runner.hold.add("portal")
    started = signed_post(client, "/deploy?wait=false", {"service": "portal"})
    assert fake_runner.entered.wait(10)
    conflict = post(client, {"service": "portal", "commit": "while it runs"})
    fake_runner.release.set()

    assert conflict.status_code == 409
    rejected = read(client, "/deployments", outcome="rejected").json()["items"]
    assert [(record["http_status"], record["service"]) for record in rejected] == [(409, "portal")]
    assert poll(client, started.json()["deployment_id"])["outcome"] == "succeeded"


# Asynchronous mode.


def signed_post(client: TestClient, path: str, body: dict):
    """POST a body to /deploy or /rollback, signed for that action."""
    raw = json.dumps(body).encode()
    purpose = "rollback" if path.startswith("/rollback") else "deploy"
    return client.post(path, content=raw, headers={"X-Hub-Signature-256": sign(SECRET.encode(), raw, purpose)})


def test_wait_false_answers_202_and_the_record_shows_progress(client, fake_runner):
    fake_runner.hold.add("portal")

    response = signed_post(client, "/deploy?wait=false", {"service": "portal"})

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "running"
    assert response.headers["Location"] == body["status_url"] == f"/deployments/{body['deployment_id']}"
    assert fake_runner.entered.wait(10)
    running = read(client, response.headers["Location"]).json()
    assert running["outcome"] == "running"
    assert running["finished_at"] is None
    fake_runner.release.set()
    final = poll(client, body["deployment_id"])
    assert final["outcome"] == "succeeded"
    assert [step["step"] for step in final["steps"]] == ["capture_state", "pull_image", "compose_up"]


def test_rollback_endpoint_runs_the_rollback_playbook(client, fake_runner):
    response = signed_post(client, "/rollback", {"service": "portal"})

    assert response.status_code == 200
    (call,) = fake_runner.calls
    assert call["playbook"].name == "rollback.yml"
    assert call["extravars"]["service"] == "portal"
    assert "image" not in call["extravars"]
    record = read(client, f"/deployments/{response.headers['X-Deployment-Id']}").json()
    assert (record["action"], record["outcome"]) == ("rollback", "succeeded")


@pytest.mark.parametrize(
    ("outcome", "status"),
    [("rolled_back", "failed"), ("rollback_failed", "failed"), ("failed", "failed")],
)
def test_failed_outcomes_are_recorded_as_the_playbook_reports_them(client, fake_runner, outcome, status):
    failed = {**success_result(), "success": False, "outcome": outcome, "error": "boom", "logs": "last line"}
    fake_runner.result = RunResult(status=status, rc=2, results={"localhost": failed})

    response = post(client, {"service": "portal"})

    record = read(client, f"/deployments/{response.headers['X-Deployment-Id']}").json()
    assert (record["outcome"], record["http_status"]) == (outcome, 500)
    assert (record["error"], record["logs"]) == ("boom", "last line")


# The API's own service: the playbook's preflight refuses it, and the API answers as for any refusal.

OWN_SERVICE_REFUSED = (
    "Refusing to deploy deployment-api: its container 3f2a9c1b7d4e runs this deploy, and replacing it would stop the "
    "deploy midway. Update it from the host instead: docker compose -f /opt/deployment/deployment.yml up -d --build "
    "deployment-api"
)


def refused_by_preflight(action: str, service: str, refusal: str) -> dict:
    """A host's record when its preflight refused, as the deploy role publishes it."""
    state = {
        "steps": [{"step": "preflight", "success": False, "detail": refusal, "seconds": 0.04}],
        "failed_step": "preflight",
        "error": refusal,
        "strategy": "recreate",
        "action": action,
    }
    return deploy_rules.host_record(state, action, service)


@pytest.mark.parametrize("wait", [True, False])
def test_a_deploy_of_the_apis_own_service_is_refused_with_400_and_the_record_says_why(tmp_path, fake_runner, wait):
    settings = make_settings(tmp_path)
    settings.deploy_inventory.write_text(
        "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        "  vars:\n    deploy_compose_dir: /opt/deployment\n"
        "    deploy_services:\n      deployment-api: {compose_file: deployment.yml}\n"
    )
    refused = refused_by_preflight("deploy", "deployment-api", OWN_SERVICE_REFUSED)
    fake_runner.result = RunResult(
        status="failed", rc=2, results={"localhost": refused}, failures={"localhost": "Deploy of deployment-api failed"}
    )

    with TestClient(create_app(settings)) as client:
        response = signed_post(client, f"/deploy?wait={str(wait).lower()}", {"service": "deployment-api"})
        deployment_id = response.headers["X-Deployment-Id"]
        record = poll(client, deployment_id)

    if wait:
        assert response.status_code == 400
        assert response.json()["error"] == OWN_SERVICE_REFUSED
    else:
        assert response.status_code == 202
    assert (record["outcome"], record["http_status"], record["error"]) == ("failed", 400, OWN_SERVICE_REFUSED)
    assert record["steps"] == [{"step": "preflight", "success": False, "detail": OWN_SERVICE_REFUSED, "seconds": 0.04}]
    assert not record["awaiting_reconciliation"], "nothing was changed: nothing to reconcile"


# Crash safety.


OLD_ID, NEW_ID = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def leave_running_record(settings: Settings, **fields) -> None:
    """What a process killed mid-deploy leaves behind."""
    settings.deploy_state_dir.mkdir()
    left = History(settings.history_file)
    left.create(
        id="20261127T000000-deadbeef",
        action="deploy",
        service="portal",
        outcome="running",
        current_step="health_check",
        old_image="ghcr.io/acme/portal:1",
        old_image_id=OLD_ID,
        new_image="ghcr.io/acme/portal:2",
        new_image_id=NEW_ID,
        **fields,
    )
    left.close()


def wait_for(client: TestClient, deployment_id: str, done) -> dict:
    deadline = time.monotonic() + 10
    while not done(record := read(client, f"/deployments/{deployment_id}").json()):
        assert time.monotonic() < deadline, record
        time.sleep(0.02)
    return record


def status_run(image_id: str, state: str) -> RunResult:
    return RunResult(
        status="successful",
        rc=0,
        results={"localhost": {"image": "ghcr.io/acme/portal:x", "image_id": image_id, "state": state}},
    )


def test_a_record_left_running_by_a_dead_process_is_interrupted_with_what_runs_now(tmp_path, fake_runner):
    settings = make_settings(tmp_path, deploy_recover_interrupted="report")
    leave_running_record(settings)
    fake_runner.by_playbook["status.yml"] = status_run(NEW_ID, "running, unhealthy")

    with TestClient(create_app(settings)) as client:
        record = wait_for(client, "20261127T000000-deadbeef", lambda record: record["running_state"])

    assert record["outcome"] == "interrupted"
    assert record["finished_at"]
    assert record["error"] == "Interrupted: the deployment API stopped during health_check"
    assert record["recovery"] == "Now the service runs the new image ghcr.io/acme/portal:x, running, unhealthy"
    assert record["recovery_action"] is None and record["recovered_by"] is None
    assert (record["running_image_id"], record["running_state"]) == (NEW_ID, "running, unhealthy")
    (call,) = fake_runner.calls
    assert (call["playbook"].name, call["stats_key"]) == ("status.yml", "status")


def test_an_unverified_image_left_running_is_rolled_back_at_restart(tmp_path, fake_runner):
    settings = make_settings(tmp_path)
    leave_running_record(settings)
    fake_runner.by_playbook["status.yml"] = status_run(NEW_ID, "running, unhealthy")
    restored = {**success_result(), "new_image_id": OLD_ID, "new_image": "ghcr.io/acme/portal:1"}
    fake_runner.by_playbook["rollback.yml"] = RunResult(status="successful", rc=0, results={"localhost": restored})

    with TestClient(create_app(settings)) as client:
        record = wait_for(client, "20261127T000000-deadbeef", lambda record: record["recovered_by"])
        rollbacks = read(client, "/deployments", outcome="succeeded").json()["items"]

    assert fake_runner.playbooks() == ["status.yml", "rollback.yml"]
    (rollback,) = rollbacks
    assert (rollback["action"], rollback["source"]) == ("rollback", "recovery")
    assert "20261127T000000-deadbeef" in rollback["message"]
    assert record["recovered_by"] == rollback["id"]
    assert record["recovery_action"] == f"Rolled back to the previous image by {rollback['id']}"
    assert (record["reconciliation"], record["awaiting_reconciliation"]) == ("restored", False)
    assert record["reconciled_at"] is None, "reconciled at its first check: it never had to wait"
    assert record["error"] == "Interrupted: the deployment API stopped during health_check", "the deploy's own error"


@pytest.mark.parametrize(
    ("running", "steps"),
    [
        (OLD_ID, []),
        (NEW_ID, [{"step": "health_check", "success": True, "detail": "done"}]),
    ],
    ids=["previous-image-still-runs", "new-image-was-healthy"],
)
def test_nothing_is_rolled_back_when_nothing_unverified_runs(tmp_path, fake_runner, running, steps):
    settings = make_settings(tmp_path)
    leave_running_record(settings, steps=steps)
    fake_runner.by_playbook["status.yml"] = status_run(running, "running, healthy")

    with TestClient(create_app(settings)) as client:
        wait_for(client, "20261127T000000-deadbeef", lambda record: record["running_state"])

    assert [call["playbook"].name for call in fake_runner.calls] == ["status.yml"]


def test_a_second_api_on_the_same_state_dir_refuses_to_start(tmp_path, fake_runner):
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings)):
        second = TestClient(create_app(settings))
        with pytest.raises(RuntimeError, match="Another deployment API"):
            second.__enter__()


def test_the_openapi_document_describes_the_history_and_its_token(client):
    document = client.get("/openapi.json").json()

    listing = document["paths"]["/deployments"]["get"]
    assert {parameter["name"] for parameter in listing["parameters"]} == {
        "service",
        "outcome",
        "environment",
        "limit",
        "offset",
    }
    assert listing["security"] == [{"HTTPBearer": []}]
    assert "401" in listing["responses"]
    assert "DeploymentRecord" in document["components"]["schemas"]
    assert "202" in document["paths"]["/deploy"]["post"]["responses"]
    assert "/rollback" in document["paths"]


def test_the_openapi_document_describes_the_signed_body_and_its_signature(client):
    document = client.get("/openapi.json").json()

    for path in ("/deploy", "/rollback"):
        operation = document["paths"][path]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body["required"] == ["service"]
        assert {"service", "image", "environment", "commit", "timestamp"} <= set(body["properties"])
        (header,) = [parameter for parameter in operation["parameters"] if parameter["in"] == "header"]
        assert (header["name"], header["required"]) == ("X-Hub-Signature-256", True)
        assert header["schema"]["pattern"] == "^sha256=[0-9a-fA-F]{64}$"
        assert {parameter["name"] for parameter in operation["parameters"]} == {"X-Hub-Signature-256", "wait"}


def test_a_deploy_stopped_by_its_timeout_is_interrupted_and_restored(client, fake_runner):
    steps = [
        {
            "step": "capture_state",
            "success": True,
            "detail": "done",
            "image": "ghcr.io/acme/portal:1",
            "image_id": OLD_ID,
        },
        {"step": "pull_image", "success": True, "detail": "done", "image": "ghcr.io/acme/portal:2", "image_id": NEW_ID},
        {"step": "compose_up", "success": True, "detail": "done"},
    ]
    fake_runner.result = RunResult(status="timeout", rc=254, results={"localhost": {"steps": steps}})
    fake_runner.by_playbook["status.yml"] = status_run(NEW_ID, "running, starting")
    restored = {**success_result(), "new_image_id": OLD_ID}
    fake_runner.by_playbook["rollback.yml"] = RunResult(status="successful", rc=0, results={"localhost": restored})

    response = post(client, {"service": "portal"})

    assert response.status_code == 500
    assert response.json()["error"].startswith("Deployment timed out after")
    record = wait_for(client, response.headers["X-Deployment-Id"], lambda record: record["recovered_by"])
    assert record["outcome"] == "interrupted"
    assert (record["old_image_id"], record["new_image_id"]) == (OLD_ID, NEW_ID)
    assert [call["playbook"].name for call in fake_runner.calls] == ["deploy.yml", "status.yml", "rollback.yml"]


def test_a_database_of_schema_1_is_migrated_and_keeps_its_records(tmp_path):
    from api.history import MIGRATIONS

    with sqlite3.connect(tmp_path / "h.sqlite3") as raw:
        raw.executescript(MIGRATIONS[0])
        raw.execute("PRAGMA user_version = 1")
        raw.execute(
            "INSERT INTO deployments (id, action, service, outcome, started_at) "
            "VALUES ('d1', 'deploy', 'portal', 'succeeded', '2026-11-01T00:00:00.000Z')"
        )

    history = History(tmp_path / "h.sqlite3")

    assert history.schema_version() == SCHEMA_VERSION == 10
    record = history.get("d1")
    assert (record["service"], record["outcome"]) == ("portal", "succeeded")
    assert (record["trigger"], record["planned_at"]) == ("webhook", None), "an old record was a webhook's, at once"
    for internal in ("to_inspect", "targets", "awaiting_since", "reconcile_checks", "waiting_since", "signers"):
        assert internal not in record, "internal columns stay internal"
    assert (record["awaiting_reconciliation"], record["reconciled_at"], record["waiting"]) == (False, None, None)


def test_migration_8_says_reconciliation_started_the_records_of_source_recovery(tmp_path):
    from api.history import MIGRATIONS

    with sqlite3.connect(tmp_path / "h.sqlite3") as raw:
        for number, migration in enumerate(MIGRATIONS[:7]):
            raw.executescript(migration)
            raw.execute(f"PRAGMA user_version = {number + 1}")
        for deployment_id, source in (("d1", "203.0.113.9"), ("d2", "recovery")):
            raw.execute(
                "INSERT INTO deployments (id, action, service, outcome, source, started_at) "
                f"VALUES ('{deployment_id}', 'rollback', 'portal', 'succeeded', '{source}', '2026-11-01T00:00:00Z')"
            )

    history = History(tmp_path / "h.sqlite3")

    assert [history.get(deployment_id)["trigger"] for deployment_id in ("d1", "d2")] == ["webhook", "recovery"]


def test_a_deploy_stopped_by_a_shutdown_is_inspected_at_the_next_start(tmp_path, fake_runner, monkeypatch):
    settings = make_settings(tmp_path, deploy_recover_interrupted="report")
    monkeypatch.setattr(main_module, "SHUTDOWN_GRACE_SECONDS", 0.2)
    fake_runner.hold.add("portal")
    fake_runner.result = RunResult(status="canceled", rc=254, results={})
    with TestClient(create_app(settings)) as client:
        deployment_id = signed_post(client, "/deploy?wait=false", {"service": "portal"}).json()["deployment_id"]
        assert fake_runner.entered.wait(10)
        # The shutdown waits out the grace, then stops the deploy (the fake lets go a little later).
        threading.Timer(0.5, fake_runner.release.set).start()
    left = History(settings.history_file)
    stopped = left.get(deployment_id)
    left.close()
    assert stopped["outcome"] == "interrupted" and stopped["running_state"] is None

    fake_runner.hold.clear()
    fake_runner.by_playbook["status.yml"] = status_run(OLD_ID, "running, healthy")
    with TestClient(create_app(settings)) as client:
        record = wait_for(client, deployment_id, lambda record: record["running_state"])
    assert record["running_image_id"] == OLD_ID
    assert [call["playbook"].name for call in fake_runner.calls] == ["deploy.yml", "status.yml"]
