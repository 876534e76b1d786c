"""The HTTP contract with a fake runner: who gets which status, and that nothing runs unless it should."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from fakerunner import FakeRunner, success_result
from fastapi.testclient import TestClient

from api.main import create_app
from api.runner import RunResult, unsafe_extravars
from api.settings import Settings
from api.signature import sign

SECRET = "unit-test-secret-unit-test-secret-0123456789"


@pytest.fixture
def client(tmp_path: Path, fake_runner: FakeRunner):
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        "  vars:\n    deploy_compose_dir: /srv/homeserver\n"
        "    deploy_services:\n      portal: {}\n      hello-world: {}\n"
    )
    settings = Settings(webhook_secret=SECRET, deploy_inventory=inventory, deploy_state_dir=tmp_path / "var")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def post(client: TestClient, body: bytes | str | dict, signature: str | None = "sign", **headers):
    raw = json.dumps(body).encode() if isinstance(body, dict) else body if isinstance(body, bytes) else body.encode()
    if signature == "sign":
        signature = sign(SECRET.encode(), raw)
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    return client.post("/deploy", content=raw, headers={"Content-Type": "application/json", **headers})


def test_root_and_health(client):
    assert client.get("/").json()["endpoints"] == {"health": "/health", "deploy": "/deploy (POST)"}
    health = client.get("/health").json()
    assert health["status"] == "healthy"
    assert health["compose_dir"] == "/srv/homeserver"


def test_success_contract(client, fake_runner):
    response = post(client, {"service": "portal", "image": "ghcr.io/acme/portal:2", "commit": "abc123"})

    assert response.status_code == 200
    assert response.json() == {
        "success": True,
        "service": "portal",
        "message": "Deployment successful",
        "old_image": "ghcr.io/acme/portal:1",
        "new_image": "ghcr.io/acme/portal:2",
        "steps": success_result()["steps"],
    }
    assert response.headers["X-Deployment-Id"]
    (call,) = fake_runner.calls
    assert call["extravars"]["deploy_request"]["commit"] == "abc123"


def test_failure_contract(client, fake_runner):
    failed = {
        **success_result(),
        "success": False,
        "outcome": "rolled_back",
        "error": "Container failed to start",
        "logs": "fatal: no config",
    }
    fake_runner.result = RunResult(status="failed", rc=2, results={"localhost": failed})

    response = post(client, {"service": "portal"})

    assert response.status_code == 500
    assert response.json() == {
        "success": False,
        "service": "portal",
        "error": "Container failed to start",
        "logs": "fatal: no config",
        "steps": failed["steps"],
    }


def test_timeout_is_a_500(client, fake_runner):
    fake_runner.result = RunResult(status="timeout", rc=254, results={}, output_tail="TASK [Pull the image]")

    response = post(client, {"service": "portal"})

    assert response.status_code == 500
    assert response.json()["error"].startswith("Deployment timed out after")


@pytest.mark.parametrize(
    "signature",
    [None, "", "sha256=", "sha256=" + "0" * 64, "sha1=abc", "sign-with-another-secret"],
    ids=["missing", "empty", "no-hex", "wrong", "malformed", "other-secret"],
)
def test_bad_signatures_get_403_and_run_nothing(client, fake_runner, signature):
    body = json.dumps({"service": "portal"}).encode()
    if signature == "sign-with-another-secret":
        signature = sign(b"another-secret-another-secret-0000", body)

    response = post(client, body, signature=signature)

    assert response.status_code == 403
    assert response.json() == {"detail": "Invalid signature"}
    assert fake_runner.calls == []


def test_signature_is_checked_before_the_body_is_parsed(client, fake_runner):
    response = post(client, b"{not json", signature="sha256=" + "0" * 64)
    assert response.status_code == 403


def test_service_not_allowed(client, fake_runner):
    response = post(client, {"service": "xyz"})

    assert response.status_code == 400
    assert response.json() == {"detail": "Service 'xyz' not allowed. Allowed: hello-world, portal"}
    assert fake_runner.calls == []


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        (b"\xff\xfe", 400),
        ({"service": 42}, 422),
        ({"image": "nginx"}, 422),
        ({"service": "portal", "image": "UPPER/case"}, 422),
        ({"service": "portal", "image": "{{ lookup('pipe', 'id') }}"}, 422),
        ({"service": "portal", "message": ["a"]}, 422),
    ],
)
def test_malformed_bodies_get_4xx_and_run_nothing(client, fake_runner, body, status):
    response = post(client, body)

    assert response.status_code == status, response.text
    assert response.json()["detail"]
    assert fake_runner.calls == []


def test_large_body_by_content_length_is_413(client, fake_runner):
    body = json.dumps({"service": "portal", "message": "x" * 70_000}).encode()
    response = post(client, body)
    assert response.status_code == 413
    assert fake_runner.calls == []


def test_large_streamed_body_is_413_without_reading_it_whole(client, fake_runner):
    sent = []

    def chunks():
        for _ in range(1000):
            sent.append(1)
            yield b"x" * 1024

    response = client.post("/deploy", content=chunks(), headers={"X-Hub-Signature-256": "sha256=" + "0" * 64})

    assert response.status_code == 413
    assert fake_runner.calls == []


def test_same_service_twice_gets_409_naming_the_running_deploy(client, fake_runner):
    fake_runner.hold.add("portal")
    first: dict = {}
    worker = threading.Thread(target=lambda: first.update(response=post(client, {"service": "portal"})))
    worker.start()
    assert fake_runner.entered.wait(10)

    second = post(client, {"service": "portal", "commit": "while it runs"})
    other = post(client, {"service": "hello-world"})
    fake_runner.release.set()
    worker.join(10)

    assert second.status_code == 409
    assert second.json()["detail"].startswith("A deployment of 'portal' is already running (deployment ")
    assert first["response"].headers["X-Deployment-Id"] in second.json()["detail"]
    assert other.status_code == 200, "another service deploys while portal does"
    assert first["response"].status_code == 200


def test_extra_vars_are_all_unsafe():
    text = unsafe_extravars({"service": "portal", "deploy_request": {"message": "{{ 7 * 7 }}", "commit": None}})

    assert text == '!unsafe\nservice: "portal"\ndeploy_request:\n  message: "{{ 7 * 7 }}"\n  commit: null\n'
